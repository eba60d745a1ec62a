//! Leader election with a coordination.k8s.io Lease: one replica holds it and writes; the
//! others watch and take over when it is not renewed within its duration. Every change of the
//! Lease is a compare-and-swap on its resourceVersion, so two replicas never both win.

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::PostParams;
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct LeaseConfig {
    pub namespace: String,
    pub name: String,
    /// This replica (e.g. the Pod name).
    pub identity: String,
    /// A holder that has not renewed for this long has lost the Lease.
    pub duration: Duration,
}

/// Whether the Lease (as read) is free for `me` to take: absent, ours, or expired.
pub fn takeable(lease: Option<&Lease>, me: &str, now: Timestamp) -> bool {
    let Some(spec) = lease.and_then(|l| l.spec.as_ref()) else {
        return true;
    };
    if spec
        .holder_identity
        .as_deref()
        .is_none_or(|h| h.is_empty() || h == me)
    {
        return true;
    }
    let secs = i64::from(spec.lease_duration_seconds.unwrap_or(15));
    match spec.renew_time.as_ref().or(spec.acquire_time.as_ref()) {
        Some(MicroTime(t)) => now.as_second() >= t.as_second() + secs,
        None => true,
    }
}

/// One attempt to take or renew the Lease; `Ok(true)`: this replica leads until
/// `now + duration`.
pub async fn try_lead(api: &Api<Lease>, cfg: &LeaseConfig) -> Result<bool, kube::Error> {
    let now = Timestamp::now();
    let current = api.get_opt(&cfg.name).await?;
    if !takeable(current.as_ref(), &cfg.identity, now) {
        return Ok(false);
    }
    let held = current
        .as_ref()
        .and_then(|l| l.spec.as_ref())
        .and_then(|s| s.holder_identity.as_deref())
        == Some(cfg.identity.as_str());
    let spec = LeaseSpec {
        holder_identity: Some(cfg.identity.clone()),
        lease_duration_seconds: Some(cfg.duration.as_secs().max(1) as i32),
        acquire_time: if held {
            current
                .as_ref()
                .and_then(|l| l.spec.as_ref())
                .and_then(|s| s.acquire_time.clone())
        } else {
            Some(MicroTime(now))
        },
        renew_time: Some(MicroTime(now)),
        lease_transitions: current
            .as_ref()
            .and_then(|l| l.spec.as_ref())
            .and_then(|s| s.lease_transitions)
            .map(|n| if held { n } else { n + 1 })
            .or(Some(0)),
        ..Default::default()
    };
    let result = match current {
        None => {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(cfg.name.clone()),
                    namespace: Some(cfg.namespace.clone()),
                    ..Default::default()
                },
                spec: Some(spec),
            };
            api.create(&PostParams::default(), &lease).await.map(drop)
        }
        Some(mut lease) => {
            lease.spec = Some(spec);
            api.replace(&cfg.name, &PostParams::default(), &lease)
                .await
                .map(drop)
        }
    };
    match result {
        Ok(()) => Ok(true),
        // Someone else wrote it first (409): not ours this round.
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(holder: &str, renewed: i64, secs: i32) -> Lease {
        Lease {
            metadata: Default::default(),
            spec: Some(LeaseSpec {
                holder_identity: Some(holder.into()),
                renew_time: Some(MicroTime(Timestamp::from_second(renewed).unwrap())),
                lease_duration_seconds: Some(secs),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn who_may_take_the_lease() {
        let now = Timestamp::from_second(1_000).unwrap();
        assert!(takeable(None, "a", now));
        assert!(takeable(Some(&lease("a", 999, 15)), "a", now));
        assert!(!takeable(Some(&lease("b", 990, 15)), "a", now));
        assert!(takeable(Some(&lease("b", 985, 15)), "a", now));
        assert!(takeable(Some(&lease("", 999, 15)), "a", now));
    }
}
