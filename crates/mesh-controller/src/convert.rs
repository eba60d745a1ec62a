//! `ghostwire.mesh.v1` ⇄ the proxy's routing config ([`mesh_proxy::config`]). The proxy
//! validates the result as it does a file ([`mesh_proxy::store::Store::replace`]); here only
//! what the wire format cannot say is checked (addresses that are not `ip:port`).

use mesh_api::v1;
use mesh_proxy::config::{
    Backend, Config, ConfigError, FailureAccrual, Retry, RetryBudget, Route, RouteMatch, Service,
    Split,
};
use std::net::SocketAddr;

fn addr(path: String, s: &str) -> Result<SocketAddr, ConfigError> {
    s.parse().map_err(|_| ConfigError::Field {
        path,
        value: format!("{s:?}"),
        reason: "expected IP:PORT".into(),
    })
}

fn ms(n: u64) -> String {
    format!("{n}ms")
}

fn opt(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_string())
}

/// The proxy's config for these services (in the order given).
pub fn to_config<'a>(
    services: impl IntoIterator<Item = &'a v1::Service>,
) -> Result<Config, ConfigError> {
    let mut out = Config::default();
    for s in services {
        let p = format!("services[{}]", s.name);
        let addresses = s
            .addresses
            .iter()
            .enumerate()
            .map(|(i, a)| addr(format!("{p}.addresses[{i}]"), a))
            .collect::<Result<_, _>>()?;
        let backends = s
            .backends
            .iter()
            .map(|b| {
                Ok(Backend {
                    name: b.name.clone(),
                    endpoints: b
                        .endpoints
                        .iter()
                        .enumerate()
                        .map(|(i, e)| addr(format!("{p}.backends[{}].endpoints[{i}]", b.name), e))
                        .collect::<Result<_, _>>()?,
                    weight: b.weight,
                    identities: b
                        .identities
                        .iter()
                        .map(|(e, id)| {
                            let path = format!("{p}.backends[{}].identities[{e}]", b.name);
                            Ok((addr(path, e)?, id.clone()))
                        })
                        .collect::<Result<_, ConfigError>>()?,
                })
            })
            .collect::<Result<_, ConfigError>>()?;
        let routes = s
            .routes
            .iter()
            .map(|r| {
                let m = r.r#match.clone().unwrap_or_default();
                Route {
                    name: r.name.clone(),
                    matches: RouteMatch {
                        path_prefix: opt(&m.path_prefix),
                        method: opt(&m.method),
                        headers: m.headers.into_iter().collect(),
                    },
                    split: r
                        .split
                        .iter()
                        .map(|x| Split {
                            backend: x.backend.clone(),
                            weight: x.weight,
                        })
                        .collect(),
                    timeout: (r.timeout_ms > 0).then(|| ms(r.timeout_ms)),
                    retry: r.retry.as_ref().map(|rt| Retry {
                        attempts: rt.attempts,
                        statuses: rt
                            .statuses
                            .iter()
                            .map(|&x| u16::try_from(x).unwrap_or(u16::MAX))
                            .collect(),
                        backoff: ms(rt.backoff_ms),
                        non_idempotent: rt.non_idempotent,
                        max_body_bytes: usize::try_from(rt.max_body_bytes).unwrap_or(usize::MAX),
                    }),
                }
            })
            .collect();
        out.services.push(Service {
            name: s.name.clone(),
            addresses,
            backends,
            routes,
            retry_budget: s
                .retry_budget
                .as_ref()
                .map(|b| RetryBudget {
                    ratio: b.ratio,
                    min_per_second: b.min_per_second,
                })
                .unwrap_or_default(),
            failure_accrual: s
                .failure_accrual
                .as_ref()
                .map(|f| FailureAccrual {
                    consecutive_failures: f.consecutive_failures,
                    eject_for: ms(f.eject_for_ms),
                })
                .unwrap_or_default(),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_services_become_the_proxy_config() {
        let s = v1::Service {
            name: "app-b.app-b".into(),
            addresses: vec!["10.96.0.11:80".into()],
            backends: vec![
                v1::Backend {
                    name: "v1".into(),
                    endpoints: vec!["10.244.0.5:8080".into()],
                    weight: 90,
                    ..Default::default()
                },
                v1::Backend {
                    name: "v2".into(),
                    endpoints: vec!["[fd00::6]:8080".into()],
                    weight: 10,
                    identities: [(
                        "[fd00::6]:8080".to_string(),
                        "spiffe://td/ns/app-b/sa/v2".to_string(),
                    )]
                    .into(),
                },
            ],
            routes: vec![v1::Route {
                name: "canary".into(),
                r#match: Some(v1::RouteMatch {
                    headers: [("x-canary".to_string(), "true".to_string())].into(),
                    ..Default::default()
                }),
                split: vec![v1::Split {
                    backend: "v2".into(),
                    weight: 1,
                }],
                timeout_ms: 2000,
                retry: None,
            }],
            ..Default::default()
        };
        let c = to_config([&s]).unwrap();
        c.validate().unwrap();
        let r = &c.services[0].routes[0];
        assert_eq!(r.timeout.as_deref(), Some("2000ms"));
        assert_eq!(r.matches.headers["x-canary"], "true");
        assert_eq!(c.services[0].failure_accrual, FailureAccrual::default());
        assert_eq!(
            c.services[0].backends[1].identities[&"[fd00::6]:8080".parse().unwrap()],
            "spiffe://td/ns/app-b/sa/v2"
        );

        let mut bad = s.clone();
        bad.backends[0].endpoints[0] = "pod-a:8080".into();
        let e = to_config([&bad]).unwrap_err().to_string();
        assert!(
            e.contains("services[app-b.app-b].backends[v1].endpoints[0]=\"pod-a:8080\""),
            "{e}"
        );
    }
}
