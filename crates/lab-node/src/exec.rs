//! The node's side of `kubectl exec`: a command run in a running container's namespaces (mount,
//! UTS, network; `nsenter` on its main process) with the container's environment, user and
//! group and working directory; stdin, stdout and stderr as pipes, or one pseudo-terminal for
//! `-t` (its size set with `stty` as the client resizes). Not done: the container's capability
//! bounding set for the exec'd process (it keeps the node's).

use crate::PodTable;
use crate::util::{arr, str_of};
use bytes::Bytes;
use futures::future::BoxFuture;
use lab_api::{ExecRequest, ExecStreams, PodExec, PodLogError};
use serde_json::Value;
use std::process::Stdio;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};

/// What an exec needs to know of a container instance.
#[derive(Debug, Clone, Default)]
pub struct ExecInfo {
    pub env: Vec<(String, String)>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
}

/// The `nsenter` (and `setpriv`) argv that runs `command` in the namespaces of `pid`.
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
    if info.uid.is_some() || info.gid.is_some() {
        a.push("setpriv".into());
        if let Some(g) = info.gid {
            a.extend(["--regid".into(), g.to_string()]);
        }
        if let Some(u) = info.uid {
            a.extend(["--reuid".into(), u.to_string()]);
        }
        a.extend(["--clear-groups".into(), "--".into()]);
    }
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

/// The node's side of `kubectl exec`.
#[derive(Clone)]
pub struct NodeExec(pub(crate) PodTable);

impl PodExec for NodeExec {
    fn exec(
        &self,
        pod: Value,
        req: ExecRequest,
    ) -> BoxFuture<'static, Result<ExecStreams, PodLogError>> {
        let table = self.0.clone();
        Box::pin(async move {
            let name = str_of(&pod, "/metadata/name").to_string();
            let container = req
                .container
                .clone()
                .unwrap_or_else(|| default_container(&pod));
            let rt = crate::lock(&table.0)
                .get(str_of(&pod, "/metadata/uid"))
                .cloned()
                .ok_or_else(|| {
                    PodLogError::BadRequest(format!("pod {name} does not run on this node"))
                })?;
            let (pid, info) = {
                let st = rt.lock();
                match st.find(&container) {
                    Some((_, c)) if c.running() && c.pgid.is_some() => (
                        c.pgid.unwrap_or_default(),
                        c.exec.clone().unwrap_or_default(),
                    ),
                    _ => {
                        return Err(PodLogError::BadRequest(format!(
                            "unable to upgrade connection: container not found (\"{container}\")"
                        )));
                    }
                }
            };
            let mut env = info.env.clone();
            if req.tty {
                env.push(("TERM".into(), "xterm".into()));
            }
            start(argv(pid, &info, &req.command), env, req.stdin, req.tty)
                .map_err(|e| PodLogError::Internal(format!("exec in {name}/{container}: {e}")))
        })
    }
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
    let mut cmd = tokio::process::Command::new(if tty { "setsid" } else { &argv[0] });
    cmd.env_clear()
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .kill_on_drop(true);
    if tty {
        // `setsid -c` makes the pseudo-terminal the command's controlling terminal.
        cmd.arg("-c").args(&argv);
        let stdin = stdin.then_some(in_rx);
        start_tty(cmd, stdin, size_rx, out_tx, exit_tx)?;
    } else {
        cmd.args(&argv[1..])
            .stdin(if stdin { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn()?;
        if let Some(w) = child.stdin.take() {
            tokio::spawn(pump_in(in_rx, w));
        }
        if let (Some(o), Some(e)) = (child.stdout.take(), child.stderr.take()) {
            tokio::spawn(pump_out(o, 1, out_tx.clone()));
            tokio::spawn(pump_out(e, 2, out_tx));
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
    mut cmd: tokio::process::Command,
    stdin: Option<mpsc::Receiver<Bytes>>,
    mut size_rx: mpsc::Receiver<(u16, u16)>,
    out_tx: mpsc::Sender<(u8, Bytes)>,
    exit_tx: oneshot::Sender<i32>,
) -> std::io::Result<()> {
    let pty = nix::pty::openpty(None, None).map_err(std::io::Error::from)?;
    let path = nix::unistd::ttyname(&pty.slave).map_err(std::io::Error::from)?;
    cmd.stdin(Stdio::from(pty.slave.try_clone()?))
        .stdout(Stdio::from(pty.slave.try_clone()?))
        .stderr(Stdio::from(pty.slave));
    let master = std::fs::File::from(pty.master);
    let reader = tokio::fs::File::from_std(master.try_clone()?);
    let writer = tokio::fs::File::from_std(master);
    tokio::spawn(pump_out(reader, 1, out_tx));
    if let Some(rx) = stdin {
        tokio::spawn(pump_in(rx, writer));
    }
    tokio::spawn(async move {
        // The client sends its terminal's size first: the command starts with it.
        let first = tokio::time::timeout(std::time::Duration::from_secs(1), size_rx.recv()).await;
        if let Ok(Some(size)) = first {
            stty(&path, size).await;
        }
        let spawned = cmd.spawn();
        // The terminal's other end must stay open only in the command, so that its end is seen.
        drop(cmd);
        match spawned {
            Ok(child) => {
                tokio::spawn(async move {
                    while let Some(size) = size_rx.recv().await {
                        stty(&path, size).await;
                    }
                });
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

/// Copies a stream to the output channel until EOF (or EIO: the terminal's last user left).
async fn pump_out<R: AsyncRead + Unpin>(mut r: R, ch: u8, tx: mpsc::Sender<(u8, Bytes)>) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if tx
                    .send((ch, Bytes::copy_from_slice(&buf[..n])))
                    .await
                    .is_err()
                {
                    return;
                }
            }
        }
    }
}

/// Copies the client's stdin in; the channel's end closes it.
async fn pump_in<W: AsyncWrite + Unpin>(mut rx: mpsc::Receiver<Bytes>, mut w: W) {
    while let Some(b) = rx.recv().await {
        if w.write_all(&b).await.is_err() || w.flush().await.is_err() {
            return;
        }
    }
}

async fn stty(path: &std::path::Path, (cols, rows): (u16, u16)) {
    let _ = tokio::process::Command::new("stty")
        .arg("-F")
        .arg(path)
        .args(["rows", &rows.to_string(), "cols", &cols.to_string()])
        .status()
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argv_enters_the_namespaces_as_the_container_user() {
        let info = ExecInfo {
            uid: Some(1000),
            gid: Some(2000),
            ..ExecInfo::default()
        };
        assert_eq!(
            argv(42, &info, &["id".to_string()]).join(" "),
            "nsenter --target 42 --mount --uts --net --wd -- setpriv --regid 2000 --reuid 1000 --clear-groups -- id"
        );
        assert_eq!(
            argv(42, &ExecInfo::default(), &["sh".to_string()]).join(" "),
            "nsenter --target 42 --mount --uts --net --wd -- sh"
        );
    }
}
