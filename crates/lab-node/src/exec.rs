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
    // Each goes to the pumps of one of the two ways below.
    let (mut in_rx, mut out_tx) = (Some(in_rx), Some(out_tx));
    let mut cmd;
    if tty {
        let pty = nix::pty::openpty(None, None).map_err(std::io::Error::from)?;
        let path = nix::unistd::ttyname(&pty.slave).map_err(std::io::Error::from)?;
        // `setsid -c` makes the pseudo-terminal the command's controlling terminal.
        cmd = tokio::process::Command::new("setsid");
        cmd.arg("-c")
            .args(&argv)
            .stdin(Stdio::from(pty.slave.try_clone()?))
            .stdout(Stdio::from(pty.slave.try_clone()?))
            .stderr(Stdio::from(pty.slave));
        let master = std::fs::File::from(pty.master);
        let reader = tokio::fs::File::from_std(master.try_clone()?);
        let writer = tokio::fs::File::from_std(master);
        if let Some(tx) = out_tx.take() {
            tokio::spawn(pump_out(reader, 1, tx));
        }
        if let Some(rx) = in_rx.take().filter(|_| stdin) {
            tokio::spawn(pump_in(rx, writer));
        }
        tokio::spawn(resize(size_rx, path));
    } else {
        cmd = tokio::process::Command::new(&argv[0]);
        cmd.args(&argv[1..])
            .stdin(if stdin { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
    }
    cmd.env_clear()
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .kill_on_drop(true);
    let mut child = cmd.spawn()?;
    if !tty {
        if let (Some(w), Some(rx)) = (child.stdin.take(), in_rx.take()) {
            tokio::spawn(pump_in(rx, w));
        }
        if let (Some(o), Some(e), Some(tx)) =
            (child.stdout.take(), child.stderr.take(), out_tx.take())
        {
            tokio::spawn(pump_out(o, 1, tx.clone()));
            tokio::spawn(pump_out(e, 2, tx));
        }
    }
    tokio::spawn(async move {
        let code = match child.wait().await {
            Ok(s) => {
                use std::os::unix::process::ExitStatusExt;
                s.code().unwrap_or_else(|| 128 + s.signal().unwrap_or(9))
            }
            Err(_) => 137,
        };
        let _ = exit_tx.send(code);
    });
    Ok(ExecStreams {
        stdin: in_tx,
        resize: size_tx,
        output: out_rx,
        exit: exit_rx,
    })
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

async fn resize(mut rx: mpsc::Receiver<(u16, u16)>, path: std::path::PathBuf) {
    while let Some((cols, rows)) = rx.recv().await {
        let _ = tokio::process::Command::new("stty")
            .arg("-F")
            .arg(&path)
            .args(["rows", &rows.to_string(), "cols", &cols.to_string()])
            .status()
            .await;
    }
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
