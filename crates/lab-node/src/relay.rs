//! How pods reach the API: the `kubernetes` Service (10.96.0.1:443) has one endpoint, the node's
//! bridge address at port 6443, where this relay accepts (its socket is bound inside the node's
//! namespace) and forwards each connection to the API server on the host's loopback. TLS passes
//! through untouched, so pods verify the API's certificate against the CA in their service-account
//! volume exactly as in a cluster. Nothing listens on, or connects to, the host's real interfaces.

use std::net::SocketAddr;

/// Binds `addr` (the node's bridge address) in the node namespace and relays to `api` until the
/// task is dropped.
pub async fn run(node: netns::Netns, addr: SocketAddr, api: SocketAddr) -> std::io::Result<()> {
    let std_listener = node
        .run(move || -> std::io::Result<std::net::TcpListener> {
            let l = std::net::TcpListener::bind(addr)?;
            l.set_nonblocking(true)?;
            Ok(l)
        })
        .map_err(std::io::Error::other)??;
    let listener = tokio::net::TcpListener::from_std(std_listener)?;
    loop {
        let (mut inbound, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "API relay accept");
                tokio::task::yield_now().await;
                continue;
            }
        };
        tokio::spawn(async move {
            match tokio::net::TcpStream::connect(api).await {
                Ok(mut outbound) => {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
                Err(e) => tracing::warn!(%peer, %api, error = %e, "API relay cannot reach the API"),
            }
        });
    }
}
