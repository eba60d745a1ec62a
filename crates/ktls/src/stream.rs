//! The kernel data path for a tokio socket: the handshake (rustls' unbuffered API, reading
//! whole TLS records only, so that when the keys go to the kernel not one byte of the peer's
//! later records sits in userspace), the hand-off, and the stream the kernel then encrypts.
//!
//! Order on a connection: [`probe`](crate::Metrics::probe) the socket first (`TCP_ULP "tls"`,
//! which changes nothing until keys are installed); only when the kernel took the ULP run
//! [`handshake`] and [`hand_off`]. A kernel without the module is told apart before any TLS
//! byte moves, so the caller's ordinary userspace TLS runs on an untouched socket.
//!
//! After the hand-off, what the kernel does not do, [`KernelStream`] does on reads:
//! - a TLS 1.3 `NewSessionTicket` (a client gets them right after the handshake): handed to
//!   rustls' kernel connection, which stores it for resumption;
//! - a `KeyUpdate` from the peer: the new receive keys are derived by rustls and installed
//!   (`TLS_RX`); when the peer also asks us to update ours, our `key_update` message would
//!   have to be sent as a handshake record (`TLS_SET_RECORD_TYPE` in a control message),
//!   which the safe socket API used here (nix) cannot send, so the connection is closed with
//!   an error instead of going on with keys the peer no longer expects;
//! - an alert: `close_notify` reads as the end of the stream, any other is an error.
//!
//! Writes go to the socket as they are (the kernel seals them as application data); a
//! shutdown is a TCP shutdown without `close_notify` (same reason as above).

use std::io;
use std::io::IoSliceMut;
use std::os::fd::{AsFd, AsRawFd};
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use nix::sys::socket::{ControlMessageOwned, MsgFlags, TlsGetRecordType, recvmsg};
use rustls::client::UnbufferedClientConnection;
use rustls::server::UnbufferedServerConnection;
use rustls::unbuffered::{ConnectionState, EncodeError, UnbufferedStatus};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, Interest, ReadBuf};
use tokio::net::TcpStream;

use crate::{IntoKernel, KtlsError, Metrics, Session, Tickets};

/// A TLS record's header, and the largest ciphertext a record may carry (2^14 + 256).
const HEADER: usize = 5;
const MAX_CIPHERTEXT: usize = 16384 + 256;

/// rustls' unbuffered connections, client and server alike.
pub trait Unbuffered: IntoKernel {
    fn process<'c, 'i>(
        &'c mut self,
        incoming: &'i mut [u8],
    ) -> UnbufferedStatus<'c, 'i, Self::Data>;
}

impl Unbuffered for UnbufferedClientConnection {
    fn process<'c, 'i>(
        &'c mut self,
        incoming: &'i mut [u8],
    ) -> UnbufferedStatus<'c, 'i, Self::Data> {
        self.process_tls_records(incoming)
    }
}

impl Unbuffered for UnbufferedServerConnection {
    fn process<'c, 'i>(
        &'c mut self,
        incoming: &'i mut [u8],
    ) -> UnbufferedStatus<'c, 'i, Self::Data> {
        self.process_tls_records(incoming)
    }
}

fn tls_error(e: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e.to_string())
}

/// The length of the record whose header starts at `at`.
fn record_len(buf: &[u8], at: usize) -> io::Result<usize> {
    let len = u16::from_be_bytes([buf[at + 3], buf[at + 4]]) as usize;
    if len > MAX_CIPHERTEXT {
        return Err(tls_error(format!("a TLS record of {len} bytes")));
    }
    Ok(len)
}

/// Reads from `tcp` up to the end of the next record: completes the last, partial record of
/// `incoming`, or reads one whole new record. Never reads past a record's end.
async fn read_record(tcp: &mut TcpStream, incoming: &mut Vec<u8>) -> io::Result<()> {
    let mut at = 0;
    while incoming.len() >= at + HEADER {
        let end = at + HEADER + record_len(incoming, at)?;
        if end > incoming.len() {
            break;
        }
        at = end;
    }
    if incoming.len() < at + HEADER {
        let have = incoming.len();
        incoming.resize(at + HEADER, 0);
        tcp.read_exact(&mut incoming[have..]).await?;
    }
    let end = at + HEADER + record_len(incoming, at)?;
    let have = incoming.len();
    incoming.resize(end, 0);
    tcp.read_exact(&mut incoming[have..]).await?;
    Ok(())
}

/// Runs the handshake of `conn` on `tcp` to its end. `incoming`: bytes of the peer already
/// read from the socket (e.g. a ClientHello read to look at its ALPN); they must end at a
/// record boundary or inside the record the handshake needs next.
pub async fn handshake<C: Unbuffered>(
    tcp: &mut TcpStream,
    conn: &mut C,
    mut incoming: Vec<u8>,
) -> io::Result<()> {
    enum Next {
        Again,
        Send,
        Read,
        Done,
    }
    let mut outgoing = Vec::new();
    loop {
        let status = conn.process(&mut incoming);
        let discard = status.discard;
        let next = match status.state.map_err(tls_error)? {
            ConnectionState::EncodeTlsData(mut e) => {
                let at = outgoing.len();
                outgoing.resize(at + MAX_CIPHERTEXT + HEADER, 0);
                let n = match e.encode(&mut outgoing[at..]) {
                    Ok(n) => n,
                    Err(EncodeError::InsufficientSize(s)) => {
                        outgoing.resize(at + s.required_size, 0);
                        e.encode(&mut outgoing[at..]).map_err(tls_error)?
                    }
                    Err(other) => return Err(tls_error(other)),
                };
                outgoing.truncate(at + n);
                Next::Again
            }
            ConnectionState::TransmitTlsData(t) => {
                t.done();
                Next::Send
            }
            ConnectionState::BlockedHandshake => Next::Read,
            ConnectionState::WriteTraffic(_) => Next::Done,
            ConnectionState::PeerClosed | ConnectionState::Closed => {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            _ => return Err(tls_error("application data during the handshake")),
        };
        incoming.drain(..discard);
        match next {
            Next::Again => {}
            Next::Send => {
                tcp.write_all(&outgoing).await?;
                outgoing.clear();
            }
            Next::Read => read_record(tcp, &mut incoming).await?,
            Next::Done => {
                if !outgoing.is_empty() {
                    tcp.write_all(&outgoing).await?;
                }
                if !incoming.is_empty() {
                    return Err(tls_error("bytes the handshake did not consume"));
                }
                return Ok(());
            }
        }
    }
}

/// Gives the finished session to the kernel on `tcp`, whose ULP [`Metrics::probe`] attached;
/// counts `kernel` or `failed`. After a failure the connection can only be closed.
pub fn hand_off<C: IntoKernel>(
    tcp: TcpStream,
    conn: C,
    metrics: &Metrics,
) -> Result<KernelStream<C::Data>, KtlsError> {
    let session = crate::install(&tcp, conn, metrics)?;
    Ok(KernelStream {
        tcp,
        session,
        buf: vec![0; MAX_CIPHERTEXT],
        pos: 0,
        len: 0,
        eof: false,
    })
}

/// A TCP stream whose records the kernel seals and opens; see the module docs for what it
/// does with the records that are not application data.
pub struct KernelStream<D> {
    tcp: TcpStream,
    session: Session<D>,
    buf: Vec<u8>,
    pos: usize,
    len: usize,
    eof: bool,
}

/// One `recvmsg`: the bytes and the record type the kernel reports (none: application data
/// of a socket whose data records need no type).
fn recv_record(sock: &TcpStream, buf: &mut [u8]) -> io::Result<(usize, Option<TlsGetRecordType>)> {
    let mut iov = [IoSliceMut::new(buf)];
    let mut cmsg = nix::cmsg_space!(u8);
    let msg = recvmsg::<()>(
        sock.as_fd().as_raw_fd(),
        &mut iov,
        Some(cmsg.as_mut_slice()),
        MsgFlags::MSG_DONTWAIT,
    )?;
    let kind = msg.cmsgs()?.find_map(|c| match c {
        ControlMessageOwned::TlsGetRecordType(t) => Some(t),
        _ => None,
    });
    Ok((msg.bytes, kind))
}

impl<D: Tickets> KernelStream<D> {
    /// Handles a record that is not application data; `Ok(true)`: the stream ended.
    fn control(&mut self, kind: TlsGetRecordType, n: usize) -> io::Result<bool> {
        match kind {
            TlsGetRecordType::Handshake => {
                let record = self.buf[..n].to_vec();
                for action in self.session.on_handshake(&record).map_err(tls_error)? {
                    if let crate::Action::RekeyBoth { .. } = action {
                        return Err(tls_error(
                            "the peer asked for a key update of our keys; kTLS here cannot send one",
                        ));
                    }
                    self.session.apply(&self.tcp, &action).map_err(tls_error)?;
                }
                Ok(false)
            }
            // close_notify (level warning or fatal: 1 or 2, description 0).
            TlsGetRecordType::Alert if n == 2 && self.buf[1] == 0 => Ok(true),
            TlsGetRecordType::Alert if n == 2 => Err(tls_error(format!(
                "TLS alert {} from the peer",
                self.buf[1]
            ))),
            other => Err(tls_error(format!("unexpected TLS record {other:?}"))),
        }
    }
}

impl<D: Tickets + Unpin> AsyncRead for KernelStream<D> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let me = &mut *self;
        loop {
            if me.pos < me.len {
                let n = out.remaining().min(me.len - me.pos);
                out.put_slice(&me.buf[me.pos..me.pos + n]);
                me.pos += n;
                return Poll::Ready(Ok(()));
            }
            if me.eof {
                return Poll::Ready(Ok(()));
            }
            ready!(me.tcp.poll_read_ready(cx))?;
            let tcp = &me.tcp;
            let buf = &mut me.buf;
            match tcp.try_io(Interest::READABLE, || recv_record(tcp, buf)) {
                Ok((0, _)) => me.eof = true,
                Ok((n, None | Some(TlsGetRecordType::ApplicationData))) => {
                    me.pos = 0;
                    me.len = n;
                }
                Ok((n, Some(kind))) => me.eof = me.control(kind, n)?,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl<D: Unpin> AsyncWrite for KernelStream<D> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.tcp).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_shutdown(cx)
    }
}
