//! The node's side of `kubectl exec`, `attach` and `port-forward` ([`lab_api::PodStreams`]).
//! - exec: a command run in a running container's namespaces (mount, UTS, network; `nsenter` on
//!   its main process) with the container's environment, working directory, and security context
//!   (user, group, capability bounding set: the same `setpriv` step the container started with);
//!   stdin, stdout and stderr as pipes, or one pseudo-terminal for `-t`.
//! - attach: the container's own stdin (kept open when its spec says `stdin: true`) and terminal
//!   (`tty: true`), and its output from now on (followed in its log file, so stdout and stderr
//!   arrive merged on stdout).
//! - port-forward: a TCP connection made from inside the Pod's network namespace to
//!   `localhost:PORT` (IPv4, then IPv6), as a container runtime makes it.

use crate::PodTable;
use crate::console::{self, Pty};
use crate::util::{arr, str_of};
use bytes::Bytes;
use futures::future::BoxFuture;
use lab_api::{ExecRequest, ExecStreams, LogRequest, PodLogError, PodLogs, PodStreams};
use serde_json::Value;
use std::process::Stdio;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// What an exec needs to know of a container instance.
#[derive(Debug, Clone, Default)]
pub struct ExecInfo {
    pub env: Vec<(String, String)>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    /// The capability bounding set; `None` for a privileged container.
    pub caps: Option<Vec<String>>,
}

/// The argv that runs `command` in the namespaces of `pid` as the container runs.
pub fn argv(pid: i32, info: &ExecInfo, command: &[String]) -> Vec<String> {
    let mut a: Vec<String> = [
        "nsenter",
        "--target",
        &pid.to_string(),
        "--mount",
        "--uts",
        "--net",
        "--wd",
        "--",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    a.extend(crate::container::setpriv(
        info.uid,
        info.gid,
        info.caps.as_deref(),
    ));
    a.push("--".into());
    a.extend(command.iter().cloned());
    a
}

/// The container `kubectl` means when it names none: the annotated default, else the first.
fn default_container(pod: &Value) -> String {
    pod["metadata"]["annotations"]["kubectl.kubernetes.io/default-container"]
        .as_str()
        .map(str::to_string)
        .or_else(|| {
            arr(pod, "/spec/containers")
                .first()
                .and_then(|c| c["name"].as_str())
                .map(str::to_string)
        })
        .unwrap_or_default()
}

/// The node's side of the streaming subresources.
#[derive(Clone)]
pub struct NodeStreams(pub(crate) PodTable);

impl NodeStreams {
    /// The container a request means (the default one when it names none) and its Pod's state.
    fn container(
        &self,
        pod: &Value,
        req: &ExecRequest,
    ) -> Result<(String, std::sync::Arc<crate::state::PodRt>), PodLogError> {
        let container = req
            .container
            .clone()
            .unwrap_or_else(|| default_container(pod));
        Ok((container, self.runtime(pod)?))
    }

    fn runtime(&self, pod: &Value) -> Result<std::sync::Arc<crate::state::PodRt>, PodLogError> {
        crate::lock(&self.0.0)
            .get(str_of(pod, "/metadata/uid"))
            .cloned()
            .ok_or_else(|| {
                PodLogError::BadRequest(format!(
                    "pod {} does not run on this node",
                    str_of(pod, "/metadata/name")
                ))
            })
    }
}

fn not_running(container: &str) -> PodLogError {
    PodLogError::BadRequest(format!(
        "unable to upgrade connection: container not found (\"{container}\")"
    ))
}

impl PodStreams for NodeStreams {
    fn exec(
        &self,
        pod: Value,
        req: ExecRequest,
    ) -> BoxFuture<'static, Result<ExecStreams, PodLogError>> {
        let this = self.clone();
        Box::pin(async move {
            let name = str_of(&pod, "/metadata/name").to_string();
            let (container, rt) = this.container(&pod, &req)?;
            let (pid, info) = {
                let st = rt.lock();
                match st.find(&container) {
                    Some((_, c)) if c.running() && c.pgid.is_some() => (
                        c.pgid.unwrap_or_default(),
                        c.exec.clone().unwrap_or_default(),
                    ),
                    _ => return Err(not_running(&container)),
                }
            };
            // Not into a container still setting up (it would run on the node's mounts).
            if !crate::container::wait_launched(pid, std::time::Duration::from_secs(10)).await {
                return Err(not_running(&container));
            }
            let mut env = info.env.clone();
            if req.tty {
                env.push(("TERM".into(), "xterm".into()));
            }
            start(argv(pid, &info, &req.command), env, req.stdin, req.tty)
                .map_err(|e| PodLogError::Internal(format!("exec in {name}/{container}: {e}")))
        })
    }

    fn attach(
        &self,
        pod: Value,
        req: ExecRequest,
    ) -> BoxFuture<'static, Result<ExecStreams, PodLogError>> {
        let this = self.clone();
        Box::pin(async move {
            let (container, rt) = this.container(&pod, &req)?;
            let console = {
                let st = rt.lock();
                match st.find(&container) {
                    Some((_, c)) if c.running() => c.console.clone(),
                    _ => return Err(not_running(&container)),
                }
            };
            // Output from now on: the log file, followed until the container ends.
            let follow = LogRequest {
                container: Some(container.clone()),
                follow: true,
                tail_lines: Some(0),
                ..LogRequest::default()
            };
            let mut logs = crate::logs::NodeLogs(this.0.clone())
                .logs(pod, follow)
                .await?;
            let (out_tx, output) = mpsc::channel(16);
            let (exit_tx, exit) = oneshot::channel();
            tokio::spawn(async move {
                while let Some(b) = logs.recv().await {
                    if out_tx.send((1, b)).await.is_err() {
                        return;
                    }
                }
                let _ = exit_tx.send(0);
            });
            let (stdin, mut stdin_rx) = mpsc::channel::<Bytes>(16);
            let target = console.as_ref().and_then(|c| c.stdin());
            let used_stdin = req.stdin && target.is_some();
            let on_end = console.clone();
            tokio::spawn(async move {
                while let Some(b) = stdin_rx.recv().await {
                    if let Some(t) = &target
                        && t.send(b).await.is_err()
                    {
                        break;
                    }
                }
                drop(target);
                if let (true, Some(c)) = (used_stdin, on_end) {
                    c.attach_ended();
                }
            });
            let resize = console
                .as_ref()
                .and_then(|c| c.resize())
                .unwrap_or_else(|| mpsc::channel(1).0);
            Ok(ExecStreams {
                stdin,
                resize,
                output,
                exit,
            })
        })
    }

    fn port_forward(
        &self,
        pod: Value,
        port: u16,
    ) -> BoxFuture<'static, Result<tokio::net::TcpStream, PodLogError>> {
        let this = self.clone();
        Box::pin(async move {
            let rt = this.runtime(&pod)?;
            let ns = rt
                .lock()
                .netns
                .as_ref()
                .map(|p| p.netns().clone())
                .ok_or_else(|| {
                    PodLogError::BadRequest(format!(
                        "pod {} has no network namespace yet",
                        str_of(&pod, "/metadata/name")
                    ))
                })?;
            let name = ns.name().to_string();
            let connected = tokio::task::spawn_blocking(move || ns.run(move || connect(port)))
                .await
                .map_err(|e| PodLogError::Internal(e.to_string()))?
                .map_err(|e| PodLogError::Internal(e.to_string()))?;
            let conn = connected
                .and_then(|c| {
                    c.set_nonblocking(true)?;
                    tokio::net::TcpStream::from_std(c)
                })
                .map_err(|e| {
                    PodLogError::Internal(format!(
                        "failed to connect to localhost:{port} inside namespace \"{name}\", {e}"
                    ))
                })?;
            Ok(conn)
        })
    }
}

/// Connects to `localhost:port` from the calling thread's namespace: IPv4, then IPv6.
fn connect(port: u16) -> std::io::Result<std::net::TcpStream> {
    let timeout = Duration::from_secs(5);
    let v4 = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let v6 = std::net::SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, port));
    std::net::TcpStream::connect_timeout(&v4, timeout).or_else(|e4| {
        std::net::TcpStream::connect_timeout(&v6, timeout)
            .map_err(|e6| std::io::Error::new(e4.kind(), format!("IPv4: {e4} IPv6: {e6}")))
    })
}

fn start(
    argv: Vec<String>,
    env: Vec<(String, String)>,
    stdin: bool,
    tty: bool,
) -> std::io::Result<ExecStreams> {
    let (in_tx, in_rx) = mpsc::channel::<Bytes>(16);
    let (size_tx, size_rx) = mpsc::channel::<(u16, u16)>(4);
    let (out_tx, out_rx) = mpsc::channel::<(u8, Bytes)>(64);
    let (exit_tx, exit_rx) = oneshot::channel();
    let argv = if tty {
        console::with_controlling_tty(&argv)
    } else {
        argv
    };
    // By absolute path: `posix_spawn`, not `fork` (see `util::host_program`).
    let mut cmd = std::process::Command::new(crate::util::host_program(&argv[0]));
    cmd.args(&argv[1..])
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    if tty {
        let stdin = stdin.then_some(in_rx);
        start_tty(cmd, stdin, size_rx, out_tx, exit_tx)?;
    } else {
        cmd.stdin(if stdin { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = tokio::process::Command::from(cmd)
            .kill_on_drop(true)
            .spawn()?;
        if let Some(w) = child.stdin.take() {
            tokio::spawn(console::pump_in(in_rx, w));
        }
        if let (Some(o), Some(e)) = (child.stdout.take(), child.stderr.take()) {
            tokio::spawn(console::pump_out(o, 1, out_tx.clone()));
            tokio::spawn(console::pump_out(e, 2, out_tx));
        }
        tokio::spawn(wait(child, exit_tx));
    }
    Ok(ExecStreams {
        stdin: in_tx,
        resize: size_tx,
        output: out_rx,
        exit: exit_rx,
    })
}

fn start_tty(
    mut cmd: std::process::Command,
    stdin: Option<mpsc::Receiver<Bytes>>,
    mut size_rx: mpsc::Receiver<(u16, u16)>,
    out_tx: mpsc::Sender<(u8, Bytes)>,
    exit_tx: oneshot::Sender<i32>,
) -> std::io::Result<()> {
    let (reader, writer, size) = Pty::open_for(&mut cmd)?.halves()?;
    tokio::spawn(console::pump_out(reader, 1, out_tx));
    if let Some(rx) = stdin {
        tokio::spawn(console::pump_in(rx, writer));
    }
    tokio::spawn(async move {
        // The client sends its terminal's size first: the command starts with it.
        let first = tokio::time::timeout(Duration::from_secs(1), size_rx.recv()).await;
        if let Ok(Some(first)) = first {
            size.set(first);
        }
        let spawned = tokio::process::Command::from(cmd)
            .kill_on_drop(true)
            .spawn();
        // (The command held the terminal's other end; it is now only in the child, so that
        // its end is seen.)
        match spawned {
            Ok(child) => {
                console::resize_loop(size, size_rx);
                wait(child, exit_tx).await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "exec");
                let _ = exit_tx.send(127);
            }
        }
    });
    Ok(())
}

async fn wait(mut child: tokio::process::Child, exit: oneshot::Sender<i32>) {
    let code = match child.wait().await {
        Ok(s) => {
            use std::os::unix::process::ExitStatusExt;
            s.code().unwrap_or_else(|| 128 + s.signal().unwrap_or(9))
        }
        Err(_) => 137,
    };
    let _ = exit.send(code);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argv_enters_the_namespaces_with_the_containers_security_context() {
        let info = ExecInfo {
            uid: Some(1000),
            gid: Some(2000),
            caps: Some(vec!["net_admin".into()]),
            ..ExecInfo::default()
        };
        assert_eq!(
            argv(42, &info, &["id".to_string()]).join(" "),
            "nsenter --target 42 --mount --uts --net --wd -- setpriv --regid 2000 --clear-groups --reuid 1000 --bounding-set -all,+net_admin -- id"
        );
        assert_eq!(
            argv(42, &ExecInfo::default(), &["sh".to_string()]).join(" "),
            "nsenter --target 42 --mount --uts --net --wd -- setpriv -- sh"
        );
    }
}
