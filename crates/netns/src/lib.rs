//! Entering Linux network namespaces.
//!
//! All namespace switching in ghostwire goes through [`Netns`]: a network namespace is bound to a
//! thread, so [`Netns::run`] enters it on a fresh thread that ends with the closure. The caller's
//! thread never changes namespace, so nothing has to be switched back. Sockets created inside the
//! closure stay in that namespace when handed out; child processes spawned inside inherit it.

use std::fs::File;
use std::io;
use std::io::Write;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;

use nix::sched::{CloneFlags, setns};

/// Where `ip netns` keeps named namespaces.
pub const NETNS_RUN_DIR: &str = "/run/netns";

/// Errors of this crate; each names the namespace (and command) involved.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The namespace file could not be opened (wrong name, or not created yet).
    #[error("cannot open network namespace {name:?} at {path}: {source}")]
    Open {
        name: String,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// `setns(2)` failed; usually missing CAP_SYS_ADMIN.
    #[error("cannot enter network namespace {name:?} (needs CAP_SYS_ADMIN): {source}")]
    Enter {
        name: String,
        #[source]
        source: nix::Error,
    },
    /// The helper thread could not be started.
    #[error("cannot start a thread for network namespace {name:?}: {source}")]
    Thread {
        name: String,
        #[source]
        source: io::Error,
    },
    /// The closure passed to [`Netns::run`] panicked.
    #[error("closure run in network namespace {name:?} panicked: {message}")]
    Panicked { name: String, message: String },
    /// An external command (`ip netns ...`) failed or could not be started.
    #[error("`{command}` failed for network namespace {name:?}: {detail}")]
    Command {
        name: String,
        command: String,
        detail: String,
    },
    /// The name cannot be a namespace name (empty, contains '/', too long, ...).
    #[error("invalid network namespace name {name:?}: {reason}")]
    InvalidName { name: String, reason: &'static str },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// An open handle on a network namespace. Cheap to clone; holding it keeps the namespace alive
/// even after `ip netns del` removed its name.
#[derive(Debug, Clone)]
pub struct Netns {
    name: Arc<str>,
    file: Arc<File>,
}

impl Netns {
    /// Opens the named namespace `/run/netns/NAME` (as created by `ip netns add`).
    pub fn open(name: &str) -> Result<Netns> {
        validate_name(name)?;
        let path = Path::new(NETNS_RUN_DIR).join(name);
        let file = File::open(&path).map_err(|source| Error::Open {
            name: name.to_owned(),
            path,
            source,
        })?;
        Ok(Netns {
            name: name.into(),
            file: Arc::new(file),
        })
    }

    /// The calling thread's namespace; its name is `"current"`.
    pub fn current() -> Result<Netns> {
        let path = PathBuf::from("/proc/thread-self/ns/net");
        let file = File::open(&path).map_err(|source| Error::Open {
            name: "current".to_owned(),
            path,
            source,
        })?;
        Ok(Netns {
            name: "current".into(),
            file: Arc::new(file),
        })
    }

    /// Creates a named namespace with `ip netns add` and opens it.
    pub fn create(name: &str) -> Result<Netns> {
        validate_name(name)?;
        ip_netns(name, "add")?;
        Netns::open(name)
    }

    /// Removes a named namespace with `ip netns del`. Open handles keep it alive until closed.
    pub fn delete(name: &str) -> Result<()> {
        validate_name(name)?;
        ip_netns(name, "del")
    }

    /// Whether `/run/netns/NAME` exists.
    pub fn exists(name: &str) -> bool {
        validate_name(name).is_ok() && Path::new(NETNS_RUN_DIR).join(name).exists()
    }

    /// Names of all named namespaces (entries of `/run/netns`); empty if the directory is absent.
    pub fn list() -> Result<Vec<String>> {
        let entries = match std::fs::read_dir(NETNS_RUN_DIR) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => {
                return Err(Error::Open {
                    name: String::new(),
                    path: NETNS_RUN_DIR.into(),
                    source,
                });
            }
        };
        let mut names: Vec<String> = entries
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().into_string().ok())
            .collect();
        names.sort();
        Ok(names)
    }

    /// The name this handle was opened with.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs `f` on a new thread inside this namespace and returns its result. A panic in `f`
    /// becomes [`Error::Panicked`]. Blocking: the caller waits for `f` to finish.
    pub fn run<F, T>(&self, f: F) -> Result<T>
    where
        F: FnOnce() -> T + Send,
        T: Send,
    {
        let name = self.name.to_string();
        std::thread::scope(|scope| {
            let handle = std::thread::Builder::new()
                .name(format!("netns-{name}"))
                .spawn_scoped(scope, || -> Result<T> {
                    setns(self.file.as_fd(), CloneFlags::CLONE_NEWNET).map_err(|source| {
                        Error::Enter {
                            name: name.clone(),
                            source,
                        }
                    })?;
                    Ok(f())
                })
                .map_err(|source| Error::Thread {
                    name: name.clone(),
                    source,
                })?;
            match handle.join() {
                Ok(result) => result,
                Err(payload) => Err(Error::Panicked {
                    name: name.clone(),
                    message: panic_message(payload.as_ref()),
                }),
            }
        })
    }
}

impl AsFd for Netns {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}

/// Rejects names `ip netns` would refuse or that would escape `/run/netns`.
pub fn validate_name(name: &str) -> Result<()> {
    let reason = if name.is_empty() {
        "empty"
    } else if name.len() > 200 {
        "longer than 200 bytes"
    } else if name == "." || name == ".." {
        "reserved"
    } else if name.contains('/') || name.contains('\0') {
        "contains '/' or NUL"
    } else if name.chars().any(|c| c.is_whitespace() || c.is_control()) {
        "contains whitespace or control characters"
    } else {
        return Ok(());
    };
    Err(Error::InvalidName {
        name: name.to_owned(),
        reason,
    })
}

fn ip_netns(name: &str, verb: &str) -> Result<()> {
    let command = format!("ip netns {verb} {name}");
    let output = Command::new("ip")
        .args(["netns", verb, name])
        .output()
        .map_err(|e| Error::Command {
            name: name.to_owned(),
            command: command.clone(),
            detail: format!("cannot start: {e}"),
        })?;
    if output.status.success() {
        Ok(())
    } else {
        Err(Error::Command {
            name: name.to_owned(),
            command,
            detail: format!(
                "{}: {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            ),
        })
    }
}

/// Runs `cmd` to its end, feeding it `stdin` if given, and collects its stdout and stderr.
/// The input is written from another thread: a tool that answers before it has read all of
/// its input (`nft -e -f -`, `cat`) would otherwise block on a full pipe, and so would we.
/// A write that fails because the tool has exited shows as the tool's own failure.
pub fn output(cmd: &mut Command, stdin: Option<&[u8]>) -> io::Result<Output> {
    let mut child = cmd
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let pipe = child.stdin.take();
    std::thread::scope(|s| {
        if let (Some(input), Some(mut pipe)) = (stdin, pipe) {
            s.spawn(move || {
                let _ = pipe.write_all(input);
            });
        }
        child.wait_with_output()
    })
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_feeds_input_larger_than_a_pipe_while_reading_the_answer() {
        // `cat` answers as it reads: with the input written before the output is read, both
        // sides would wait on a full pipe for ever.
        let input: Vec<u8> = (0..4 << 20).map(|i| (i % 251) as u8).collect();
        let out = output(&mut Command::new("cat"), Some(&input)).unwrap();
        assert!(out.status.success());
        assert!(
            out.stdout == input,
            "{} bytes back of {}",
            out.stdout.len(),
            input.len()
        );
        let out = output(Command::new("sh").args(["-c", "echo no >&2; exit 3"]), None).unwrap();
        assert_eq!(out.status.code(), Some(3));
        assert_eq!(out.stderr, b"no\n");
        let err = output(&mut Command::new("/nonexistent/tool"), Some(b"x")).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
    }

    #[test]
    fn rejects_bad_names() {
        for bad in ["", ".", "..", "a/b", "a b", "x\n"] {
            assert!(
                matches!(validate_name(bad), Err(Error::InvalidName { .. })),
                "{bad:?}"
            );
        }
        assert!(validate_name("gwl1-0-node").is_ok());
    }

    #[test]
    fn open_missing_names_the_path() {
        let err = Netns::open("ghostwire-no-such-namespace").unwrap_err();
        assert!(
            err.to_string()
                .contains("/run/netns/ghostwire-no-such-namespace")
        );
    }

    #[test]
    fn panic_becomes_error() {
        let ns = Netns::current().unwrap();
        let err = ns.run(|| -> u32 { panic!("boom") }).unwrap_err();
        assert!(matches!(err, Error::Panicked { ref message, .. } if message == "boom"));
    }
}
