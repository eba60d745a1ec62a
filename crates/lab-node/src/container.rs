//! How a container becomes a process: (`setsid -c`, with `tty: true`: its own session on the
//! terminal) → `ip netns exec POD` (the pod's network namespace, and a private mount namespace
//! that `ip` makes) → `unshare --uts` (the pod's hostname) → `sh -c` that bind-mounts the volumes
//! at their mount paths and changes directory → `setpriv` (user, group, capability bounding set)
//! → the container's program. Every step `exec`s, so the process the node spawns *is* the
//! container's main process, in its own process group. `kubectl exec` runs commands through the
//! same [`setpriv`] step.
//!
//! Containers share the host's root filesystem: a mount path that does not exist is created on
//! the host (empty) so the bind mount has a target; the mount itself is private to the container.
//! `ip` and `setsid` are started by absolute path, so std uses `posix_spawn` rather than `fork`
//! (see `util::host_program`).

use crate::util::sh_quote;
use std::path::PathBuf;
use std::process::Command;

/// The capabilities a container runtime grants by default (containerd's set).
pub const DEFAULT_CAPS: &[&str] = &[
    "chown",
    "dac_override",
    "fowner",
    "fsetid",
    "kill",
    "setgid",
    "setuid",
    "setpcap",
    "net_bind_service",
    "net_raw",
    "sys_chroot",
    "mknod",
    "audit_write",
    "setfcap",
];

/// A bind mount into the container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub source: PathBuf,
    pub target: String,
    pub read_only: bool,
}

/// Everything needed to start one container instance.
#[derive(Debug, Clone, Default)]
pub struct Launch {
    pub netns: String,
    pub hostname: String,
    pub mounts: Vec<Mount>,
    pub workdir: Option<String>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    /// The bounding set; `None` for a privileged container (all capabilities).
    pub caps: Option<Vec<String>>,
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    /// Started on a terminal (its stdin), as that terminal's session leader.
    pub tty: bool,
}

/// The effective capability set from `securityContext.capabilities` (`add`, `drop`, "ALL").
pub fn capabilities(add: &[String], drop: &[String]) -> Vec<String> {
    let norm = |c: &String| c.to_lowercase().trim_start_matches("cap_").to_string();
    let drop: Vec<String> = drop.iter().map(norm).collect();
    let mut caps: Vec<String> = if drop.iter().any(|d| d == "all") {
        Vec::new()
    } else {
        DEFAULT_CAPS
            .iter()
            .map(|c| c.to_string())
            .filter(|c| !drop.contains(c))
            .collect()
    };
    for a in add.iter().map(norm) {
        if a == "all" {
            return vec!["all".to_string()];
        }
        if !caps.contains(&a) {
            caps.push(a);
        }
    }
    caps
}

/// The setup script run by `sh -c` before the program.
pub fn script(l: &Launch) -> String {
    let mut s = String::from("set -e\n");
    if !l.hostname.is_empty() {
        s.push_str(&format!("hostname {}\n", sh_quote(&l.hostname)));
    }
    for m in &l.mounts {
        let (src, dst) = (
            sh_quote(&m.source.display().to_string()),
            sh_quote(&m.target),
        );
        if m.source.is_dir() {
            s.push_str(&format!("mkdir -p {dst}\n"));
        } else {
            s.push_str(&format!(
                "mkdir -p \"$(dirname {dst})\"\n[ -e {dst} ] || touch {dst}\n"
            ));
        }
        s.push_str(&format!("mount --bind {src} {dst}\n"));
        if m.read_only {
            s.push_str(&format!("mount -o remount,bind,ro {dst}\n"));
        }
    }
    if let Some(w) = &l.workdir {
        s.push_str(&format!("mkdir -p {0}\ncd {0}\n", sh_quote(w)));
    }
    // The arguments are numbers and capability names: nothing to quote.
    let setpriv = setpriv(l.uid, l.gid, l.caps.as_deref()).join(" ");
    s.push_str(&format!("exec {setpriv} -- \"$@\"\n"));
    s
}

/// The `setpriv` argv (the program follows a `--`) that gives a process the container's user,
/// group and capability bounding set (`None`: a privileged container's, all of them).
pub fn setpriv(uid: Option<u32>, gid: Option<u32>, caps: Option<&[String]>) -> Vec<String> {
    let mut a = vec!["setpriv".to_string()];
    if let Some(g) = gid {
        a.extend(["--regid".into(), g.to_string(), "--clear-groups".into()]);
    }
    if let Some(u) = uid {
        a.extend(["--reuid".into(), u.to_string()]);
        if gid.is_none() {
            a.push("--clear-groups".into());
        }
    }
    if let Some(caps) = caps
        && !caps.iter().any(|c| c == "all")
    {
        let mut spec = String::from("-all");
        for c in caps {
            spec.push_str(",+");
            spec.push_str(c);
        }
        a.extend(["--bounding-set".into(), spec]);
    }
    a
}

/// The command that starts the container (spawn it in its own process group).
pub fn command(l: &Launch) -> Command {
    // Absolute paths: see `util::host_program` (posix_spawn, not fork).
    let ip = crate::util::host_program("ip");
    let mut cmd = if l.tty {
        let mut c = Command::new(crate::util::host_program("setsid"));
        c.arg("-c").arg(&ip);
        c
    } else {
        Command::new(&ip)
    };
    cmd.args([
        "netns", "exec", &l.netns, "unshare", "--uts", "--", "sh", "-c",
    ])
    .arg(script(l))
    .arg("sh")
    .args(&l.argv)
    .env_clear()
    .envs(l.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    cmd
}

/// Whether a process's argv is one of the steps above rather than the container's program.
pub fn is_setup_step(argv: &[&str]) -> bool {
    // The node starts `ip` and `setsid` by absolute path.
    let mut argv = argv.to_vec();
    if let Some(first) = argv.first_mut()
        && matches!(first.rsplit('/').next(), Some("ip" | "setsid"))
    {
        *first = first.rsplit('/').next().unwrap_or(first);
    }
    let argv = argv.as_slice();
    matches!(
        argv,
        ["setsid", "-c", ..]
            | ["ip", "netns", "exec", ..]
            | ["unshare", "--uts", ..]
            | ["setpriv", ..]
    ) || matches!(argv, ["sh", "-c", script, ..] if script.starts_with("set -e\n"))
}

/// Waits (at most `timeout`) until the process `pid` runs the container's program, so that
/// entering its namespaces finds the pod's hostname and mounts. A process still in the node's
/// own mount namespace has not got that far, whatever its command line says (between `fork`
/// and `exec` it shows the node's): entering it then would run a hook or probe on the host.
/// Whether it did within `timeout`.
pub async fn wait_launched(pid: i32, timeout: std::time::Duration) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    let own_mounts = std::fs::read_link("/proc/self/ns/mnt").ok();
    while tokio::time::Instant::now() < deadline {
        let Ok(raw) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            // Gone: whatever runs next finds no namespaces to enter and says so.
            return true;
        };
        let mounts = std::fs::read_link(format!("/proc/{pid}/ns/mnt")).ok();
        if mounts.is_some() && mounts == own_mounts {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            continue;
        }
        if shows_program(&raw) {
            return true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    false
}

/// Whether a process's `/proc/PID/cmdline` shows the container's program rather than a set-up
/// step. An empty one does not: the kernel shows nothing while an `exec` is between installing
/// the new program's memory and writing its arguments there, and every step of the chain
/// `exec`s. After `ip` unshared the mount namespace and before the bind mounts exist, taking
/// that for the program ran a postStart hook on the host's (empty) mount targets, and the
/// container's startup probe then never saw what the hook should have made.
fn shows_program(cmdline: &[u8]) -> bool {
    if cmdline.is_empty() {
        return false;
    }
    let text = String::from_utf8_lossy(cmdline);
    let argv: Vec<&str> = text.trim_end_matches('\0').split('\0').collect();
    !is_setup_step(&argv)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn setup_steps_are_told_from_programs() {
        assert!(is_setup_step(&["ip", "netns", "exec", "gw-x", "unshare"]));
        assert!(is_setup_step(&["/usr/bin/ip", "netns", "exec", "gw-x"]));
        assert!(is_setup_step(&["/usr/bin/setsid", "-c", "/usr/bin/ip"]));
        assert!(is_setup_step(&["unshare", "--uts", "--", "sh"]));
        assert!(is_setup_step(&[
            "sh",
            "-c",
            "set -e\nhostname 'a'\n",
            "sh",
            "sleep"
        ]));
        assert!(is_setup_step(&["setpriv", "--", "sleep", "1"]));
        assert!(!is_setup_step(&["sh", "-c", "sleep 1"]));
        assert!(!is_setup_step(&["ip", "monitor"]));
        assert!(!is_setup_step(&["sleep", "1000"]));
    }

    #[test]
    fn an_exec_in_progress_is_not_the_program() {
        // Between an exec's new memory and its arguments the command line reads empty.
        assert!(!shows_program(b""));
        assert!(!shows_program(b"/usr/bin/ip\0netns\0exec\0gw-x\0unshare\0"));
        assert!(!shows_program(b"setpriv\0--\0sh\0-c\0sleep 1\0"));
        assert!(shows_program(b"sh\0-c\0sleep 1\0"));
    }

    #[test]
    fn capabilities_add_and_drop() {
        let caps = capabilities(&s(&["NET_ADMIN"]), &s(&["NET_RAW"]));
        assert!(caps.contains(&"net_admin".to_string()));
        assert!(!caps.contains(&"net_raw".to_string()));
        assert_eq!(
            capabilities(&s(&["CAP_NET_ADMIN"]), &s(&["ALL"])),
            s(&["net_admin"])
        );
        assert_eq!(capabilities(&s(&["ALL"]), &[]), s(&["all"]));
    }

    #[test]
    fn script_mounts_then_drops_privileges() {
        let l = Launch {
            hostname: "web".into(),
            mounts: vec![Mount {
                source: "/nonexistent/file".into(),
                target: "/etc/it's".into(),
                read_only: true,
            }],
            workdir: Some("/work".into()),
            uid: Some(1000),
            gid: Some(2000),
            caps: Some(s(&["net_admin"])),
            ..Launch::default()
        };
        let sc = script(&l);
        assert!(sc.contains("hostname 'web'\n"));
        assert!(sc.contains("mount --bind '/nonexistent/file' '/etc/it'\\''s'\n"));
        assert!(sc.contains("mount -o remount,bind,ro '/etc/it'\\''s'\n"));
        assert!(sc.contains("cd '/work'\n"));
        assert!(sc.ends_with(
            "exec setpriv --regid 2000 --clear-groups --reuid 1000 --bounding-set -all,+net_admin -- \"$@\"\n"
        ));
        let privileged = Launch {
            caps: None,
            ..Launch::default()
        };
        assert!(script(&privileged).ends_with("exec setpriv -- \"$@\"\n"));
    }
}
