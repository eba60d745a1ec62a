//! WebSocket (RFC 6455) as the streaming subresources use it: the handshake's accept key, frames,
//! the channel protocols (`v4`/`v5.channel.k8s.io`: every binary message is one channel byte and
//! its payload; v5 adds 255 = the close of a channel) driven into a [`Session`], and the tunnel
//! that carries a SPDY/3.1 byte stream in binary messages (`SPDY/3.1+portforward.k8s.io`).

use super::mux::{Inbound, Out, Session, Stream, Writer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

const BINARY: u8 = 0x2;
const CLOSE: u8 = 0x8;
const PONG: u8 = 0xA;
/// Close code 1000 (normal closure).
const NORMAL: [u8; 2] = [3, 232];

/// `Sec-WebSocket-Accept` for a `Sec-WebSocket-Key` (RFC 6455 §4.2.2).
pub fn accept_key(key: &str) -> String {
    use base64::Engine;
    let mut input = key.trim().as_bytes().to_vec();
    input.extend_from_slice(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    let digest = ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, &input);
    base64::engine::general_purpose::STANDARD.encode(digest.as_ref())
}

/// One message from the client.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame {
    Data(Vec<u8>),
    Ping(Vec<u8>),
    Close,
}

/// Reads one message (joining fragments; control frames in between are returned first).
pub async fn read_frame<R: AsyncRead + Unpin>(r: &mut R) -> std::io::Result<Frame> {
    let mut message = Vec::new();
    loop {
        let mut head = [0u8; 2];
        r.read_exact(&mut head).await?;
        let fin = head[0] & 0x80 != 0;
        let opcode = head[0] & 0x0f;
        let masked = head[1] & 0x80 != 0;
        let len = match head[1] & 0x7f {
            126 => u64::from(r.read_u16().await?),
            127 => r.read_u64().await?,
            n => u64::from(n),
        };
        if len > 16 << 20 {
            return Err(std::io::Error::other("WebSocket frame over 16 MiB"));
        }
        let mut mask = [0u8; 4];
        if masked {
            r.read_exact(&mut mask).await?;
        }
        let mut payload = vec![0u8; len as usize];
        r.read_exact(&mut payload).await?;
        if masked {
            for (i, b) in payload.iter_mut().enumerate() {
                *b ^= mask[i % 4];
            }
        }
        match opcode {
            0x8 => return Ok(Frame::Close),
            0x9 => return Ok(Frame::Ping(payload)),
            0xA => continue,
            _ => {
                message.extend_from_slice(&payload);
                if fin {
                    return Ok(Frame::Data(message));
                }
            }
        }
    }
}

/// Writes one unmasked frame (server to client).
pub async fn write_frame<W: AsyncWrite + Unpin>(
    w: &mut W,
    opcode: u8,
    payload: &[u8],
) -> std::io::Result<()> {
    let mut head = vec![0x80 | opcode];
    match payload.len() {
        n if n < 126 => head.push(n as u8),
        n if n <= 0xffff => {
            head.push(126);
            head.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            head.push(127);
            head.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    head.extend_from_slice(payload);
    w.write_all(&head).await?;
    w.flush().await
}

/// Drives a channel protocol with `count` channels (0..count), all open from the start.
pub(crate) fn channels<S>(io: S, v5: bool, count: u32) -> Session
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (mut rd, mut wr) = tokio::io::split(io);
    let (out, mut queue) = mpsc::channel::<Out>(64);
    let (streams_tx, streams) = mpsc::channel(count.max(1) as usize);
    let mut inbound = Inbound::default();
    for id in 0..count {
        let rx = inbound.open(id, true);
        let tx = Writer::new(id, out.clone());
        let _ = streams_tx.try_send(Stream {
            id,
            headers: Vec::new(),
            rx,
            tx,
        });
    }
    let pong = out.clone();
    let reader = tokio::spawn(async move {
        loop {
            match read_frame(&mut rd).await {
                Ok(Frame::Data(m)) => match m.split_first() {
                    Some((255, rest)) if v5 => {
                        if let Some(&ch) = rest.first() {
                            inbound.end(u32::from(ch));
                        }
                    }
                    Some((&ch, rest)) => inbound.deliver(u32::from(ch), rest.to_vec()).await,
                    None => {}
                },
                Ok(Frame::Ping(p)) => {
                    let _ = pong.send(Out::Pong(p)).await;
                }
                Ok(Frame::Close) | Err(_) => return,
            }
        }
    });
    let writer = tokio::spawn(async move {
        while let Some(o) = queue.recv().await {
            let written = match o {
                Out::Data { id, data } => {
                    let mut m = Vec::with_capacity(data.len() + 1);
                    m.push(id as u8);
                    m.extend_from_slice(&data);
                    write_frame(&mut wr, BINARY, &m).await
                }
                // The channel protocols end streams with the connection.
                Out::Fin(_) | Out::Reply(_) => Ok(()),
                Out::Pong(p) => write_frame(&mut wr, PONG, &p).await,
                Out::Close => {
                    let _ = write_frame(&mut wr, CLOSE, &NORMAL).await;
                    let _ = wr.shutdown().await;
                    return;
                }
            };
            if written.is_err() {
                return;
            }
        }
    });
    Session {
        streams,
        out,
        reader,
        writer,
    }
}

/// Unwraps a SPDY byte stream tunnelled in binary messages: the returned end reads what the
/// client's messages carry and writes messages back; its shutdown sends the WebSocket close.
pub(crate) fn tunnel<S>(io: S) -> tokio::io::DuplexStream
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (inner, outer) = tokio::io::duplex(64 * 1024);
    let (mut rd, mut wr) = tokio::io::split(io);
    let (mut from_spdy, mut to_spdy) = tokio::io::split(outer);
    let (pong_tx, mut pong_rx) = mpsc::channel::<Vec<u8>>(4);
    tokio::spawn(async move {
        loop {
            match read_frame(&mut rd).await {
                Ok(Frame::Data(m)) => {
                    if to_spdy.write_all(&m).await.is_err() {
                        return;
                    }
                }
                Ok(Frame::Ping(p)) => {
                    let _ = pong_tx.send(p).await;
                }
                Ok(Frame::Close) | Err(_) => {
                    let _ = to_spdy.shutdown().await;
                    return;
                }
            }
        }
    });
    tokio::spawn(async move {
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            tokio::select! {
                n = from_spdy.read(&mut buf) => match n {
                    Ok(0) | Err(_) => {
                        let _ = write_frame(&mut wr, CLOSE, &NORMAL).await;
                        let _ = wr.shutdown().await;
                        return;
                    }
                    Ok(n) => {
                        if write_frame(&mut wr, BINARY, &buf[..n]).await.is_err() {
                            return;
                        }
                    }
                },
                Some(p) = pong_rx.recv() => {
                    if write_frame(&mut wr, PONG, &p).await.is_err() {
                        return;
                    }
                }
            }
        }
    });
    inner
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_key_of_the_rfc_example() {
        assert_eq!(
            accept_key("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    fn masked(data: &[u8]) -> Vec<u8> {
        let mask = [0x37u8, 0xfa, 0x21, 0x3d];
        let mut b = mask.to_vec();
        b.extend(data.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        b
    }

    #[tokio::test]
    async fn frames_round_trip_masked_and_fragmented() {
        // "Hel" (masked text frame, not final), then "lo" (masked continuation).
        let mut b = vec![0x01, 0x83];
        b.extend(masked(b"Hel"));
        b.extend_from_slice(&[0x80, 0x82]);
        b.extend(masked(b"lo"));
        let mut r = &b[..];
        assert_eq!(
            read_frame(&mut r).await.unwrap(),
            Frame::Data(b"Hello".to_vec())
        );
        let mut out = Vec::new();
        write_frame(&mut out, 0x2, &[1; 300]).await.unwrap();
        assert_eq!(&out[..4], &[0x82, 126, 1, 44]);
    }

    #[tokio::test]
    async fn channels_dispatch_by_the_first_byte_and_v5_closes_one() {
        let (server, mut client) = tokio::io::duplex(4096);
        let mut s = channels(server, true, 3);
        let mut streams = Vec::new();
        while let Ok(st) = s.streams.try_recv() {
            streams.push(st);
        }
        assert_eq!(streams.len(), 3);
        // Client: "hi" on channel 0, a ping, then the close of channel 0.
        let mut b = vec![0x82, 0x83];
        b.extend(masked(b"\0hi"));
        b.extend_from_slice(&[0x89, 0x81]);
        b.extend(masked(b"p"));
        b.extend_from_slice(&[0x82, 0x82]);
        b.extend(masked(&[255, 0]));
        client.write_all(&b).await.unwrap();
        assert_eq!(&streams[0].rx.recv().await.unwrap()[..], b"hi");
        assert!(streams[0].rx.recv().await.is_none(), "closed by 255");
        streams[2].tx.send(&b"out"[..]).await.unwrap();
        let mut got = [0u8; 3 + 6];
        client.read_exact(&mut got).await.unwrap();
        assert_eq!(&got[..3], &[0x8A, 1, b'p'], "the pong comes first");
        assert_eq!(&got[3..], &[0x82, 4, 2, b'o', b'u', b't']);
    }
}
