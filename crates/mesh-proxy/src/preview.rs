//! The preview switch as a route in the proxy. When a Pod asks for both the switch and the
//! mesh, the switch writes its mapping (active Service address → preview Service address) and
//! whether the Pod's role says preview to a JSON file instead of the kernel (netfilter would
//! apply only one NAT binding per connection, and the proxy dials endpoints itself). The proxy
//! follows that file: while it is on, an outbound connection to an active address is treated
//! as one to its preview, before the service lookup, so the preview's routes and endpoints
//! apply. The file format is the switch's `dnat_map::MeshMap`; only what is needed is read.

use serde::Deserialize;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

#[derive(Debug, Deserialize)]
struct File {
    on: bool,
    mappings: Vec<Mapping>,
}

#[derive(Debug, Deserialize)]
struct Mapping {
    protocol: String,
    active_addr: SocketAddr,
    preview_addr: SocketAddr,
}

/// The active → preview addresses in effect now (empty while the switch is off).
#[derive(Clone)]
pub struct Preview {
    rx: watch::Receiver<Arc<HashMap<SocketAddr, SocketAddr>>>,
}

impl Preview {
    /// No switch in this Pod: nothing is ever remapped.
    pub fn none() -> Preview {
        Preview {
            rx: watch::channel(Arc::default()).1,
        }
    }

    /// Where a connection to `dst` goes.
    pub fn resolve(&self, dst: SocketAddr) -> SocketAddr {
        self.rx.borrow().get(&dst).copied().unwrap_or(dst)
    }

    /// Whether the switch is on (some address is remapped).
    pub fn active(&self) -> bool {
        !self.rx.borrow().is_empty()
    }
}

/// Parses the switch's file: the TCP mappings when `on`, else none.
pub fn parse(text: &[u8]) -> Result<HashMap<SocketAddr, SocketAddr>, String> {
    let f: File = serde_json::from_slice(text).map_err(|e| e.to_string())?;
    Ok(if f.on {
        f.mappings
            .into_iter()
            .filter(|m| m.protocol.eq_ignore_ascii_case("tcp"))
            .map(|m| (m.active_addr, m.preview_addr))
            .collect()
    } else {
        HashMap::new()
    })
}

/// Follows the file at `path`, checked every `poll`: a missing or unreadable file means off
/// (as the switch's jump is off until its watcher has read the role), a file that does not
/// parse keeps the last state.
pub fn follow(path: PathBuf, poll: Duration) -> (Preview, impl std::future::Future<Output = ()>) {
    // What was read now is what the task compares with: a change between the two must not
    // be missed.
    let mut last = std::fs::read(&path).ok();
    let (tx, rx) = watch::channel(Arc::new(
        last.as_deref()
            .and_then(|t| parse(t).ok())
            .unwrap_or_default(),
    ));
    let task = async move {
        let mut tick = tokio::time::interval(poll);
        loop {
            tick.tick().await;
            let now = tokio::fs::read(&path).await.ok();
            if now == last {
                continue;
            }
            last = now;
            match last.as_deref().map(parse) {
                None => {
                    tx.send_replace(Arc::default());
                }
                Some(Ok(m)) => {
                    tracing::info!(path = %path.display(), remapped = m.len(), "preview switch map reloaded");
                    tx.send_replace(Arc::new(m));
                }
                Some(Err(e)) => {
                    tracing::warn!(path = %path.display(), error = %e, "preview switch map refused; keeping the previous one")
                }
            }
        }
    };
    (Preview { rx }, task)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAP: &str = r#"{"on": true, "namespace": "shop", "mappings": [
        {"active": "orders", "preview": "orders-preview", "protocol": "tcp",
         "active_addr": "10.96.0.5:80", "preview_addr": "10.96.0.6:8080"},
        {"active": "dns", "preview": "dns-preview", "protocol": "udp",
         "active_addr": "10.96.0.7:53", "preview_addr": "10.96.0.8:53"}]}"#;

    #[test]
    fn on_maps_tcp_only_and_off_maps_nothing() {
        let m = parse(MAP.as_bytes()).unwrap();
        assert_eq!(
            m.get(&"10.96.0.5:80".parse().unwrap()),
            Some(&"10.96.0.6:8080".parse().unwrap())
        );
        assert_eq!(m.len(), 1);
        let off = MAP.replace("\"on\": true", "\"on\": false");
        assert!(parse(off.as_bytes()).unwrap().is_empty());
        assert!(parse(b"nope").is_err());
    }

    #[tokio::test]
    async fn follows_the_file() {
        let dir = std::env::temp_dir().join(format!("gw-preview-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("map.json");
        let _ = std::fs::remove_file(&path);
        let (p, task) = follow(path.clone(), Duration::from_millis(10));
        let task = tokio::spawn(task);
        let active: SocketAddr = "10.96.0.5:80".parse().unwrap();
        assert_eq!(p.resolve(active), active);
        std::fs::write(&path, MAP).unwrap();
        let mut rx = p.rx.clone();
        rx.wait_for(|m| !m.is_empty()).await.unwrap();
        assert_eq!(p.resolve(active), "10.96.0.6:8080".parse().unwrap());
        std::fs::write(&path, "garbage").unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(p.active(), "a bad file keeps the last state");
        std::fs::write(&path, MAP.replace("\"on\": true", "\"on\": false")).unwrap();
        rx.wait_for(|m| m.is_empty()).await.unwrap();
        assert_eq!(p.resolve(active), active);
        task.abort();
        let _ = std::fs::remove_dir_all(&dir);
    }
}
