//! One A query over UDP: how client init resolves GATEWAY_NAME at the cluster DNS. The answer
//! is parsed as DNS, so a timeout or an error is an error and never taken for an address
//! (pod-gateway parsed `dig +short` output, so `;; connection timed out` became the "address").

use hickory_proto::op::{Message, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

/// Asks `server` (port 53) for the A records of `name`; `Ok(None)` when it has none.
pub fn query_a(name: &str, server: IpAddr, timeout: Duration) -> Result<Option<Ipv4Addr>, String> {
    query_a_at(name, SocketAddr::new(server, 53), timeout)
}

pub fn query_a_at(
    name: &str,
    server: SocketAddr,
    timeout: Duration,
) -> Result<Option<Ipv4Addr>, String> {
    let qname = Name::from_ascii(name).map_err(|e| format!("not a DNS name: {e}"))?;
    let mut q = Message::query();
    q.metadata.recursion_desired = true;
    q.add_query(Query::query(qname, RecordType::A));
    let bytes = q.to_vec().map_err(|e| e.to_string())?;
    let any: SocketAddr = if server.is_ipv4() {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let sock = UdpSocket::bind(any).map_err(|e| e.to_string())?;
    sock.connect(server).map_err(|e| e.to_string())?;
    let deadline = Instant::now() + timeout;
    let mut buf = [0u8; 4096];
    for attempt in 0..2 {
        sock.send(&bytes).map_err(|e| e.to_string())?;
        let until = if attempt == 0 {
            Instant::now() + timeout / 2
        } else {
            deadline
        };
        while let Some(left) = until
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
        {
            sock.set_read_timeout(Some(left))
                .map_err(|e| e.to_string())?;
            let n = match sock.recv(&mut buf) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                    return Err("connection refused (no DNS server there)".into());
                }
                Err(_) => break,
            };
            let Ok(r) = Message::from_vec(&buf[..n]) else {
                continue;
            };
            if r.metadata.id != q.metadata.id {
                continue;
            }
            return match r.metadata.response_code {
                ResponseCode::NoError => Ok(r.answers.iter().find_map(|rec| match &rec.data {
                    RData::A(a) => Some(a.0),
                    _ => None,
                })),
                ResponseCode::NXDomain => Ok(None),
                code => Err(format!("the server answered {code}")),
            };
        }
    }
    Err(format!("no answer within {timeout:?}"))
}
