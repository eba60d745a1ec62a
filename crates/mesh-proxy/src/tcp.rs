//! Opaque TCP: bytes pass both ways untouched, to the original destination, until either side
//! closes or nothing moves for the idle timeout.

use crate::metrics::{Labels, Metrics};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Copies both ways; returns (client→server, server→client) byte counts.
pub async fn relay<A, B>(client: A, server: B, idle: Duration) -> std::io::Result<(u64, u64)>
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let (mut cr, mut cw) = tokio::io::split(client);
    let (mut sr, mut sw) = tokio::io::split(server);
    let last = std::sync::Mutex::new(tokio::time::Instant::now());
    let touch = || *last.lock().unwrap_or_else(|e| e.into_inner()) = tokio::time::Instant::now();
    let up = async {
        let mut n = 0u64;
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let k = cr.read(&mut buf).await?;
            if k == 0 {
                sw.shutdown().await.ok();
                return Ok::<u64, std::io::Error>(n);
            }
            sw.write_all(&buf[..k]).await?;
            n += k as u64;
            touch();
        }
    };
    let down = async {
        let mut n = 0u64;
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let k = sr.read(&mut buf).await?;
            if k == 0 {
                cw.shutdown().await.ok();
                return Ok::<u64, std::io::Error>(n);
            }
            cw.write_all(&buf[..k]).await?;
            n += k as u64;
            touch();
        }
    };
    let watchdog = async {
        loop {
            let at = *last.lock().unwrap_or_else(|e| e.into_inner());
            tokio::time::sleep_until(at + idle).await;
            let now_last = *last.lock().unwrap_or_else(|e| e.into_inner());
            if now_last == at {
                return;
            }
        }
    };
    tokio::select! {
        r = async { tokio::try_join!(up, down) } => r,
        _ = watchdog => Err(std::io::Error::new(std::io::ErrorKind::TimedOut, format!("idle for {idle:?}"))),
    }
}

/// Counts relayed bytes.
pub fn record(metrics: &Metrics, direction: &'static str, up: u64, down: u64) {
    let l = |side: &str| -> Labels { vec![("direction", direction.into()), ("side", side.into())] };
    metrics
        .tcp_bytes
        .get_or_create(&l("from_client"))
        .inc_by(up);
    metrics
        .tcp_bytes
        .get_or_create(&l("from_server"))
        .inc_by(down);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn relays_both_ways_and_half_closes() {
        let (mut a, a2) = tokio::io::duplex(1024);
        let (b2, mut b) = tokio::io::duplex(1024);
        let t = tokio::spawn(relay(a2, b2, Duration::from_secs(60)));
        a.write_all(b"hello").await.unwrap();
        a.shutdown().await.unwrap();
        let mut got = Vec::new();
        b.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"hello");
        b.write_all(b"back").await.unwrap();
        b.shutdown().await.unwrap();
        let mut got = Vec::new();
        a.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"back");
        assert_eq!(t.await.unwrap().unwrap(), (5, 4));
    }

    #[tokio::test(start_paused = true)]
    async fn idle_connections_are_closed() {
        let (_a, a2) = tokio::io::duplex(1024);
        let (b2, _b) = tokio::io::duplex(1024);
        let e = relay(a2, b2, Duration::from_secs(300)).await.unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::TimedOut);
    }
}
