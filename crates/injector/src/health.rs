//! What `/healthz` says: whether the injector can do its job now. It fails while the injector
//! is stopping (so that it leaves its Service before its connections close), when the serving
//! certificate has expired, while a self-signed CA is not yet in the webhook's `caBundle` (the
//! API server could not verify the injector), and when the Kubernetes API has failed for longer
//! than a grace period without an answer since (owners and defaults cannot be read then).

use crate::tls::Reloading;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use tokio::time::Instant;

#[derive(Default)]
struct State {
    draining: bool,
    ca_bundle: Option<String>,
    api_failing: Option<(Instant, String)>,
}

pub struct Health {
    state: Mutex<State>,
    certs: Arc<Reloading>,
    api_grace: Duration,
}

impl Health {
    pub fn new(certs: Arc<Reloading>, api_grace: Duration) -> Arc<Self> {
        Arc::new(Health {
            state: Mutex::new(State::default()),
            certs,
            api_grace,
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The injector is stopping.
    pub fn draining(&self) {
        self.state().draining = true;
    }

    /// Whether the self-signed CA is in the webhook configuration: `Err` says why not.
    pub fn ca_bundle(&self, set: Result<(), String>) {
        self.state().ca_bundle = set.err();
    }

    /// The outcome of a call to the Kubernetes API.
    pub fn api(&self, outcome: Result<(), String>) {
        let mut s = self.state();
        match outcome {
            Ok(()) => s.api_failing = None,
            Err(e) => {
                let since = s.api_failing.as_ref().map_or_else(Instant::now, |f| f.0);
                s.api_failing = Some((since, e));
            }
        }
    }

    pub fn check(&self) -> Result<(), String> {
        let s = self.state();
        if s.draining {
            return Err("stopping: finishing the requests in flight".into());
        }
        if let Some(why) = &s.ca_bundle {
            return Err(format!(
                "the self-signed CA is not in the webhook's caBundle yet: {why}"
            ));
        }
        if let Some(end) = not_after(&self.certs.current().cert)
            && end < SystemTime::now()
        {
            let ago = SystemTime::now()
                .duration_since(end)
                .unwrap_or_default()
                .as_secs();
            return Err(format!(
                "the serving certificate expired {ago}s ago; replace the certificate files"
            ));
        }
        if let Some((since, e)) = &s.api_failing
            && since.elapsed() >= self.api_grace
        {
            return Err(format!(
                "the Kubernetes API has failed for {}s: {e}",
                since.elapsed().as_secs()
            ));
        }
        Ok(())
    }
}

/// The end of the leaf certificate's validity.
pub fn not_after(chain: &[rustls::pki_types::CertificateDer<'_>]) -> Option<SystemTime> {
    let (_, cert) = x509_parser::parse_x509_certificate(chain.first()?).ok()?;
    let secs = u64::try_from(cert.validity().not_after.timestamp()).ok()?;
    Some(SystemTime::UNIX_EPOCH + Duration::from_secs(secs))
}

/// Asks the API server for its version every `every` (bounded by it) and records the outcome,
/// so that `/healthz` follows the API even while no Pod is admitted.
pub async fn keep_checking_api(client: kube::Client, health: Arc<Health>, every: Duration) {
    loop {
        let outcome = match tokio::time::timeout(every, client.apiserver_version()).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("GET /version got no answer within {every:?}")),
        };
        if let Err(e) = &outcome {
            tracing::debug!(error = %e, "the Kubernetes API does not answer");
        }
        health.api(outcome);
        tokio::time::sleep(every).await;
    }
}
