//! `ghostwire controller`'s knobs: one table, from which its flags, `GW_*` env and
//! docs/configuration.md derive.

use crate::ca::CaSettings;
use knobs::{ConfigError, Resolver, parse_duration};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

knobs::knobs! {
    GRPC_ADDR = "GW_CONTROLLER_GRPC_ADDR", "grpc-addr", "0.0.0.0:8090",
        "Controller: address of the gRPC API (ghostwire.mesh.v1) the proxies subscribe to.";
    ADMIN_ADDR = "GW_CONTROLLER_ADMIN_ADDR", "admin-addr", "0.0.0.0:9090",
        "Controller: address of /healthz, /readyz and /metrics.";
    AUDIENCE = "GW_CONTROLLER_AUDIENCE", "audience", "ghostwire-mesh",
        "Controller: the audience the proxies' projected tokens must carry (checked by TokenReview).";
    CA_SECRET = "GW_CONTROLLER_CA_SECRET", "ca-secret", "ghostwire-system/ghostwire-mesh-ca",
        "Controller: `namespace/name` of the mesh CA's Secret (`kubernetes.io/tls`: `tls.crt` and `tls.key` sign, `ca.crt` holds the trust anchors); created with a new root when missing.";
    TRUST_DOMAIN = "GW_CONTROLLER_TRUST_DOMAIN", "trust-domain", "cluster.local",
        "Controller: SPIFFE trust domain of the proxies' certificates (`spiffe://<domain>/ns/<ns>/sa/<sa>`).";
    CERT_LIFETIME = "GW_CONTROLLER_CERT_LIFETIME", "cert-lifetime", "24h",
        "Controller: lifetime of a proxy certificate (1s to 720h); proxies renew at two thirds of it.";
    CA_RELOAD = "GW_CONTROLLER_CA_RELOAD", "ca-reload", "30s",
        "Controller: how often the CA Secret is read again (anchor rotation is an edit of it).";
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub grpc_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub audience: String,
    pub ca: CaSettings,
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
        ca: ca_settings(&r)?,
    })
}

/// The env names of the four CA knobs in a knob table; `ghostwire identity` signs with the same
/// CA and declares the same four knobs under its own names.
#[derive(Debug, Clone, Copy)]
pub struct CaKnobs {
    pub secret: &'static str,
    pub trust_domain: &'static str,
    pub lifetime: &'static str,
    pub reload: &'static str,
}

/// This controller's names for them.
pub const CA_KNOBS: CaKnobs = CaKnobs {
    secret: CA_SECRET,
    trust_domain: TRUST_DOMAIN,
    lifetime: CERT_LIFETIME,
    reload: CA_RELOAD,
};

fn ca_settings(r: &Resolver<'_>) -> Result<CaSettings, ConfigError> {
    ca_settings_from(r, CA_KNOBS)
}

/// Resolves and checks the CA knobs named by `k` in `r`'s table.
pub fn ca_settings_from(r: &Resolver<'_>, k: CaKnobs) -> Result<CaSettings, ConfigError> {
    let (namespace, secret) = r.parse(k.secret, |s| match s.trim().split_once('/') {
        Some((ns, name)) if dns_label(ns) && dns_label(name) => {
            Ok((ns.to_string(), name.to_string()))
        }
        _ => Err(
            "expected NAMESPACE/NAME of a Secret, e.g. ghostwire-system/ghostwire-mesh-ca".into(),
        ),
    })?;
    let trust_domain = r.parse(k.trust_domain, |s| {
        let s = s.trim();
        let ok = !s.is_empty()
            && s.len() <= 255
            && s.chars().all(|c| {
                c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '-' | '_')
            });
        if ok {
            Ok(s.to_string())
        } else {
            Err(
                "expected a SPIFFE trust domain: lower-case letters, digits, '.', '-' and '_'"
                    .into(),
            )
        }
    })?;
    let lifetime = r.parse(k.lifetime, |s| {
        let d = parse_duration(s)?;
        if d < Duration::from_secs(1) || d > Duration::from_secs(720 * 3600) {
            return Err("must be from 1s to 720h".into());
        }
        Ok(d)
    })?;
    let reload = r.parse(k.reload, |s| match parse_duration(s)? {
        d if d.is_zero() => Err("must be more than 0s".into()),
        d => Ok(d),
    })?;
    Ok(CaSettings {
        namespace,
        secret,
        trust_domain,
        lifetime,
        reload,
    })
}

/// A Kubernetes object name of the DNS-label kind (namespaces; Secrets accept more, but a
/// label is what every tool can show).
fn dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !s.starts_with('-')
        && !s.ends_with('-')
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
        assert_eq!(s.ca.namespace, "ghostwire-system");
        assert_eq!(s.ca.secret, "ghostwire-mesh-ca");
        assert_eq!(s.ca.lifetime, Duration::from_secs(24 * 3600));
        for (knob, value) in [
            (CA_SECRET, "no-slash"),
            (CA_SECRET, "Bad/name"),
            (TRUST_DOMAIN, "Cluster Local"),
            (CERT_LIFETIME, "0s"),
            (CERT_LIFETIME, "800h"),
            (CA_RELOAD, "0s"),
        ] {
            let bad = [(knob.to_string(), value.to_string())].into();
            let e = settings(&bad).unwrap_err().to_string();
            assert!(e.contains(&format!("{knob}={value:?}")), "{e}");
        }
    }

    #[test]
    fn docs_table_is_current() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/configuration.md");
        knobs::check_doc_table(path, "controller", KNOBS).unwrap();
    }
}
