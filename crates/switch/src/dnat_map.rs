//! The audit map: one readable line per mapping, written atomically.

use crate::config::Settings;
use crate::pairing::{Mapping, Plan};
use serde::Serialize;
use std::path::Path;

/// The map's permission bits: readable by the Pod's other containers (the proxy reads it in
/// mesh mode), writable only by init.
pub const MODE: u32 = 0o644;

fn fqdn(name: &str, s: &Settings) -> String {
    format!("{name}.{}{}", s.namespace, s.dns_suffix)
}

fn line(m: &Mapping, s: &Settings) -> String {
    format!(
        "{} {} port={} {} -> {} {}",
        m.protocol,
        fqdn(&m.active, s),
        m.port_name.as_deref().unwrap_or("-"),
        m.active_addr,
        fqdn(&m.preview, s),
        m.preview_addr
    )
}

/// The map file's text: a header, then one line per mapping in a stable order.
pub fn render(plan: &Plan, s: &Settings) -> String {
    let mut out = format!(
        "# ghostwire dnat map: namespace={} chain={} mappings={}\n# protocol active port=NAME active-address -> preview preview-address\n",
        s.namespace,
        s.nat_chain,
        plan.mappings.len()
    );
    for m in &plan.mappings {
        out.push_str(&line(m, s));
        out.push('\n');
    }
    out
}

#[derive(Serialize)]
struct JsonMap<'a> {
    namespace: &'a str,
    chain: &'a str,
    mappings: &'a [Mapping],
    skipped: &'a [crate::pairing::Skipped],
}

/// The same content as JSON, for `--output json`.
pub fn render_json(plan: &Plan, s: &Settings) -> String {
    serde_json::to_string_pretty(&JsonMap {
        namespace: &s.namespace,
        chain: &s.nat_chain,
        mappings: &plan.mappings,
        skipped: &plan.skipped,
    })
    .expect("plain data serialises")
}

/// The map in the switch's mesh mode (`GW_SWITCH_MODE=mesh`): the mapping plus whether the
/// Pod's role says preview now. The mesh proxy reads it and sends a connection to an
/// `active_addr` to its `preview_addr` while `on` is true.
#[derive(Debug, Serialize, serde::Deserialize, PartialEq)]
pub struct MeshMap {
    pub on: bool,
    pub namespace: String,
    pub mappings: Vec<MeshMapping>,
}

/// One pair of [`MeshMap`].
#[derive(Debug, Serialize, serde::Deserialize, PartialEq, Clone)]
pub struct MeshMapping {
    pub active: String,
    pub preview: String,
    pub protocol: String,
    pub active_addr: std::net::SocketAddr,
    pub preview_addr: std::net::SocketAddr,
}

impl MeshMap {
    pub fn new(plan: &Plan, s: &Settings, on: bool) -> MeshMap {
        MeshMap {
            on,
            namespace: s.namespace.clone(),
            mappings: plan
                .mappings
                .iter()
                .map(|m| MeshMapping {
                    active: m.active.clone(),
                    preview: m.preview.clone(),
                    protocol: m.protocol.as_str().to_string(),
                    active_addr: m.active_addr,
                    preview_addr: m.preview_addr,
                })
                .collect(),
        }
    }

    /// Reads the map at `path`; `None` if it is missing or not a mesh map.
    pub fn read(path: &Path) -> Option<MeshMap> {
        serde_json::from_slice(&std::fs::read(path).ok()?).ok()
    }

    /// Writes the map atomically (readers see the old file or the whole new one).
    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        let text = serde_json::to_string_pretty(self).expect("plain data serialises") + "\n";
        atomic_file::write(path, text, MODE)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Sources;
    use crate::pairing::{plan, tests::svc};
    use netrules::Protocol;

    fn sample() -> (Plan, Settings) {
        let s = Settings::resolve(&Sources {
            pod_namespace: Some("shop".into()),
            cli: [("GW_IPV6".to_string(), "true".to_string())].into(),
            ..Default::default()
        })
        .unwrap();
        let p = plan(
            &[
                svc(
                    "orders",
                    &["10.96.0.5", "fd00::5"],
                    &[(Some("http"), 80, Protocol::Tcp)],
                ),
                svc(
                    "orders-preview",
                    &["10.96.0.6", "fd00::6"],
                    &[(Some("http"), 8080, Protocol::Tcp)],
                ),
            ],
            &s,
        );
        (p, s)
    }

    #[test]
    fn one_readable_line_per_mapping() {
        let (p, s) = sample();
        let text = render(&p, &s);
        let lines: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
        assert_eq!(
            lines,
            [
                "tcp orders.shop.svc.cluster.local port=http 10.96.0.5:80 -> orders-preview.shop.svc.cluster.local 10.96.0.6:8080",
                "tcp orders.shop.svc.cluster.local port=http [fd00::5]:80 -> orders-preview.shop.svc.cluster.local [fd00::6]:8080",
            ]
        );
        let json: serde_json::Value = serde_json::from_str(&render_json(&p, &s)).unwrap();
        assert_eq!(json["mappings"][0]["preview_addr"], "10.96.0.6:8080");
        assert_eq!(json["mappings"][1]["protocol"], "tcp");
    }

    /// Mesh mode: init writes the map for the proxy, keeping `on` as the file has it (as
    /// init keeps the jump) unless told to turn it on.
    #[test]
    fn mesh_mode_map_keeps_on_like_the_jump() {
        use crate::init::{Jump, apply_mesh};
        let (p, mut s) = sample();
        let dir = std::env::temp_dir().join(format!("gw-meshmap-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("dnat.map");
        s.dnat_map = Some(path.clone());
        apply_mesh(&p, &s, Jump::Keep).unwrap();
        let m = MeshMap::read(&path).unwrap();
        assert!(!m.on);
        assert_eq!(m.mappings.len(), 2);
        assert_eq!(m.mappings[0].active_addr, "10.96.0.5:80".parse().unwrap());
        assert_eq!(
            m.mappings[0].preview_addr,
            "10.96.0.6:8080".parse().unwrap()
        );
        apply_mesh(&p, &s, Jump::On).unwrap();
        assert!(MeshMap::read(&path).unwrap().on);
        apply_mesh(&p, &s, Jump::Keep).unwrap();
        assert!(MeshMap::read(&path).unwrap().on, "init never turns it off");
        s.dnat_map = None;
        assert!(apply_mesh(&p, &s, Jump::Keep).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
