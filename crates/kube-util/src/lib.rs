//! Kubernetes access shared by ghostwire's components: client construction
//! and bounded, backed-off retries for calls that may meet a flaky API server.

pub mod event;

use std::future::Future;
use std::time::Duration;
use tokio::time::Instant;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The cause is kept as text: kube's own errors repeat their sources in their messages,
    /// so a chain would print the same cause several times.
    #[error(
        "no Kubernetes configuration found ({0}); hint: run in a pod with a service account, or set KUBECONFIG to a kubeconfig file"
    )]
    Config(String),
    #[error("{what}: the API server refused it ({code} {reason}): {message}{hint}")]
    Refused {
        what: String,
        code: u16,
        reason: String,
        message: String,
        hint: String,
    },
    #[error("{what}: gave up after {attempts} attempts over {elapsed:?}; last error: {last}")]
    GaveUp {
        what: String,
        attempts: u32,
        elapsed: Duration,
        last: kube::Error,
    },
}

/// A client from the in-cluster service account, or else from KUBECONFIG / ~/.kube/config.
pub async fn client() -> Result<kube::Client, Error> {
    kube::Client::try_default()
        .await
        .map_err(|e| Error::Config(config_cause(&e)))
}

/// Like [`client`], with every read bounded: a response (or the next chunk of a watch)
/// that does not come within `read` fails the call, so a half-open connection cannot
/// hold a caller forever. Watches must ask the server to end them sooner than `read`.
pub async fn client_with_read_timeout(read: Duration) -> Result<kube::Client, Error> {
    let mut config = kube::Config::infer()
        .await
        .map_err(|e| Error::Config(config_cause(&e)))?;
    config.read_timeout = Some(read);
    // Count from the request, not from when a pooled connection went idle.
    config.reset_reader_on_write = true;
    kube::Client::try_from(config).map_err(|e| Error::Config(config_cause(&e)))
}

/// The most specific message in `e`'s chain that still says every cause once: kube's
/// outer errors repeat their source's message, so the first source is enough.
fn config_cause(e: &(dyn std::error::Error + 'static)) -> String {
    e.source().unwrap_or(e).to_string()
}

/// Whether trying again could help: transport errors, timeouts, 429 and 5xx.
/// 4xx answers (forbidden, not found, invalid) will not change by waiting.
pub fn is_transient(e: &kube::Error) -> bool {
    match e {
        kube::Error::Api(s) => s.code == 429 || s.code >= 500,
        _ => true,
    }
}

/// Capped exponential backoff with jitter: 200 ms, 400 ms, … up to `cap`.
pub fn backoff(attempt: u32, cap: Duration) -> Duration {
    backoff_from(Duration::from_millis(200), attempt, cap)
}

/// Capped exponential backoff with jitter from `first`: `first`, 2×`first`, … up to `cap`.
pub fn backoff_from(first: Duration, attempt: u32, cap: Duration) -> Duration {
    let d = first.saturating_mul(1 << attempt.min(10)).min(cap);
    // Up to 20% jitter so that many pods restarting together spread out.
    let jitter = d.mul_f64(rand::random::<f64>() * 0.2);
    d.saturating_sub(jitter)
}

/// Runs `call` until it succeeds, fails with a non-transient error, or `budget` is spent.
pub async fn retry<T, F, Fut>(what: &str, budget: Duration, mut call: F) -> Result<T, Error>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, kube::Error>>,
{
    let start = Instant::now();
    let mut attempt = 0;
    loop {
        attempt += 1;
        match call().await {
            Ok(v) => return Ok(v),
            Err(kube::Error::Api(s)) if !is_transient(&kube::Error::Api(s.clone())) => {
                let hint = match s.code {
                    401 => " (check the service account token or kubeconfig credentials)",
                    403 => " (check the RBAC Role bound to this pod's service account)",
                    404 => " (check the namespace and the resource name)",
                    _ => "",
                };
                return Err(Error::Refused {
                    what: what.to_string(),
                    code: s.code,
                    reason: s.reason.clone(),
                    message: s.message.clone(),
                    hint: hint.to_string(),
                });
            }
            Err(e) => {
                let wait = backoff(attempt - 1, Duration::from_secs(5));
                if start.elapsed() + wait > budget {
                    return Err(Error::GaveUp {
                        what: what.to_string(),
                        attempts: attempt,
                        elapsed: start.elapsed(),
                        last: e,
                    });
                }
                tracing::warn!(what, attempt, error = %e, retry_in = ?wait, "Kubernetes API call failed; retrying");
                tokio::time::sleep(wait).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    fn api_error(code: u16) -> kube::Error {
        kube::Error::Api(
            kube::core::Status::failure("boom", "Reason")
                .with_code(code)
                .boxed(),
        )
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let cap = Duration::from_secs(5);
        assert!(backoff(0, cap) <= Duration::from_millis(200));
        assert!(backoff(3, cap) > Duration::from_millis(1200));
        assert!(backoff(30, cap) <= cap);
        assert!(backoff(30, cap) >= cap.mul_f64(0.8));
        let first = Duration::from_secs(2);
        for attempt in 0..12 {
            let want = first
                .saturating_mul(1 << attempt.min(10))
                .min(Duration::from_secs(30));
            let got = backoff_from(first, attempt, Duration::from_secs(30));
            assert!(
                got <= want && got >= want.mul_f64(0.8),
                "{attempt}: {got:?}"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn retries_transient_errors_then_succeeds() {
        let calls = AtomicU32::new(0);
        let v = retry("list services", Duration::from_secs(30), || async {
            if calls.fetch_add(1, Ordering::SeqCst) < 3 {
                Err(api_error(503))
            } else {
                Ok(7)
            }
        })
        .await
        .unwrap();
        assert_eq!(v, 7);
        assert_eq!(calls.load(Ordering::SeqCst), 4);
    }

    #[tokio::test(start_paused = true)]
    async fn gives_up_within_the_budget() {
        let start = Instant::now();
        let err = retry("list services", Duration::from_secs(10), || async {
            Err::<(), _>(api_error(500))
        })
        .await
        .unwrap_err();
        assert!(matches!(err, Error::GaveUp { .. }), "{err}");
        assert!(start.elapsed() <= Duration::from_secs(10));
    }

    #[tokio::test(start_paused = true)]
    async fn forbidden_is_not_retried() {
        let calls = AtomicU32::new(0);
        let err = retry("list services", Duration::from_secs(30), || async {
            calls.fetch_add(1, Ordering::SeqCst);
            Err::<(), _>(api_error(403))
        })
        .await
        .unwrap_err();
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert!(err.to_string().contains("RBAC"), "{err}");
    }
}
