//! `ghostwire controller`'s knobs: one table, from which its flags, `GW_*` env and
//! docs/configuration.md derive.

use knobs::{ConfigError, Resolver};
use std::collections::BTreeMap;
use std::net::SocketAddr;

knobs::knobs! {
    GRPC_ADDR = "GW_CONTROLLER_GRPC_ADDR", "grpc-addr", "0.0.0.0:8090",
        "Controller: address of the gRPC API (ghostwire.mesh.v1) the proxies subscribe to.";
    ADMIN_ADDR = "GW_CONTROLLER_ADMIN_ADDR", "admin-addr", "0.0.0.0:9090",
        "Controller: address of /healthz, /readyz and /metrics.";
    AUDIENCE = "GW_CONTROLLER_AUDIENCE", "audience", "ghostwire-mesh",
        "Controller: the audience the proxies' projected tokens must carry (checked by TokenReview).";
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub grpc_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub audience: String,
}

fn addr(s: &str) -> Result<SocketAddr, String> {
    s.parse()
        .map_err(|_| "expected ADDRESS:PORT, e.g. 0.0.0.0:8090".to_string())
}

/// Resolves flags and env (`given`) over the built-in defaults.
pub fn settings(given: &BTreeMap<String, String>) -> Result<Settings, ConfigError> {
    let file = BTreeMap::new();
    let r = Resolver {
        table: KNOBS,
        given,
        file: &file,
    };
    Ok(Settings {
        grpc_addr: r.parse(GRPC_ADDR, addr)?,
        admin_addr: r.parse(ADMIN_ADDR, addr)?,
        audience: r.parse(AUDIENCE, |s| {
            let s = s.trim();
            if s.is_empty() {
                return Err("must not be empty".into());
            }
            Ok(s.to_string())
        })?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_bad_values() {
        let s = settings(&BTreeMap::new()).unwrap();
        assert_eq!(s.grpc_addr.port(), 8090);
        assert_eq!(s.audience, crate::DEFAULT_AUDIENCE);
        let bad = [(GRPC_ADDR.to_string(), "nowhere".to_string())].into();
        let e = settings(&bad).unwrap_err().to_string();
        assert!(e.contains("GW_CONTROLLER_GRPC_ADDR=\"nowhere\""), "{e}");
    }

    #[test]
    fn docs_table_is_current() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/configuration.md");
        knobs::check_doc_table(path, "controller", KNOBS).unwrap();
    }
}
