//! Emulates eBPF socket load balancing (Cilium's kube-proxy replacement): a cgroup v2
//! `connect4` program that rewrites one ClusterIP:port to a backend in `connect()`
//! itself, before any packet exists, for the processes of one cgroup.
//!
//! The program is ten raw BPF instructions, loaded and attached with the bpf(2) syscall
//! by a short python3 script through ctypes (python3 is a lab dependency already), so no
//! `unsafe` Rust is needed. The attachment lives as long as the cgroup: dropping the
//! [`SocketLb`] moves this process back where it was and removes the cgroup (and the
//! cgroup2 mount, if it had to make one). Only processes moved into the cgroup (see
//! [`SocketLb::enter`]; children inherit it) are affected, and only their connections
//! to that one address.

use std::io;
use std::net::SocketAddrV4;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Loads the program (BPF_PROG_TYPE_CGROUP_SOCK_ADDR, BPF_CGROUP_INET4_CONNECT) and
/// attaches it to a cgroup. argv: cgroup dir, from ip, from port, to ip, to port.
const LOADER: &str = r#"
import ctypes, os, platform, socket, struct, sys
cg, fip, fport, tip, tport = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], int(sys.argv[5])
nr = {"x86_64": 321, "aarch64": 280}[platform.machine()]
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
def ins(code, dst=0, src=0, off=0, imm=0):
    return struct.pack("<BBhi", code, (src << 4) | dst, off, imm)
ip = lambda a: struct.unpack("<i", socket.inet_aton(a))[0]   # user_ip4: network order
port = lambda p: struct.unpack("<H", struct.pack(">H", p))[0]  # user_port: network order
# struct bpf_sock_addr: user_ip4 at 4, user_port at 24.
prog = b"".join([
    ins(0x61, 2, 1, 4),             # r2 = ctx->user_ip4
    ins(0x55, 2, 0, 6, ip(fip)),    # if r2 != from ip goto out
    ins(0x61, 2, 1, 24),            # r2 = ctx->user_port
    ins(0x55, 2, 0, 4, port(fport)),# if r2 != from port goto out
    ins(0xb4, 2, 0, 0, ip(tip)),    # w2 = to ip
    ins(0x63, 1, 2, 4),             # ctx->user_ip4 = r2
    ins(0xb4, 2, 0, 0, port(tport)),# w2 = to port
    ins(0x63, 1, 2, 24),            # ctx->user_port = r2
    ins(0xb7, 0, 0, 0, 1),          # out: r0 = 1 (allow the connect)
    ins(0x95),                      # exit
])
insns = ctypes.create_string_buffer(prog, len(prog))
lic = ctypes.create_string_buffer(b"GPL")
log = ctypes.create_string_buffer(65536)
attr = ctypes.create_string_buffer(128)
struct.pack_into("<IIQQIIQ", attr, 0, 18, len(prog) // 8, ctypes.addressof(insns),
                 ctypes.addressof(lic), 1, len(log), ctypes.addressof(log))
struct.pack_into("<I", attr, 68, 10)  # expected_attach_type = BPF_CGROUP_INET4_CONNECT
fd = libc.syscall(nr, 5, attr, 128)   # BPF_PROG_LOAD
if fd < 0:
    sys.exit("BPF_PROG_LOAD: %s\n%s" % (os.strerror(ctypes.get_errno()), log.value.decode()))
cgfd = os.open(cg, os.O_RDONLY | os.O_DIRECTORY)
attach = ctypes.create_string_buffer(struct.pack("<IIII", cgfd, fd, 10, 0), 128)
if libc.syscall(nr, 8, attach, 128) < 0:  # BPF_PROG_ATTACH
    sys.exit("BPF_PROG_ATTACH: %s" % os.strerror(ctypes.get_errno()))
"#;

/// A cgroup whose processes' connections to one IPv4 ClusterIP:port are rewritten in
/// `connect()`, as eBPF socket load balancing does.
pub struct SocketLb {
    dir: PathBuf,
    /// The cgroup this process was in, to go back to.
    home: PathBuf,
    /// A cgroup2 mount made for this (when the host had none), unmounted on drop.
    mounted: Option<PathBuf>,
}

fn cgroup2_mount() -> io::Result<Option<PathBuf>> {
    let info = std::fs::read_to_string("/proc/self/mountinfo")?;
    // Fields: ... mount point (5th) ... " - " fstype source options.
    Ok(info.lines().find_map(|l| {
        let (pre, post) = l.split_once(" - ")?;
        let mount = pre.split_whitespace().nth(4)?;
        (post.split_whitespace().next() == Some("cgroup2")).then(|| PathBuf::from(mount))
    }))
}

fn sh(cmd: &mut Command) -> io::Result<()> {
    let out = cmd.output()?;
    if out.status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "{cmd:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

impl SocketLb {
    /// Makes the cgroup `gw-socklb-<label>-<pid>` and attaches a program that rewrites
    /// connections to `from` into connections to `to`.
    pub fn new(label: &str, from: SocketAddrV4, to: SocketAddrV4) -> io::Result<SocketLb> {
        let (root, mounted) = match cgroup2_mount()? {
            Some(root) => (root, None),
            None => {
                let dir = std::env::temp_dir().join(format!("gw-cgroup2-{}", std::process::id()));
                std::fs::create_dir_all(&dir)?;
                sh(Command::new("mount")
                    .args(["-t", "cgroup2", "none"])
                    .arg(&dir))?;
                (dir.clone(), Some(dir))
            }
        };
        let own = std::fs::read_to_string("/proc/self/cgroup")?;
        let rel = own
            .lines()
            .find_map(|l| l.strip_prefix("0::"))
            .unwrap_or("/")
            .trim()
            .trim_start_matches('/')
            .to_string();
        let dir = root.join(format!("gw-socklb-{label}-{}", std::process::id()));
        let _ = std::fs::remove_dir(&dir);
        std::fs::create_dir(&dir)?;
        let lb = SocketLb {
            home: root.join(rel),
            dir,
            mounted,
        };
        sh(Command::new("python3")
            .args(["-c", LOADER])
            .arg(&lb.dir)
            .args([
                from.ip().to_string(),
                from.port().to_string(),
                to.ip().to_string(),
                to.port().to_string(),
            ]))?;
        Ok(lb)
    }

    /// Moves this whole process (every thread) into the cgroup; the processes it starts
    /// from now on are born there.
    pub fn enter(&self) -> io::Result<()> {
        move_to(&self.dir)
    }

    /// Moves this process back to the cgroup it came from.
    pub fn leave(&self) -> io::Result<()> {
        move_to(&self.home)
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }
}

fn move_to(cgroup: &Path) -> io::Result<()> {
    std::fs::write(cgroup.join("cgroup.procs"), std::process::id().to_string())
}

impl Drop for SocketLb {
    fn drop(&mut self) {
        let _ = self.leave();
        // Children still in the cgroup (a test's watcher) keep it busy: move them home.
        if let Ok(procs) = std::fs::read_to_string(self.dir.join("cgroup.procs")) {
            for pid in procs.lines() {
                let _ = std::fs::write(self.home.join("cgroup.procs"), pid);
            }
        }
        let _ = std::fs::remove_dir(&self.dir);
        if let Some(m) = &self.mounted {
            let _ = Command::new("umount").arg(m).status();
            let _ = std::fs::remove_dir(m);
        }
    }
}
