//! SPDY/3.1 as kubectl and client-go speak it for exec, attach and port-forward: frames (draft 3
//! §2.2–2.6), header blocks compressed with one zlib stream per direction primed with the
//! protocol's dictionary (§2.6.10.1), and a connection driven into a [`Session`]: every stream
//! the client opens is accepted at once (SYN_REPLY), its DATA goes to the session, FIN and
//! RST_STREAM end it, PINGs are echoed. Flow control is not enforced, as client-go's
//! spdystream does not enforce it either (WINDOW_UPDATE and SETTINGS are read and ignored).

use super::mux::{Inbound, Out, Session, Stream, Writer};
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};
use std::io;
use std::sync::OnceLock;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

const VERSION: u16 = 3;
const SYN_STREAM: u16 = 1;
const SYN_REPLY: u16 = 2;
const RST_STREAM: u16 = 3;
const PING: u16 = 6;
const GOAWAY: u16 = 7;
const HEADERS: u16 = 8;
const FLAG_FIN: u8 = 0x01;
/// The largest frame accepted (the format allows 16 MiB).
const MAX_FRAME: usize = 1 << 24;
/// Data frames written are at most this long.
const MAX_DATA: usize = 64 * 1024;

/// The header names that open the dictionary, each written as a 32-bit length and the name.
const DICTIONARY_WORDS: &[&str] = &[
    "options",
    "head",
    "post",
    "put",
    "delete",
    "trace",
    "accept",
    "accept-charset",
    "accept-encoding",
    "accept-language",
    "accept-ranges",
    "age",
    "allow",
    "authorization",
    "cache-control",
    "connection",
    "content-base",
    "content-encoding",
    "content-language",
    "content-length",
    "content-location",
    "content-md5",
    "content-range",
    "content-type",
    "date",
    "etag",
    "expect",
    "expires",
    "from",
    "host",
    "if-match",
    "if-modified-since",
    "if-none-match",
    "if-range",
    "if-unmodified-since",
    "last-modified",
    "location",
    "max-forwards",
    "pragma",
    "proxy-authenticate",
    "proxy-authorization",
    "range",
    "referer",
    "retry-after",
    "server",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "user-agent",
    "vary",
    "via",
    "warning",
    "www-authenticate",
    "method",
    "get",
    "status",
    "200 OK",
    "version",
    "HTTP/1.1",
    "url",
    "public",
    "set-cookie",
    "keep-alive",
    "origin",
];

/// The raw text that closes the dictionary: status codes and phrases, dates, common values.
const DICTIONARY_TAIL: &str = concat!(
    "100101201202205206300302303304305306307402405406407408409410411412413414415416417502504505",
    "203 Non-Authoritative Information204 No Content301 Moved Permanently400 Bad Request",
    "401 Unauthorized403 Forbidden404 Not Found500 Internal Server Error501 Not Implemented",
    "503 Service UnavailableJan Feb Mar Apr May Jun Jul Aug Sept Oct Nov Dec 00:00:00 ",
    "Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMTchunked,text/html,image/png,image/jpg,image/gif,",
    "application/xml,application/xhtml+xml,text/plain,text/javascript,publicprivatemax-age=",
    "gzip,deflate,sdchcharset=utf-8charset=iso-8859-1,utf-,*,enq=0.",
);

/// The SPDY/3 header-compression dictionary (1423 bytes).
pub fn dictionary() -> &'static [u8] {
    static DICT: OnceLock<Vec<u8>> = OnceLock::new();
    DICT.get_or_init(|| {
        let mut d = Vec::with_capacity(1423);
        for w in DICTIONARY_WORDS {
            d.extend_from_slice(&(w.len() as u32).to_be_bytes());
            d.extend_from_slice(w.as_bytes());
        }
        d.extend_from_slice(DICTIONARY_TAIL.as_bytes());
        d
    })
}

/// A header block's name/value pairs (names in lower case, one pair per value).
pub type Headers = Vec<(String, String)>;

/// A frame as this server needs it.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame {
    SynStream {
        id: u32,
        fin: bool,
        headers: Headers,
    },
    SynReply {
        id: u32,
        fin: bool,
        headers: Headers,
    },
    Headers {
        id: u32,
        headers: Headers,
    },
    RstStream {
        id: u32,
        status: u32,
    },
    Ping(u32),
    GoAway {
        last: u32,
        status: u32,
    },
    Data {
        id: u32,
        fin: bool,
        data: Vec<u8>,
    },
    /// SETTINGS, WINDOW_UPDATE, and frame types this server has no use for.
    Other(u16),
}

fn bad(what: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.into())
}

fn u32_at(b: &[u8], at: usize) -> io::Result<u32> {
    b.get(at..at + 4)
        .map(|s| u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
        .ok_or_else(|| bad("SPDY frame too short"))
}

/// Header blocks' compression, one per direction and connection (the zlib stream never resets).
pub struct Deflater(Compress);

impl Default for Deflater {
    fn default() -> Self {
        let mut c = Compress::new(Compression::default(), true);
        c.set_dictionary(dictionary())
            .expect("a fresh compressor takes a dictionary");
        Deflater(c)
    }
}

impl Deflater {
    fn block(&mut self, headers: &[(String, String)]) -> Vec<u8> {
        let mut raw = Vec::new();
        raw.extend_from_slice(&(headers.len() as u32).to_be_bytes());
        for (k, v) in headers {
            for s in [k.to_ascii_lowercase().as_str(), v.as_str()] {
                raw.extend_from_slice(&(s.len() as u32).to_be_bytes());
                raw.extend_from_slice(s.as_bytes());
            }
        }
        let mut out = Vec::with_capacity(raw.len() + 64);
        let mut pos = 0;
        loop {
            let before = self.0.total_in();
            self.0
                .compress_vec(&raw[pos..], &mut out, FlushCompress::Sync)
                .expect("compressing into a vector does not fail");
            pos += (self.0.total_in() - before) as usize;
            // A sync flush is complete once the output was not filled to the brim.
            if pos == raw.len() && out.len() < out.capacity() {
                return out;
            }
            out.reserve(out.capacity().max(64));
        }
    }
}

/// The client's header blocks' decompression.
#[derive(Default)]
pub struct Inflater(Option<Decompress>);

impl Inflater {
    fn block(&mut self, input: &[u8]) -> io::Result<Headers> {
        let d = self.0.get_or_insert_with(|| Decompress::new(true));
        let mut raw = Vec::with_capacity(input.len() * 4 + 64);
        let mut pos = 0;
        loop {
            let before = d.total_in();
            let status = d.decompress_vec(&input[pos..], &mut raw, FlushDecompress::Sync);
            pos += (d.total_in() - before) as usize;
            match status {
                Ok(Status::StreamEnd) => break,
                Ok(_) if pos == input.len() && raw.len() < raw.capacity() => break,
                Ok(_) => raw.reserve(raw.capacity().max(64)),
                Err(e) if e.needs_dictionary().is_some() => {
                    d.set_dictionary(dictionary())
                        .map_err(|e| bad(format!("SPDY header dictionary: {e}")))?;
                }
                Err(e) => return Err(bad(format!("SPDY header block: {e}"))),
            }
        }
        parse_block(&raw)
    }
}

fn parse_block(raw: &[u8]) -> io::Result<Headers> {
    let n = u32_at(raw, 0)? as usize;
    let mut at = 4;
    let mut text = || -> io::Result<String> {
        let len = u32_at(raw, at)? as usize;
        let s = raw
            .get(at + 4..at + 4 + len)
            .ok_or_else(|| bad("SPDY header block truncated"))?;
        at += 4 + len;
        Ok(String::from_utf8_lossy(s).into_owned())
    };
    let mut headers = Vec::new();
    for _ in 0..n.min(1024) {
        let name = text()?.to_ascii_lowercase();
        let value = text()?;
        // Several values of one name are joined by NUL.
        for v in value.split('\0') {
            headers.push((name.clone(), v.to_string()));
        }
    }
    Ok(headers)
}

/// Reads one frame.
pub async fn read_frame<R: AsyncRead + Unpin>(r: &mut R, inf: &mut Inflater) -> io::Result<Frame> {
    let mut head = [0u8; 8];
    r.read_exact(&mut head).await?;
    let flags = head[4];
    let len = u32::from_be_bytes([0, head[5], head[6], head[7]]) as usize;
    if len > MAX_FRAME {
        return Err(bad(format!("SPDY frame of {len} bytes")));
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).await?;
    let fin = flags & FLAG_FIN != 0;
    if head[0] & 0x80 == 0 {
        let id = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
        return Ok(Frame::Data {
            id,
            fin,
            data: body,
        });
    }
    let version = u16::from_be_bytes([head[0] & 0x7f, head[1]]);
    if version != VERSION {
        return Err(bad(format!("SPDY version {version}, not 3")));
    }
    let id = || u32_at(&body, 0).map(|v| v & 0x7fff_ffff);
    Ok(match u16::from_be_bytes([head[2], head[3]]) {
        SYN_STREAM => Frame::SynStream {
            id: id()?,
            fin,
            headers: inf.block(body.get(10..).ok_or_else(|| bad("short SYN_STREAM"))?)?,
        },
        SYN_REPLY => Frame::SynReply {
            id: id()?,
            fin,
            headers: inf.block(&body[4.min(body.len())..])?,
        },
        HEADERS => Frame::Headers {
            id: id()?,
            headers: inf.block(&body[4.min(body.len())..])?,
        },
        RST_STREAM => Frame::RstStream {
            id: id()?,
            status: u32_at(&body, 4)?,
        },
        PING => Frame::Ping(u32_at(&body, 0)?),
        GOAWAY => Frame::GoAway {
            last: id()?,
            status: u32_at(&body, 4).unwrap_or(0),
        },
        other => Frame::Other(other),
    })
}

fn control(kind: u16, flags: u8, body: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(8 + body.len());
    f.extend_from_slice(&(0x8000 | VERSION).to_be_bytes());
    f.extend_from_slice(&kind.to_be_bytes());
    f.push(flags);
    f.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
    f.extend_from_slice(body);
    f
}

/// Encodes one frame (`Other` encodes nothing).
pub fn encode(frame: &Frame, def: &mut Deflater) -> Vec<u8> {
    let fin_flag = |fin: bool| if fin { FLAG_FIN } else { 0 };
    match frame {
        Frame::SynStream { id, fin, headers } => {
            let mut b = id.to_be_bytes().to_vec();
            b.extend_from_slice(&[0; 6]);
            b.extend(def.block(headers));
            control(SYN_STREAM, fin_flag(*fin), &b)
        }
        Frame::SynReply { id, fin, headers } => {
            let mut b = id.to_be_bytes().to_vec();
            b.extend(def.block(headers));
            control(SYN_REPLY, fin_flag(*fin), &b)
        }
        Frame::Headers { id, headers } => {
            let mut b = id.to_be_bytes().to_vec();
            b.extend(def.block(headers));
            control(HEADERS, 0, &b)
        }
        Frame::RstStream { id, status } => {
            let mut b = id.to_be_bytes().to_vec();
            b.extend_from_slice(&status.to_be_bytes());
            control(RST_STREAM, 0, &b)
        }
        Frame::Ping(id) => control(PING, 0, &id.to_be_bytes()),
        Frame::GoAway { last, status } => {
            let mut b = last.to_be_bytes().to_vec();
            b.extend_from_slice(&status.to_be_bytes());
            control(GOAWAY, 0, &b)
        }
        Frame::Data { id, fin, data } => {
            let mut f = Vec::with_capacity(8 + data.len());
            f.extend_from_slice(&(id & 0x7fff_ffff).to_be_bytes());
            f.push(fin_flag(*fin));
            f.extend_from_slice(&(data.len() as u32).to_be_bytes()[1..]);
            f.extend_from_slice(data);
            f
        }
        Frame::Other(_) => Vec::new(),
    }
}

/// Drives a SPDY/3.1 connection (after the HTTP upgrade, or inside the WebSocket tunnel).
pub(crate) fn session<S>(io: S) -> Session
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (mut rd, mut wr) = tokio::io::split(io);
    let (out, mut queue) = mpsc::channel::<Out>(64);
    let (streams_tx, streams) = mpsc::channel(16);
    let to_writer = out.clone();
    let reader = tokio::spawn(async move {
        let mut inf = Inflater::default();
        let mut inbound = Inbound::default();
        loop {
            let frame = match read_frame(&mut rd, &mut inf).await {
                Ok(f) => f,
                Err(e) => {
                    if e.kind() != io::ErrorKind::UnexpectedEof {
                        tracing::debug!(error = %e, "SPDY read");
                    }
                    return;
                }
            };
            match frame {
                Frame::SynStream { id, fin, headers } => {
                    let rx = inbound.open(id, !fin);
                    if to_writer.send(Out::Reply(id)).await.is_err() {
                        return;
                    }
                    let tx = Writer::new(id, to_writer.clone());
                    let stream = Stream {
                        id,
                        headers,
                        rx,
                        tx,
                    };
                    // A session that takes no more streams leaves them unanswered.
                    let _ = streams_tx.send(stream).await;
                }
                Frame::Data { id, fin, data } => {
                    inbound.deliver(id, data).await;
                    if fin {
                        inbound.end(id);
                    }
                }
                Frame::RstStream { id, .. } => inbound.end(id),
                Frame::Ping(id) => {
                    let _ = to_writer.send(Out::Pong(id.to_be_bytes().to_vec())).await;
                }
                Frame::GoAway { .. } => return,
                Frame::SynReply { .. } | Frame::Headers { .. } | Frame::Other(_) => {}
            }
        }
    });
    let writer = tokio::spawn(async move {
        let mut def = Deflater::default();
        while let Some(o) = queue.recv().await {
            let frames: Vec<Frame> = match o {
                Out::Data { id, data } => data
                    .chunks(MAX_DATA)
                    .map(|c| Frame::Data {
                        id,
                        fin: false,
                        data: c.to_vec(),
                    })
                    .collect(),
                Out::Fin(id) => vec![Frame::Data {
                    id,
                    fin: true,
                    data: Vec::new(),
                }],
                Out::Reply(id) => vec![Frame::SynReply {
                    id,
                    fin: false,
                    headers: Vec::new(),
                }],
                Out::Pong(p) => {
                    let id = u32_at(&p, 0).unwrap_or_default();
                    vec![Frame::Ping(id)]
                }
                Out::Close => {
                    let bye = encode(&Frame::GoAway { last: 0, status: 0 }, &mut def);
                    let _ = wr.write_all(&bye).await;
                    let _ = wr.flush().await;
                    let _ = wr.shutdown().await;
                    return;
                }
            };
            for f in frames {
                if wr.write_all(&encode(&f, &mut def)).await.is_err() {
                    return;
                }
            }
            if wr.flush().await.is_err() {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_dictionary_is_the_protocols() {
        let d = dictionary();
        assert_eq!(d.len(), 1423);
        // Its Adler-32, which a zlib stream primed with it names in its header (FDICT).
        let (mut a, mut b) = (1u32, 0u32);
        for &x in d {
            a = (a + u32::from(x)) % 65521;
            b = (b + a) % 65521;
        }
        assert_eq!((b << 16) | a, 0xe3c6_a7c2);
        assert_eq!(&d[..11], b"\0\0\0\x07options");
        assert!(d.ends_with(b",*,enq=0."));
    }

    fn h(pairs: &[(&str, &str)]) -> Headers {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[tokio::test]
    async fn frames_round_trip_through_one_compression_context() {
        let frames = vec![
            Frame::SynStream {
                id: 1,
                fin: false,
                headers: h(&[
                    ("streamtype", "error"),
                    ("port", "8080"),
                    ("requestid", "0"),
                ]),
            },
            Frame::SynStream {
                id: 3,
                fin: true,
                headers: h(&[("streamtype", "data"), ("port", "8080"), ("requestid", "0")]),
            },
            Frame::SynReply {
                id: 3,
                fin: false,
                headers: Vec::new(),
            },
            Frame::Data {
                id: 3,
                fin: true,
                data: b"payload".to_vec(),
            },
            Frame::Ping(7),
            Frame::RstStream { id: 1, status: 5 },
            Frame::GoAway { last: 3, status: 0 },
        ];
        let mut def = Deflater::default();
        let mut wire = Vec::new();
        for f in &frames {
            wire.extend(encode(f, &mut def));
        }
        let mut inf = Inflater::default();
        let mut r = &wire[..];
        for f in &frames {
            assert_eq!(&read_frame(&mut r, &mut inf).await.unwrap(), f);
        }
        assert!(r.is_empty());
    }

    #[tokio::test]
    async fn a_header_block_from_zlib_with_the_dictionary_and_joined_values() {
        // What Go's zlib writer with the dictionary produces: a zlib stream whose header names
        // the dictionary; values of one name joined by NUL.
        let mut raw = 1u32.to_be_bytes().to_vec();
        for s in [
            "X-Stream-Protocol-Version",
            "v4.channel.k8s.io\0channel.k8s.io",
        ] {
            raw.extend_from_slice(&(s.len() as u32).to_be_bytes());
            raw.extend_from_slice(s.as_bytes());
        }
        let mut c = Compress::new(Compression::best(), true);
        c.set_dictionary(dictionary()).unwrap();
        let mut block = Vec::with_capacity(256);
        c.compress_vec(&raw, &mut block, FlushCompress::Sync)
            .unwrap();
        assert_eq!(block[0] & 0x0f, 8, "deflate");
        assert_ne!(block[1] & 0x20, 0, "FDICT is set");
        let mut inf = Inflater::default();
        assert_eq!(
            inf.block(&block).unwrap(),
            h(&[
                ("x-stream-protocol-version", "v4.channel.k8s.io"),
                ("x-stream-protocol-version", "channel.k8s.io")
            ])
        );
        assert!(inf.block(b"\xff\xff").is_err(), "garbage is an error");
    }

    #[tokio::test]
    async fn a_session_accepts_streams_echoes_pings_and_ends_them() {
        let (server, client) = tokio::io::duplex(1 << 16);
        let mut s = session(server);
        let (mut crd, mut cwr) = tokio::io::split(client);
        let mut def = Deflater::default();
        let mut send = Vec::new();
        for f in [
            Frame::SynStream {
                id: 1,
                fin: false,
                headers: h(&[("streamtype", "stdin")]),
            },
            Frame::Ping(1),
            Frame::Data {
                id: 1,
                fin: true,
                data: b"in".to_vec(),
            },
        ] {
            send.extend(encode(&f, &mut def));
        }
        cwr.write_all(&send).await.unwrap();
        let mut st = s.streams.recv().await.unwrap();
        assert_eq!(st.header("streamType"), Some("stdin"));
        assert_eq!(&st.rx.recv().await.unwrap()[..], b"in");
        assert!(st.rx.recv().await.is_none(), "FIN ends it");
        st.tx.send(&b"out"[..]).await.unwrap();
        st.tx.finish().await;
        let mut inf = Inflater::default();
        let mut got = Vec::new();
        for _ in 0..4 {
            got.push(read_frame(&mut crd, &mut inf).await.unwrap());
        }
        assert_eq!(
            got,
            vec![
                Frame::SynReply {
                    id: 1,
                    fin: false,
                    headers: Vec::new()
                },
                Frame::Ping(1),
                Frame::Data {
                    id: 1,
                    fin: false,
                    data: b"out".to_vec()
                },
                Frame::Data {
                    id: 1,
                    fin: true,
                    data: Vec::new()
                },
            ]
        );
        let finished = tokio::spawn(s.finish());
        assert_eq!(
            read_frame(&mut crd, &mut inf).await.unwrap(),
            Frame::GoAway { last: 0, status: 0 }
        );
        // The client hangs up; the session is over.
        drop((crd, cwr));
        finished.await.unwrap();
    }
}
