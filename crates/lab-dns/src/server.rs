//! The DNS server: hickory-server's UDP and TCP front end with one request handler that answers
//! from the current [`Zone`] and forwards every other name to the configured upstream (or, with
//! none, answers REFUSED: the lab never asks a resolver it was not given).
//!
//! The zone is swapped whole ([`ZoneHandle::set`]) whenever the watches change it; a query sees
//! one version from start to end.

use crate::records::{Answer, QType, Rdata, Soa, TTL, Zone};
use hickory_server::Server;
use hickory_server::net::runtime::Time;
use hickory_server::proto::op::{Edns, Message, Metadata, ResponseCode};
use hickory_server::proto::rr::rdata::{A, AAAA, CNAME, PTR, SOA, SRV};
use hickory_server::proto::rr::{Name, RData, Record, RecordType};
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// How long a forwarded query waits for the upstream.
pub const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(2);

/// The zone a running server answers from; cheap to clone, shared with the watch loop.
#[derive(Clone, Default)]
pub struct ZoneHandle(Arc<RwLock<Arc<Zone>>>);

impl ZoneHandle {
    pub fn new(zone: Zone) -> ZoneHandle {
        ZoneHandle(Arc::new(RwLock::new(Arc::new(zone))))
    }

    /// Replaces the zone (queries in flight finish on the one they started with).
    pub fn set(&self, zone: Zone) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(zone);
    }

    pub fn get(&self) -> Arc<Zone> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// Where outside names go.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Upstream {
    /// Nowhere: outside names are REFUSED.
    #[default]
    None,
    /// A DNS server (UDP, then TCP when the answer is truncated).
    Forward(SocketAddr),
}

struct Handler {
    zone: ZoneHandle,
    upstream: Upstream,
}

fn qtype(t: RecordType) -> QType {
    match t {
        RecordType::A => QType::A,
        RecordType::AAAA => QType::Aaaa,
        RecordType::SRV => QType::Srv,
        RecordType::PTR => QType::Ptr,
        RecordType::CNAME => QType::Cname,
        RecordType::SOA => QType::Soa,
        RecordType::ANY => QType::Any,
        other => QType::Other(u16::from(other)),
    }
}

fn name(n: &str) -> Option<Name> {
    Name::from_ascii(format!("{}.", n.trim_end_matches('.'))).ok()
}

fn record(owner: &str, rd: &Rdata) -> Option<Record> {
    let data = match rd {
        Rdata::A(a) => RData::A(A(*a)),
        Rdata::Aaaa(a) => RData::AAAA(AAAA(*a)),
        Rdata::Srv {
            priority,
            weight,
            port,
            target,
        } => RData::SRV(SRV::new(*priority, *weight, *port, name(target)?)),
        Rdata::Ptr(t) => RData::PTR(PTR(name(t)?)),
        Rdata::Cname(t) => RData::CNAME(CNAME(name(t)?)),
    };
    Some(Record::from_rdata(name(owner)?, TTL, data))
}

fn soa_record(soa: &Soa) -> Option<Record> {
    let data = SOA::new(
        name(&soa.mname)?,
        name(&soa.rname)?,
        soa.serial,
        soa.refresh,
        soa.retry,
        soa.expire,
        soa.minimum,
    );
    Some(Record::from_rdata(
        name(&soa.zone)?,
        soa.minimum,
        RData::SOA(data),
    ))
}

fn failed(request: &Request, code: ResponseCode) -> ResponseInfo {
    let mut metadata = Metadata::response_from_request(&request.metadata);
    metadata.response_code = code;
    hickory_server::proto::op::Header {
        metadata,
        counts: Default::default(),
    }
    .into()
}

/// Sends a query to the upstream over UDP (TCP when the reply is truncated).
async fn forward(upstream: SocketAddr, query: &[u8]) -> std::io::Result<Vec<u8>> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let bind: SocketAddr = if upstream.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let sock = tokio::net::UdpSocket::bind(bind).await?;
    sock.connect(upstream).await?;
    sock.send(query).await?;
    let mut buf = vec![0u8; 65535];
    let n = tokio::time::timeout(UPSTREAM_TIMEOUT, sock.recv(&mut buf))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "upstream timed out"))??;
    buf.truncate(n);
    // The TC bit: retry over TCP for the whole answer.
    if buf.len() > 2 && buf[2] & 0x02 != 0 {
        let fut = async {
            let mut tcp = tokio::net::TcpStream::connect(upstream).await?;
            let len = u16::try_from(query.len()).unwrap_or(u16::MAX);
            tcp.write_all(&len.to_be_bytes()).await?;
            tcp.write_all(query).await?;
            let mut l = [0u8; 2];
            tcp.read_exact(&mut l).await?;
            let mut out = vec![0u8; usize::from(u16::from_be_bytes(l))];
            tcp.read_exact(&mut out).await?;
            Ok::<_, std::io::Error>(out)
        };
        return tokio::time::timeout(UPSTREAM_TIMEOUT, fut)
            .await
            .map_err(|_| {
                std::io::Error::new(std::io::ErrorKind::TimedOut, "upstream timed out")
            })?;
    }
    Ok(buf)
}

#[async_trait::async_trait]
impl RequestHandler for Handler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        mut response_handle: R,
    ) -> ResponseInfo {
        let edns = request.edns.as_ref().map(|e| {
            let mut out = Edns::new();
            out.set_max_payload(e.max_payload().max(512));
            out
        });
        let builder = MessageResponseBuilder::new(&request.queries, edns.as_ref());
        let info = match request.request_info() {
            Ok(i) => i,
            Err(_) => {
                let r = builder.error_msg(&request.metadata, ResponseCode::FormErr);
                return response_handle
                    .send_response(r)
                    .await
                    .unwrap_or_else(|_| failed(request, ResponseCode::FormErr));
            }
        };
        let qname = info.query.name().to_string();
        let zone = self.zone.get();
        let mut metadata = Metadata::response_from_request(&request.metadata);
        metadata.authoritative = true;
        metadata.recursion_available = !matches!(self.upstream, Upstream::None);
        let mut answers = Vec::new();
        let mut additionals = Vec::new();
        let mut soa = Vec::new();
        match zone.lookup(&qname, qtype(info.query.query_type())) {
            Answer::Records {
                answers: a,
                additionals: d,
            } => {
                answers.extend(a.iter().filter_map(|(n, r)| record(n, r)));
                additionals.extend(d.iter().filter_map(|(n, r)| record(n, r)));
            }
            Answer::NoData(s) => {
                // A question for the apex's SOA is answered with it.
                if info.query.query_type() == RecordType::SOA
                    && qname.trim_end_matches('.').eq_ignore_ascii_case(&s.zone)
                {
                    answers.extend(soa_record(&s));
                } else {
                    soa.extend(soa_record(&s));
                }
            }
            Answer::NxDomain(s) => {
                metadata.response_code = ResponseCode::NXDomain;
                soa.extend(soa_record(&s));
            }
            Answer::NotOurs => {
                return self.not_ours(request, builder, response_handle).await;
            }
        }
        let r = builder.build(
            metadata,
            answers.iter(),
            std::iter::empty(),
            soa.iter(),
            additionals.iter(),
        );
        match response_handle.send_response(r).await {
            Ok(i) => i,
            Err(e) => {
                tracing::debug!(error = %e, "sending a DNS response");
                failed(request, ResponseCode::ServFail)
            }
        }
    }
}

impl Handler {
    async fn not_ours<R: ResponseHandler>(
        &self,
        request: &Request,
        builder: MessageResponseBuilder<'_>,
        mut response_handle: R,
    ) -> ResponseInfo {
        let Upstream::Forward(up) = self.upstream else {
            let r = builder.error_msg(&request.metadata, ResponseCode::Refused);
            return response_handle
                .send_response(r)
                .await
                .unwrap_or_else(|_| failed(request, ResponseCode::Refused));
        };
        let reply = forward(up, request.as_slice())
            .await
            .map_err(|e| e.to_string())
            .and_then(|b| Message::from_vec(&b).map_err(|e| e.to_string()));
        let msg = match reply {
            Ok(m) => m,
            Err(e) => {
                tracing::debug!(upstream = %up, error = %e, "forwarding");
                let r = builder.error_msg(&request.metadata, ResponseCode::ServFail);
                return response_handle
                    .send_response(r)
                    .await
                    .unwrap_or_else(|_| failed(request, ResponseCode::ServFail));
            }
        };
        let mut metadata = Metadata::response_from_request(&request.metadata);
        metadata.response_code = msg.metadata.response_code;
        metadata.recursion_available = true;
        let r = builder.build(
            metadata,
            msg.answers.iter(),
            msg.authorities.iter(),
            std::iter::empty(),
            msg.additionals.iter(),
        );
        response_handle
            .send_response(r)
            .await
            .unwrap_or_else(|_| failed(request, ResponseCode::ServFail))
    }
}

/// A running DNS server; dropping it stops it.
pub struct DnsServer {
    server: Server<Handler>,
}

/// A UDP socket and a TCP listener on one free loopback port, as a DNS server on a port of its
/// own wants them (tests, benches). The port is the UDP socket's, picked by the kernel; its TCP
/// twin may already be taken (by a connection of a parallel test), and then another port is
/// tried.
pub fn loopback_pair() -> std::io::Result<(std::net::UdpSocket, std::net::TcpListener)> {
    let mut tries = 0;
    loop {
        let udp = std::net::UdpSocket::bind("127.0.0.1:0")?;
        match std::net::TcpListener::bind(udp.local_addr()?) {
            Ok(tcp) => return Ok((udp, tcp)),
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && tries < 20 => tries += 1,
            Err(e) => return Err(e),
        }
    }
}

impl DnsServer {
    /// Serves on already-bound sockets (the caller binds them, e.g. inside a network namespace).
    /// Must be called within a tokio runtime.
    pub fn start(
        udp: Vec<std::net::UdpSocket>,
        tcp: Vec<std::net::TcpListener>,
        zone: ZoneHandle,
        upstream: Upstream,
    ) -> std::io::Result<DnsServer> {
        let mut server = Server::new(Handler { zone, upstream });
        for s in udp {
            s.set_nonblocking(true)?;
            server.register_socket(tokio::net::UdpSocket::from_std(s)?);
        }
        for l in tcp {
            l.set_nonblocking(true)?;
            server.register_listener(
                tokio::net::TcpListener::from_std(l)?,
                Duration::from_secs(5),
                64,
            );
        }
        Ok(DnsServer { server })
    }

    /// Stops serving and waits for the sockets' tasks to end.
    pub async fn shutdown(mut self) {
        let _ = self.server.shutdown_gracefully().await;
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        self.server.shutdown_token().cancel();
    }
}
