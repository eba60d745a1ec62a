//! `exec` and `attach` over any transport: the client's streams by role (stdin, stdout, stderr,
//! the error/status stream, terminal resizes), bytes pumped between them and the node's process,
//! and the `Status` written on the error stream at the end, as kubelet writes it (v4 and later).

use super::mux::{Session, Stream, Writer};
use super::{ExecRequest, ExecStreams, PodStreamsHandle};
use bytes::Bytes;
use serde_json::{Value, json};
use std::time::Duration;

/// Exec runs a new process; attach joins the container's own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Exec,
    Attach,
}

/// The roles of remote-command streams: SPDY names them (`streamType`), WebSocket numbers them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Stdin,
    Stdout,
    Stderr,
    Error,
    Resize,
}

fn role(s: &Stream) -> Option<Role> {
    match s.header("streamtype") {
        Some("stdin") => Some(Role::Stdin),
        Some("stdout") => Some(Role::Stdout),
        Some("stderr") => Some(Role::Stderr),
        Some("error") => Some(Role::Error),
        Some("resize") => Some(Role::Resize),
        Some(_) => None,
        None => match s.id {
            0 => Some(Role::Stdin),
            1 => Some(Role::Stdout),
            2 => Some(Role::Stderr),
            3 => Some(Role::Error),
            4 => Some(Role::Resize),
            _ => None,
        },
    }
}

/// The status the error stream carries at the end.
pub fn exit_status(command: &[String], code: i32) -> Value {
    if code == 0 {
        return json!({"metadata": {}, "status": "Success"});
    }
    json!({"metadata": {}, "status": "Failure",
           "message": format!("command terminated with non-zero exit code: error executing command [{}], exit code {code}", command.join(" ")),
           "reason": "NonZeroExitCode",
           "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]}})
}

/// Terminal sizes from a resize stream: JSON objects `{"Width":…,"Height":…}`, one per
/// WebSocket message or one after another on a SPDY stream.
#[derive(Default)]
struct Sizes(Vec<u8>);

impl Sizes {
    fn push(&mut self, bytes: &[u8]) -> Vec<(u16, u16)> {
        self.0.extend_from_slice(bytes);
        let mut sizes = Vec::new();
        let mut it = serde_json::Deserializer::from_slice(&self.0).into_iter::<Value>();
        let mut used = 0;
        while let Some(Ok(v)) = it.next() {
            used = it.byte_offset();
            if let (Some(w), Some(h)) = (v["Width"].as_u64(), v["Height"].as_u64()) {
                sizes.push((
                    w.min(u64::from(u16::MAX)) as u16,
                    h.min(u64::from(u16::MAX)) as u16,
                ));
            }
        }
        self.0.drain(..used);
        sizes
    }
}

/// Runs one exec or attach session to its end.
pub(crate) async fn run(
    mut session: Session,
    node: PodStreamsHandle,
    pod: Value,
    req: ExecRequest,
    mode: Mode,
) {
    // The streams the request implies (SPDY opens exactly these; WebSocket has them all).
    let mut wanted = vec![Role::Error];
    if req.stdin {
        wanted.push(Role::Stdin);
    }
    if req.stdout {
        wanted.push(Role::Stdout);
    }
    if req.stderr && !req.tty {
        wanted.push(Role::Stderr);
    }
    if req.tty {
        wanted.push(Role::Resize);
    }
    let mut got: Vec<(Role, Stream)> = Vec::new();
    let deadline = tokio::time::sleep(Duration::from_secs(30));
    tokio::pin!(deadline);
    while !wanted.iter().all(|w| got.iter().any(|(r, _)| r == w)) {
        tokio::select! {
            s = session.streams.recv() => match s {
                Some(s) => if let Some(r) = role(&s) { got.push((r, s)) },
                None => break,
            },
            () = &mut deadline => break,
        }
    }
    let mut take = |role: Role| {
        got.iter()
            .position(|(r, _)| *r == role)
            .map(|i| got.swap_remove(i).1)
    };
    let Some(error) = take(Role::Error) else {
        tracing::debug!("remote command: the client opened no error stream");
        session.finish().await;
        return;
    };
    let stdin = take(Role::Stdin).filter(|_| req.stdin);
    let stdout = take(Role::Stdout).map(|s| s.tx);
    let stderr = take(Role::Stderr).map(|s| s.tx);
    let resize = take(Role::Resize);
    let command = req.command.clone();
    let started = match mode {
        Mode::Exec => node.0.exec(pod, req).await,
        Mode::Attach => node.0.attach(pod, req).await,
    };
    let streams = match started {
        Ok(s) => s,
        Err(e) => {
            let status = json!({"metadata": {}, "status": "Failure", "message": e.to_string(),
                                "reason": "InternalError"});
            let _ = error.tx.send(status.to_string()).await;
            error.tx.finish().await;
            session.finish().await;
            return;
        }
    };
    let ExecStreams {
        stdin: to_process,
        resize: resize_tx,
        mut output,
        exit,
    } = streams;
    // Client → process: stdin until the client ends it (dropping the sender closes it).
    let pumps = [
        stdin.map(|mut s| {
            tokio::spawn(async move {
                while let Some(b) = s.rx.recv().await {
                    if to_process.send(b).await.is_err() {
                        return;
                    }
                }
            })
        }),
        resize.map(|mut s| {
            tokio::spawn(async move {
                let mut sizes = Sizes::default();
                while let Some(b) = s.rx.recv().await {
                    for size in sizes.push(&b) {
                        let _ = resize_tx.send(size).await;
                    }
                }
            })
        }),
    ];
    let out = |ch: u8| -> Option<&Writer> {
        match ch {
            2 => stderr.as_ref().or(stdout.as_ref()),
            _ => stdout.as_ref(),
        }
    };
    let mut gone = false;
    while let Some((ch, data)) = output.recv().await {
        if let Some(w) = out(ch)
            && w.send(Bytes::clone(&data)).await.is_err()
        {
            gone = true;
            break;
        }
    }
    if !gone {
        let code = match mode {
            Mode::Exec => exit.await.unwrap_or(137),
            // Attach ends with the container's output; its exit code is the Pod's status.
            Mode::Attach => 0,
        };
        for w in [&stdout, &stderr].into_iter().flatten() {
            w.finish().await;
        }
        let _ = error.tx.send(exit_status(&command, code).to_string()).await;
        error.tx.finish().await;
    }
    for p in pumps.into_iter().flatten() {
        p.abort();
    }
    session.finish().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_from_messages_or_a_byte_stream() {
        let mut s = Sizes::default();
        assert_eq!(s.push(br#"{"Width":80,"Height":24}"#), vec![(80, 24)]);
        assert_eq!(s.push(br#"{"Width":100,"Hei"#), vec![]);
        assert_eq!(
            s.push(b"ght\":30}\n{\"Width\":1,\"Height\":2}\n"),
            vec![(100, 30), (1, 2)]
        );
        assert_eq!(
            exit_status(&["false".into()], 1)["details"]["causes"][0]["message"],
            "1"
        );
    }
}
