//! What every streaming transport gives a session: the client's streams, each with a receiver of
//! what the client sends (ending at its half-close) and a [`Writer`] for what the server sends,
//! and one queue ([`Out`]) that the transport's writer task turns into frames. WebSocket channels
//! (`v4`/`v5.channel.k8s.io`) and SPDY/3.1 streams (direct, or tunnelled in WebSocket) are both
//! driven into this shape, so exec, attach and port-forward are written once.

use bytes::Bytes;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// What the session asks the transport to put on the wire.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Out {
    /// Bytes on a stream.
    Data { id: u32, data: Bytes },
    /// The end of what the server sends on a stream (SPDY FIN; v5's close of a channel).
    Fin(u32),
    /// Acceptance of a stream the client opened (SPDY SYN_REPLY).
    Reply(u32),
    /// The answer to a ping (the WebSocket payload, or SPDY's 4-byte id).
    Pong(Vec<u8>),
    /// The end of the session (WebSocket close, SPDY GOAWAY), then the write side shuts.
    Close,
}

/// The client's side of the connection is gone.
#[derive(Debug)]
pub(crate) struct Gone;

/// Sends on one stream.
#[derive(Debug, Clone)]
pub(crate) struct Writer {
    pub id: u32,
    out: mpsc::Sender<Out>,
}

impl Writer {
    pub fn new(id: u32, out: mpsc::Sender<Out>) -> Writer {
        Writer { id, out }
    }

    pub async fn send(&self, data: impl Into<Bytes>) -> Result<(), Gone> {
        let data = data.into();
        if data.is_empty() {
            return Ok(());
        }
        self.out
            .send(Out::Data { id: self.id, data })
            .await
            .map_err(|_| Gone)
    }

    pub async fn finish(&self) {
        let _ = self.out.send(Out::Fin(self.id)).await;
    }
}

/// One stream the client opened (a SPDY stream) or that the protocol fixes (a WebSocket channel).
#[derive(Debug)]
pub(crate) struct Stream {
    pub id: u32,
    /// SPDY headers, names in lower case; none for WebSocket channels.
    pub headers: Vec<(String, String)>,
    /// What the client sends; ends at its half-close, a reset or the connection's end.
    pub rx: mpsc::Receiver<Bytes>,
    pub tx: Writer,
}

impl Stream {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A running transport: its streams as they come, and its two tasks.
pub(crate) struct Session {
    pub streams: mpsc::Receiver<Stream>,
    pub out: mpsc::Sender<Out>,
    pub reader: JoinHandle<()>,
    pub writer: JoinHandle<()>,
}

impl Session {
    /// Ends the session: the close goes out after everything queued before it, then the client
    /// gets a few seconds to read it all and hang up (closing at once could reset the connection
    /// and lose the tail of the output).
    pub async fn finish(self) {
        let _ = self.out.send(Out::Close).await;
        let _ = self.writer.await;
        let mut reader = self.reader;
        if tokio::time::timeout(Duration::from_secs(5), &mut reader)
            .await
            .is_err()
        {
            reader.abort();
        }
    }
}

/// The per-stream inbound queues the reader task dispatches into.
#[derive(Default)]
pub(crate) struct Inbound(std::collections::HashMap<u32, mpsc::Sender<Bytes>>);

impl Inbound {
    /// A new stream: its receiver for the session; `open: false` when the client already ended it.
    pub fn open(&mut self, id: u32, open: bool) -> mpsc::Receiver<Bytes> {
        let (tx, rx) = mpsc::channel(32);
        if open {
            self.0.insert(id, tx);
        }
        rx
    }

    /// Delivers bytes; a stream whose receiver is gone (unused by the session) drops them.
    pub async fn deliver(&mut self, id: u32, data: Vec<u8>) {
        if data.is_empty() {
            return;
        }
        if let Some(tx) = self.0.get(&id)
            && tx.send(Bytes::from(data)).await.is_err()
        {
            self.0.remove(&id);
        }
    }

    /// The client's half-close (or reset) of a stream.
    pub fn end(&mut self, id: u32) {
        self.0.remove(&id);
    }
}
