//! Pure: API objects → the Secrets there should be → the steps from the Secrets there are.
//!
//! A Pod wants an identity when it is opted in ([`opted_in`]), has an IP and is not being
//! deleted. Its Secret is `<pod>-ghostwire-identity` in its namespace, owned by the Pod; the
//! certificate names exactly what [`Names::of`] derives from the Pod as the API reports it. The
//! Secret records those names, when it was issued and when it expires, so that [`plan`] can
//! tell, without parsing certificates, whether it still fits: same owner (a Pod re-created
//! under the same name has a new uid), same names (a new IP), not yet due for renewal.

use crate::settings::{MANAGED_BY, MANAGER, OPT_IN, SEED_OPT_IN};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{Pod, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Annotations of a managed Secret.
pub const NAMES: &str = "ghostwire.dev/identity-names";
pub const ISSUED_AT: &str = "ghostwire.dev/issued-at";
pub const NOT_AFTER: &str = "ghostwire.dev/not-after";
pub const SERIAL: &str = "ghostwire.dev/serial";
/// Label: the Pod the Secret is for.
pub const POD_LABEL: &str = "ghostwire.dev/identity-pod";
/// Keys of a managed Secret (`kubernetes.io/tls`).
pub const CERT_KEY: &str = "tls.crt";
pub const KEY_KEY: &str = "tls.key";
pub const CA_KEY: &str = "ca.crt";
const SUFFIX: &str = "-ghostwire-identity";

/// Whether the Pod's annotations ask for an identity: `ghostwire.dev/encrypt` or
/// `ghostwire.dev/ai` true, or one of the seed's `kube-gateway.io/*` present and not false.
pub fn opted_in(annotations: &BTreeMap<String, String>) -> bool {
    let truthy = |v: &str| knobs::parse_bool(v).unwrap_or(false);
    OPT_IN
        .iter()
        .any(|k| annotations.get(*k).is_some_and(|v| truthy(v)))
        || SEED_OPT_IN.iter().any(|k| {
            annotations
                .get(*k)
                .is_some_and(|v| knobs::parse_bool(v) != Ok(false) || v.is_empty())
        })
}

/// The name of the Pod's Secret (a Secret name may be 253 long; a Pod name too, so a long one
/// is cut and made unique again with its hash).
pub fn secret_name(pod: &str) -> String {
    let name = format!("{pod}{SUFFIX}");
    if name.len() <= 253 {
        return name;
    }
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in pod.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    let keep = 253 - SUFFIX.len() - 17;
    format!(
        "{}-{h:016x}{SUFFIX}",
        pod[..keep].trim_end_matches(['-', '.'])
    )
}

/// What a certificate says about whom it is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Names {
    pub spiffe_id: String,
    pub dns: Vec<String>,
    pub ips: Vec<IpAddr>,
}

impl Names {
    /// From the Pod as the API reports it: SPIFFE ID of its ServiceAccount, the Pod DNS name of
    /// each IP (`10-244-0-7.shop.pod.cluster.local`), its IPs.
    pub fn of(
        trust_domain: &str,
        cluster_domain: &str,
        namespace: &str,
        service_account: &str,
        ips: &[IpAddr],
    ) -> Names {
        Names {
            spiffe_id: mesh_controller::ca::spiffe_id(trust_domain, namespace, service_account),
            dns: ips
                .iter()
                .map(|ip| {
                    let dashed = ip.to_string().replace(['.', ':'], "-");
                    format!("{dashed}.{namespace}.pod.{cluster_domain}")
                })
                .collect(),
            ips: ips.to_vec(),
        }
    }

    /// One line, kept in the Secret's [`NAMES`] annotation and compared on every pass.
    pub fn line(&self) -> String {
        let mut parts = vec![self.spiffe_id.clone()];
        parts.extend(self.dns.iter().map(|d| format!("DNS:{d}")));
        parts.extend(self.ips.iter().map(|ip| format!("IP:{ip}")));
        parts.join(",")
    }
}

/// A Pod's wanted Secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Want {
    pub namespace: String,
    pub secret: String,
    pub pod: String,
    pub pod_uid: String,
    pub names: Names,
}

/// What the trust settings are for [`wants`].
#[derive(Debug, Clone, Copy)]
pub struct Naming<'a> {
    pub trust_domain: &'a str,
    pub cluster_domain: &'a str,
}

/// The Secret a Pod should have, if any.
pub fn want(pod: &Pod, naming: Naming<'_>) -> Option<Want> {
    let meta = &pod.metadata;
    if meta.deletion_timestamp.is_some() || !opted_in(meta.annotations.as_ref()?) {
        return None;
    }
    let status = pod.status.as_ref()?;
    if matches!(status.phase.as_deref(), Some("Succeeded" | "Failed")) {
        return None;
    }
    let mut ips: Vec<IpAddr> = status
        .pod_ips
        .iter()
        .flatten()
        .filter_map(|p| p.ip.parse().ok())
        .collect();
    if ips.is_empty() {
        ips.extend(
            status
                .pod_ip
                .as_deref()
                .and_then(|s| s.parse::<IpAddr>().ok()),
        );
    }
    if ips.is_empty() {
        return None;
    }
    let namespace = meta.namespace.clone()?;
    let name = meta.name.clone()?;
    let sa = pod
        .spec
        .as_ref()
        .and_then(|s| s.service_account_name.clone())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "default".into());
    Some(Want {
        secret: secret_name(&name),
        names: Names::of(
            naming.trust_domain,
            naming.cluster_domain,
            &namespace,
            &sa,
            &ips,
        ),
        namespace,
        pod: name,
        pod_uid: meta.uid.clone()?,
    })
}

/// A managed Secret as found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Have {
    pub namespace: String,
    pub secret: String,
    pub owner_uid: Option<String>,
    pub names: Option<String>,
    pub issued_at: Option<SystemTime>,
    pub not_after: Option<SystemTime>,
}

fn unix(s: Option<&String>) -> Option<SystemTime> {
    Some(UNIX_EPOCH + Duration::from_secs(s?.parse().ok()?))
}

impl Have {
    pub fn of(s: &Secret) -> Option<Have> {
        let m = &s.metadata;
        let a = m.annotations.clone().unwrap_or_default();
        Some(Have {
            namespace: m.namespace.clone()?,
            secret: m.name.clone()?,
            owner_uid: m
                .owner_references
                .iter()
                .flatten()
                .find(|r| r.kind == "Pod")
                .map(|r| r.uid.clone()),
            names: a.get(NAMES).cloned(),
            issued_at: unix(a.get(ISSUED_AT)),
            not_after: unix(a.get(NOT_AFTER)),
        })
    }
}

/// Why a certificate is (re-)issued; the `reason` label of the metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Why {
    Missing,
    NewOwner,
    NamesChanged,
    RenewalDue,
    Unreadable,
}

impl Why {
    pub fn reason(self) -> &'static str {
        match self {
            Why::Missing => "missing",
            Why::NewOwner => "new_owner",
            Why::NamesChanged => "names_changed",
            Why::RenewalDue => "renewal_due",
            Why::Unreadable => "unreadable",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    Issue(Want, Why),
    Delete { namespace: String, secret: String },
}

/// The plan: each wanted Secret that is missing, stale or due is issued; each managed Secret no
/// Pod wants is deleted. Also when the next pass is due (the earliest renewal of what is kept).
pub fn plan(wants: &[Want], haves: &[Have], now: SystemTime) -> (Vec<Step>, Option<SystemTime>) {
    let by_key: BTreeMap<(&str, &str), &Have> = haves
        .iter()
        .map(|h| ((h.namespace.as_str(), h.secret.as_str()), h))
        .collect();
    let mut steps = Vec::new();
    let mut next: Option<SystemTime> = None;
    let mut wanted = BTreeSet::new();
    for w in wants {
        wanted.insert((w.namespace.as_str(), w.secret.as_str()));
        let why = match by_key.get(&(w.namespace.as_str(), w.secret.as_str())) {
            None => Some(Why::Missing),
            Some(h) if h.owner_uid.as_deref() != Some(w.pod_uid.as_str()) => Some(Why::NewOwner),
            Some(h) if h.names.as_deref() != Some(w.names.line().as_str()) => {
                Some(Why::NamesChanged)
            }
            Some(Have {
                issued_at: Some(i),
                not_after: Some(n),
                ..
            }) => {
                let due = mesh_controller::identity::renew_at(*i, *n);
                if due <= now {
                    Some(Why::RenewalDue)
                } else {
                    next = Some(next.map_or(due, |x| x.min(due)));
                    None
                }
            }
            Some(_) => Some(Why::Unreadable),
        };
        if let Some(why) = why {
            steps.push(Step::Issue(w.clone(), why));
        }
    }
    for h in haves {
        if !wanted.contains(&(h.namespace.as_str(), h.secret.as_str())) {
            steps.push(Step::Delete {
                namespace: h.namespace.clone(),
                secret: h.secret.clone(),
            });
        }
    }
    (steps, next)
}

/// The Secret for `want`, holding `chain_pem`, `key_pem` and the CA bundle.
pub struct Issued<'a> {
    pub chain_pem: &'a str,
    pub key_pem: &'a str,
    pub anchors_pem: &'a str,
    pub issued_at: SystemTime,
    pub not_after: SystemTime,
    pub serial: &'a str,
}

/// `t` cut to whole seconds, as the annotations hold it.
pub fn whole_seconds(t: SystemTime) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(t.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs())
}

fn secs(t: SystemTime) -> String {
    t.duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
        .to_string()
}

/// The Secret object (server-side applied whole by the controller).
pub fn secret(want: &Want, issued: &Issued<'_>) -> Secret {
    let owner = OwnerReference {
        api_version: "v1".into(),
        kind: "Pod".into(),
        name: want.pod.clone(),
        uid: want.pod_uid.clone(),
        controller: Some(true),
        block_owner_deletion: Some(false),
    };
    let s = |v: &str| v.to_string();
    Secret {
        metadata: ObjectMeta {
            name: Some(want.secret.clone()),
            namespace: Some(want.namespace.clone()),
            labels: Some(
                [
                    (s(MANAGED_BY), s(MANAGER)),
                    (s(POD_LABEL), want.pod.clone()),
                ]
                .into(),
            ),
            annotations: Some(
                [
                    (s(NAMES), want.names.line()),
                    (s(ISSUED_AT), secs(issued.issued_at)),
                    (s(NOT_AFTER), secs(issued.not_after)),
                    (s(SERIAL), s(issued.serial)),
                ]
                .into(),
            ),
            owner_references: Some(vec![owner]),
            ..Default::default()
        },
        type_: Some("kubernetes.io/tls".into()),
        data: Some(
            [
                (CERT_KEY, issued.chain_pem),
                (KEY_KEY, issued.key_pem),
                (CA_KEY, issued.anchors_pem),
            ]
            .into_iter()
            .map(|(k, v)| (s(k), ByteString(v.as_bytes().to_vec())))
            .collect(),
        ),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const NAMING: Naming<'static> = Naming {
        trust_domain: "td",
        cluster_domain: "cluster.local",
    };

    fn pod(annotations: serde_json::Value, ips: &[&str]) -> Pod {
        let pod_ips: Vec<_> = ips.iter().map(|ip| json!({"ip": ip})).collect();
        serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "shop", "uid": "u1", "annotations": annotations},
            "spec": {"serviceAccountName": "api", "containers": []},
            "status": {"phase": "Running", "podIP": ips.first(), "podIPs": pod_ips},
        }))
        .unwrap()
    }

    #[test]
    fn opt_in_by_our_annotations_and_the_seeds() {
        let on = |k: &str, v: &str| opted_in(&[(k.to_string(), v.to_string())].into());
        assert!(on("ghostwire.dev/encrypt", "true"));
        assert!(on("ghostwire.dev/ai", "true"));
        assert!(!on("ghostwire.dev/encrypt", "false"));
        assert!(!on("ghostwire.dev/encrypt", "maybe"));
        assert!(on("kube-gateway.io/encrypt", "true"));
        assert!(on("kube-gateway.io/endpoint", ""));
        assert!(!on("kube-gateway.io/ai", "false"));
        assert!(!on("ghostwire.dev/mesh", "true"));
    }

    #[test]
    fn a_pod_with_an_ip_wants_its_names() {
        let w = want(
            &pod(
                json!({"ghostwire.dev/encrypt": "true"}),
                &["10.244.0.7", "fd00:10:244::7"],
            ),
            NAMING,
        )
        .unwrap();
        assert_eq!(w.secret, "web-ghostwire-identity");
        assert_eq!(w.names.spiffe_id, "spiffe://td/ns/shop/sa/api");
        assert_eq!(
            w.names.dns,
            [
                "10-244-0-7.shop.pod.cluster.local",
                "fd00-10-244--7.shop.pod.cluster.local"
            ]
        );
        assert_eq!(
            w.names.line(),
            "spiffe://td/ns/shop/sa/api,DNS:10-244-0-7.shop.pod.cluster.local,DNS:fd00-10-244--7.shop.pod.cluster.local,IP:10.244.0.7,IP:fd00:10:244::7"
        );
        // No IP yet, not opted in, finished, being deleted: nothing.
        assert_eq!(
            want(&pod(json!({"ghostwire.dev/encrypt": "true"}), &[]), NAMING),
            None
        );
        assert_eq!(want(&pod(json!({}), &["10.0.0.1"]), NAMING), None);
        let mut done = pod(json!({"ghostwire.dev/ai": "true"}), &["10.0.0.1"]);
        done.status.as_mut().unwrap().phase = Some("Succeeded".into());
        assert_eq!(want(&done, NAMING), None);
        let mut going = pod(json!({"ghostwire.dev/ai": "true"}), &["10.0.0.1"]);
        going.metadata.deletion_timestamp =
            Some(serde_json::from_value(json!("2026-01-01T00:00:00Z")).unwrap());
        assert_eq!(want(&going, NAMING), None);
        // The default ServiceAccount when none is named.
        let mut anon = pod(json!({"ghostwire.dev/ai": "true"}), &["10.0.0.1"]);
        anon.spec.as_mut().unwrap().service_account_name = None;
        assert_eq!(
            want(&anon, NAMING).unwrap().names.spiffe_id,
            "spiffe://td/ns/shop/sa/default"
        );
    }

    #[test]
    fn long_pod_names_still_give_valid_unique_secret_names() {
        let a = "a".repeat(253);
        let b = format!("{}b", "a".repeat(252));
        assert!(secret_name(&a).len() <= 253);
        assert_ne!(secret_name(&a), secret_name(&b));
        assert!(secret_name(&a).ends_with(SUFFIX));
    }

    fn at(s: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(s)
    }

    #[test]
    fn plan_issues_renews_keeps_and_deletes() {
        let w = want(
            &pod(json!({"ghostwire.dev/encrypt": "true"}), &["10.0.0.1"]),
            NAMING,
        )
        .unwrap();
        let fresh = Have {
            namespace: "shop".into(),
            secret: w.secret.clone(),
            owner_uid: Some("u1".into()),
            names: Some(w.names.line()),
            issued_at: Some(at(1000)),
            not_after: Some(at(1000 + 3600)),
        };
        // Kept until two thirds of its life; the next pass is then.
        let (steps, next) = plan(
            std::slice::from_ref(&w),
            std::slice::from_ref(&fresh),
            at(2000),
        );
        assert_eq!(steps, []);
        assert_eq!(next, Some(at(1000 + 2400)));
        let issue = |h: Option<Have>, now| {
            let (steps, _) = plan(
                std::slice::from_ref(&w),
                &h.into_iter().collect::<Vec<_>>(),
                at(now),
            );
            match steps.as_slice() {
                [Step::Issue(x, why)] if *x == w => *why,
                other => panic!("{other:?}"),
            }
        };
        assert_eq!(issue(Some(fresh.clone()), 3400), Why::RenewalDue);
        assert_eq!(issue(None, 2000), Why::Missing);
        let other_pod = Have {
            owner_uid: Some("u0".into()),
            ..fresh.clone()
        };
        assert_eq!(issue(Some(other_pod), 2000), Why::NewOwner);
        let moved = Have {
            names: Some("spiffe://td/ns/shop/sa/api,IP:10.0.0.9".into()),
            ..fresh.clone()
        };
        assert_eq!(issue(Some(moved), 2000), Why::NamesChanged);
        let edited = Have {
            not_after: None,
            ..fresh.clone()
        };
        assert_eq!(issue(Some(edited), 2000), Why::Unreadable);
        // A Secret no Pod wants goes.
        let (steps, next) = plan(&[], std::slice::from_ref(&fresh), at(2000));
        assert_eq!(
            steps,
            [Step::Delete {
                namespace: "shop".into(),
                secret: w.secret.clone()
            }]
        );
        assert_eq!(next, None);
    }

    #[test]
    fn the_secret_is_owned_by_the_pod_and_reads_back_as_what_was_issued() {
        let w = want(
            &pod(json!({"ghostwire.dev/encrypt": "true"}), &["10.0.0.1"]),
            NAMING,
        )
        .unwrap();
        let issued = Issued {
            chain_pem: "C",
            key_pem: "K",
            anchors_pem: "A",
            issued_at: at(10),
            not_after: at(70),
            serial: "0a",
        };
        let back = secret(&w, &issued);
        let s = serde_json::to_value(&back).unwrap();
        let h = Have::of(&back).unwrap();
        assert_eq!(h.owner_uid.as_deref(), Some("u1"));
        assert_eq!(h.names, Some(w.names.line()));
        assert_eq!((h.issued_at, h.not_after), (Some(at(10)), Some(at(70))));
        assert_eq!(s["metadata"]["ownerReferences"][0]["kind"], "Pod");
        assert_eq!(s["type"], "kubernetes.io/tls");
        let (steps, _) = plan(&[w], &[h], at(20));
        assert_eq!(steps, []);
    }
}
