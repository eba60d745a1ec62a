//! Terminals and kept-open stdin, for exec and attach: the pseudo-terminal a `tty: true`
//! container or an `exec -t` runs on (the command is started by `setsid -c`, so the terminal is
//! its controlling one; its size is set in one `TIOCSWINSZ` as the client resizes), the stdin pipe a
//! `stdin: true` container keeps for `kubectl attach`, and the pumps between them and channels.
//! A container's console output goes to its log file, which attach follows.

use bytes::Bytes;
use std::process::Stdio;
use std::sync::Mutex;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

/// A new pseudo-terminal: its master.
pub struct Pty {
    pub master: std::fs::File,
}

impl Pty {
    /// Opens one and makes its slave the stdin, stdout and stderr of `cmd` (which holds the
    /// only copies: once `cmd` is dropped after the spawn, the master sees the end when the
    /// command's processes are gone).
    pub fn open_for(cmd: &mut std::process::Command) -> std::io::Result<Pty> {
        let pty = nix::pty::openpty(None, None).map_err(std::io::Error::from)?;
        cmd.stdin(Stdio::from(pty.slave.try_clone()?))
            .stdout(Stdio::from(pty.slave.try_clone()?))
            .stderr(Stdio::from(pty.slave));
        Ok(Pty {
            master: std::fs::File::from(pty.master),
        })
    }

    /// Reader and writer halves of the master, and a handle that sets its size.
    pub fn halves(self) -> std::io::Result<(tokio::fs::File, tokio::fs::File, Size)> {
        let reader = tokio::fs::File::from_std(self.master.try_clone()?);
        let size = Size(self.master.try_clone()?);
        Ok((reader, tokio::fs::File::from_std(self.master), size))
    }
}

/// Sets a terminal's size (columns and rows at once; its foreground group gets SIGWINCH).
pub struct Size(std::fs::File);

impl Size {
    pub fn set(&self, (cols, rows): (u16, u16)) {
        let ws = rustix::termios::Winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        if let Err(e) = rustix::termios::tcsetwinsize(&self.0, ws) {
            tracing::debug!(error = %e, "terminal size");
        }
    }
}

/// The argv that runs `argv` with the terminal on its stdin as its controlling terminal.
pub fn with_controlling_tty(argv: &[String]) -> Vec<String> {
    let mut a = vec!["setsid".to_string(), "-c".to_string()];
    a.extend(argv.iter().cloned());
    a
}

/// Applies sizes as they come, until the sender is gone.
pub fn resize_loop(size: Size, mut rx: mpsc::Receiver<(u16, u16)>) {
    tokio::spawn(async move {
        while let Some(s) = rx.recv().await {
            size.set(s);
        }
    });
}

/// Copies a stream to a channel until EOF (or EIO: the terminal's last user left).
pub async fn pump_out<R: AsyncRead + Unpin>(mut r: R, ch: u8, tx: mpsc::Sender<(u8, Bytes)>) {
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

/// Copies bytes in; the channel's end closes the writer.
pub async fn pump_in<W: AsyncWrite + Unpin>(mut rx: mpsc::Receiver<Bytes>, mut w: W) {
    while let Some(b) = rx.recv().await {
        if w.write_all(&b).await.is_err() || w.flush().await.is_err() {
            return;
        }
    }
}

/// A running container's console, for `kubectl attach`.
#[derive(Debug)]
pub struct Console {
    /// Into the container's stdin; `None` once closed (after the first attach, `stdinOnce`).
    stdin: Mutex<Option<mpsc::Sender<Bytes>>>,
    stdin_once: bool,
    /// Terminal sizes, with a TTY.
    resize: Option<mpsc::Sender<(u16, u16)>>,
}

impl Console {
    pub fn stdin(&self) -> Option<mpsc::Sender<Bytes>> {
        crate::lock(&self.stdin).clone()
    }

    pub fn resize(&self) -> Option<mpsc::Sender<(u16, u16)>> {
        self.resize.clone()
    }

    /// An attach that used stdin has ended: with `stdinOnce`, the container's stdin closes.
    pub fn attach_ended(&self) {
        if self.stdin_once {
            crate::lock(&self.stdin).take();
        }
    }
}

/// What `prepare` leaves for after the spawn: the stdin pipe to feed, and the copy of the
/// terminal's output to wait for once the container has ended.
pub struct Pending {
    stdin: Option<mpsc::Receiver<Bytes>>,
    output: Option<tokio::task::JoinHandle<()>>,
}

impl Pending {
    /// Feeds the child's stdin pipe; returns the wait for the terminal's output.
    pub fn spawned(self, child: &mut tokio::process::Child) -> Drained {
        if let (Some(rx), Some(w)) = (self.stdin, child.stdin.take()) {
            tokio::spawn(pump_in(rx, w));
        }
        Drained(self.output)
    }
}

/// The end of a container's terminal output in its log file.
#[derive(Default)]
pub struct Drained(Option<tokio::task::JoinHandle<()>>);

impl Drained {
    /// Waits (a bounded time) until the output of the ended container is all in its log, so that
    /// logs and attach that see it terminated have seen all of it.
    pub async fn wait(self) {
        if let Some(mut h) = self.0
            && tokio::time::timeout(std::time::Duration::from_secs(2), &mut h)
                .await
                .is_err()
        {
            h.abort();
        }
    }
}

/// Sets up `cmd` (its stdout and stderr already on the log file) for a container whose spec
/// asks for `stdin` and/or `tty`: a pipe for stdin, or a terminal whose output is copied to
/// `log`. The caller starts the command under [`with_controlling_tty`] when `tty`.
pub fn prepare(
    cmd: &mut std::process::Command,
    log: std::fs::File,
    stdin: bool,
    tty: bool,
    stdin_once: bool,
) -> std::io::Result<(Console, Pending)> {
    let (in_tx, in_rx) = mpsc::channel::<Bytes>(16);
    let mut console = Console {
        stdin: Mutex::new(stdin.then_some(in_tx)),
        stdin_once,
        resize: None,
    };
    if !tty {
        cmd.stdin(if stdin { Stdio::piped() } else { Stdio::null() });
        let pending = Pending {
            stdin: stdin.then_some(in_rx),
            output: None,
        };
        return Ok((console, pending));
    }
    let (reader, writer, size) = Pty::open_for(cmd)?.halves()?;
    let (size_tx, size_rx) = mpsc::channel(4);
    resize_loop(size, size_rx);
    console.resize = Some(size_tx);
    if stdin {
        tokio::spawn(pump_in(in_rx, writer));
    }
    // The terminal's output goes to the log file, flushed as it comes (attach follows it).
    let output = tokio::spawn(async move {
        let mut log = tokio::fs::File::from_std(log);
        let (mut reader, mut buf) = (reader, vec![0u8; 16 * 1024]);
        while let Ok(n) = reader.read(&mut buf).await {
            if n == 0 || log.write_all(&buf[..n]).await.is_err() || log.flush().await.is_err() {
                return;
            }
        }
    });
    let pending = Pending {
        stdin: None,
        output: Some(output),
    };
    Ok((console, pending))
}
