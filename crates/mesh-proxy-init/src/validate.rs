//! Validator mode: prove, before the app starts, that an outbound TCP connection really lands
//! on the proxy's outbound port (the way linkerd2-proxy-init's network validator does).
//!
//! It listens on the outbound port in place of the proxy, connects to an address that no
//! network routes (TEST-NET-1 `192.0.2.1`, and `2001:db8::1` with IPv6), sends a random token
//! and expects to accept that very connection with that original destination and token. If
//! the rules are missing, the connection goes nowhere and the validator fails with the reason.

use std::io::{Read, Write};
use std::net::{Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum ValidateError {
    #[error(
        "cannot listen on the outbound port [::]:{port} in place of the proxy: {source} (is the proxy already running, or another process on that port?)"
    )]
    Listen {
        port: u16,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "a connection to {target} was not redirected to the outbound port {port}: {reason} (are proxy-init's rules in place in this network namespace, and does this process run as a uid other than the proxy's?)"
    )]
    NotRedirected {
        target: SocketAddr,
        port: u16,
        reason: String,
    },
}

/// Addresses nothing routes (RFC 5737, RFC 3849).
pub fn probe_targets(ipv6: bool) -> Vec<SocketAddr> {
    let port = 20000 + rand::random::<u16>() % 20000;
    let mut v = vec![SocketAddr::from(([192, 0, 2, 1], port))];
    if ipv6 {
        v.push(SocketAddr::from((
            Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1),
            port,
        )));
    }
    v
}

/// Checks redirection for each target; returns the original destinations seen.
pub fn validate(
    outbound_port: u16,
    ipv6: bool,
    timeout: Duration,
) -> Result<Vec<SocketAddr>, ValidateError> {
    let listener = TcpListener::bind((Ipv6Addr::UNSPECIFIED, outbound_port)).map_err(|source| {
        ValidateError::Listen {
            port: outbound_port,
            source,
        }
    })?;
    let mut seen = Vec::new();
    for target in probe_targets(ipv6) {
        let fail = |reason: String| ValidateError::NotRedirected {
            target,
            port: outbound_port,
            reason,
        };
        let token = format!("ghostwire-validate-{:016x}\n", rand::random::<u64>());
        let mut client = TcpStream::connect_timeout(&target, timeout)
            .map_err(|e| fail(format!("connect: {e}")))?;
        client
            .write_all(token.as_bytes())
            .map_err(|e| fail(format!("write: {e}")))?;
        let (mut server, _) = accept_within(&listener, timeout)
            .map_err(|e| fail(format!("nothing arrived on the outbound port: {e}")))?;
        let local = server
            .local_addr()
            .map_err(|e| fail(format!("local address: {e}")))?;
        let orig = mesh_orig_dst::original_dst(&server, local).map_err(|e| {
            fail(format!(
                "no original destination on the accepted connection: {e}"
            ))
        })?;
        if orig != target {
            return Err(fail(format!(
                "the accepted connection was going to {orig}, not to the probe"
            )));
        }
        server
            .set_read_timeout(Some(timeout))
            .map_err(|e| fail(e.to_string()))?;
        let mut got = vec![0; token.len()];
        server
            .read_exact(&mut got)
            .map_err(|e| fail(format!("reading the token: {e}")))?;
        if got != token.as_bytes() {
            return Err(fail("the accepted connection carried another token".into()));
        }
        tracing::info!(%target, port = outbound_port, "outbound connection redirected to the proxy port");
        seen.push(orig);
    }
    Ok(seen)
}

fn accept_within(l: &TcpListener, timeout: Duration) -> std::io::Result<(TcpStream, SocketAddr)> {
    l.set_nonblocking(true)?;
    let deadline = Instant::now() + timeout;
    loop {
        match l.accept() {
            Ok((s, a)) => {
                s.set_nonblocking(false)?;
                return Ok((s, a));
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if Instant::now() >= deadline {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!("no connection within {timeout:?}"),
                    ));
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => return Err(e),
        }
    }
}
