//! The identity capability's knobs: one table, from which the flags and `GW_*` env of
//! `ghostwire identity` and `ghostwire attach` and docs/configuration.md derive.

use knobs::{ConfigError, Resolver};
use mesh_controller::ca::CaSettings;
use mesh_controller::settings::{CaKnobs, ca_settings_from};
use std::collections::BTreeMap;
use std::net::SocketAddr;

knobs::knobs! {
    CA_SECRET = "GW_IDENTITY_CA_SECRET", "ca-secret", "ghostwire-system/ghostwire-mesh-ca",
        "Identity: `namespace/name` of the mesh CA's Secret, the same one `ghostwire controller` signs with (created with a new root when missing).";
    TRUST_DOMAIN = "GW_IDENTITY_TRUST_DOMAIN", "trust-domain", "cluster.local",
        "Identity: SPIFFE trust domain (`spiffe://<domain>/ns/<ns>/sa/<sa>`); keep it equal to the controller's.";
    CERT_LIFETIME = "GW_IDENTITY_CERT_LIFETIME", "cert-lifetime", "1h",
        "Identity: lifetime of a Pod's certificate (1s to 720h); it is renewed at two thirds of it.";
    CA_RELOAD = "GW_IDENTITY_CA_RELOAD", "ca-reload", "30s",
        "Identity: how often the CA Secret is read again (anchor rotation is an edit of it).";
    CLUSTER_DOMAIN = "GW_IDENTITY_CLUSTER_DOMAIN", "cluster-domain", "cluster.local",
        "Identity: the cluster's DNS domain, for the Pod DNS name `<ip-with-dashes>.<ns>.pod.<domain>`.";
    WATCH_NAMESPACE = "GW_IDENTITY_NAMESPACE", "watch-namespace", "",
        "Identity: watch Pods of this namespace only. Empty: all namespaces.";
    ADMIN_ADDR = "GW_IDENTITY_ADMIN_ADDR", "admin-addr", "0.0.0.0:9092",
        "Identity: address of /healthz, /readyz and /metrics.";
    IMAGE = "GW_IDENTITY_IMAGE", "image", "ghostwire",
        "Attach: image of the ephemeral container (it runs `ghostwire identity-agent`).";
    LOCAL_PORT = "GW_IDENTITY_LOCAL_PORT", "local-port", "18000",
        "Agent: the plain listener on 127.0.0.1 the Pod's outbound TCP is redirected to (the seed's port).";
    TLS_PORT = "GW_IDENTITY_TLS_PORT", "tls-port", "18443",
        "Agent: the seed's mTLS listener (`ip:port` then `Y`), serving the Pod's certificate; encryption between Pods uses the inbound port instead.";
    INBOUND_PORT = "GW_IDENTITY_INBOUND_PORT", "inbound-port", "18006",
        "Agent: the mesh proxy's inbound port (L4 mode): the Pod's inbound TCP is redirected to it; mesh TLS (ALPN gw.mesh/1) from a peer is terminated there and goes on to its original destination.";
    MESH_TLS = "GW_IDENTITY_MESH_TLS", "mesh-tls", "permissive",
        "Agent: inbound policy of the mesh proxy. `permissive`: plaintext peers are let through too; `strict`: only mesh TLS from the Pod that owns the client's address.";
    MESH_ADMIN_ADDR = "GW_IDENTITY_MESH_ADMIN_ADDR", "mesh-admin-addr", "0.0.0.0:18091",
        "Agent: the mesh proxy's /metrics, /ready and /config_dump.";
    AGENT_ADMIN_ADDR = "GW_IDENTITY_AGENT_ADMIN_ADDR", "agent-admin-addr", "0.0.0.0:18090",
        "Agent: the proxy's /healthz, /readyz and /metrics.";
    REDIRECT_CIDRS = "GW_IDENTITY_REDIRECT_CIDRS", "redirect-cidrs", "10.244.0.0/16,10.96.0.0/12",
        "Agent: comma-separated IPv4 Pod and Service CIDRs whose TCP is redirected to the local port; the Pod's `ghostwire.dev/identity-cidrs` (or the seed's `kube-gateway.io/podcidr`) wins at attach.", @"identity-cidrs";
    PROXY_UID = "GW_IDENTITY_PROXY_UID", "proxy-uid", "1337",
        "Agent: the uid the proxy runs as; its own connections are not redirected.";
    MAX_RESTARTS = "GW_IDENTITY_MAX_RESTARTS", "max-restarts", "5",
        "Agent: how often the supervisor restarts a dead proxy; past that it removes the redirection and exits, so the Pod's traffic flows directly.";
    KTLS = "GW_IDENTITY_KTLS", "ktls", "false",
        "Agent: hand the mesh TLS sessions to the kernel (kTLS: TCP_ULP tls, TLS_TX/TLS_RX) where the kernel has the TLS module; without it TLS stays in userspace, logged once and counted in `ghostwire_proxy_ktls_offloads_total{result=\"userspace\"}`. The Pod's `ghostwire.dev/ktls` wins at attach.", @"ktls";
    RELOAD = "GW_IDENTITY_RELOAD", "reload", "2s",
        "Agent: how often the proxy reads its Secret again (a renewed certificate is served without a restart).";
}

/// The labels and annotations of a managed Secret.
pub const MANAGED_BY: &str = "app.kubernetes.io/managed-by";
pub const MANAGER: &str = "ghostwire-identity";
/// Annotations that opt a Pod in: ours (`"true"`), and the kube-gateway seed's (present and not
/// `"false"`).
pub const OPT_IN: [&str; 2] = ["ghostwire.dev/encrypt", "ghostwire.dev/ai"];
pub const SEED_OPT_IN: [&str; 3] = [
    "kube-gateway.io/encrypt",
    "kube-gateway.io/ai",
    "kube-gateway.io/endpoint",
];

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub ca: CaSettings,
    pub cluster_domain: String,
    pub namespace: Option<String>,
    pub admin_addr: SocketAddr,
}

fn domain(s: &str) -> Result<String, String> {
    let s = s.trim().trim_end_matches('.');
    let ok = !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        });
    if ok {
        Ok(s.to_string())
    } else {
        Err("expected a DNS domain, e.g. cluster.local".into())
    }
}

/// Resolves flags and env (`given`) over the built-in defaults.
pub fn settings(given: &BTreeMap<String, String>) -> Result<Settings, ConfigError> {
    let file = BTreeMap::new();
    let r = Resolver {
        table: KNOBS,
        given,
        file: &file,
    };
    let ca = ca_settings_from(
        &r,
        CaKnobs {
            secret: CA_SECRET,
            trust_domain: TRUST_DOMAIN,
            lifetime: CERT_LIFETIME,
            reload: CA_RELOAD,
        },
    )?;
    Ok(Settings {
        ca,
        cluster_domain: r.parse(CLUSTER_DOMAIN, domain)?,
        namespace: r.parse(WATCH_NAMESPACE, |s| {
            let s = s.trim();
            Ok((!s.is_empty()).then(|| s.to_string()))
        })?,
        admin_addr: r.parse(ADMIN_ADDR, |s| {
            s.parse()
                .map_err(|_| "expected ADDRESS:PORT, e.g. 0.0.0.0:9092".to_string())
        })?,
    })
}

/// For tests and the demo: defaults with these changes.
pub fn with(changes: &[(&str, &str)]) -> Result<Settings, ConfigError> {
    let given = changes
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    settings(&given)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn defaults_and_bad_values_name_the_knob() {
        let s = settings(&BTreeMap::new()).unwrap();
        assert_eq!(s.ca.lifetime, Duration::from_secs(3600));
        assert_eq!(s.ca.secret, "ghostwire-mesh-ca");
        assert_eq!(s.cluster_domain, "cluster.local");
        assert_eq!(s.namespace, None);
        for (knob, value) in [
            (CA_SECRET, "nope"),
            (CERT_LIFETIME, "0s"),
            (CLUSTER_DOMAIN, "Bad Domain"),
            (ADMIN_ADDR, "x"),
        ] {
            let e = with(&[(knob, value)]).unwrap_err().to_string();
            assert!(e.contains(&format!("{knob}={value:?}")), "{e}");
        }
    }

    #[test]
    fn docs_table_is_current() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/configuration.md");
        knobs::check_doc_table(path, "identity", KNOBS).unwrap();
    }
}
