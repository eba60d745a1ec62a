//! `ghostwire identity`: the reconcile loop. Observe (Pods from a watch cache; the managed
//! Secrets listed fresh on every pass, so a pass never acts on a stale copy of its own writes)
//! → [`desired::plan`] → act (issue and apply, or delete) → sleep until the next event or the
//! next renewal. A failed step is retried on the next pass, with backoff.

use crate::desired::{self, Have, Issued, Naming, Step, Want};
use crate::settings::{MANAGED_BY, MANAGER, Settings};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::runtime::{WatchStreamExt, reflector, watcher};
use mesh_controller::ca::CaHandle;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::sync::Notify;

/// With nothing due, a pass still runs this often (a missed event heals within it).
const RESYNC: Duration = Duration::from_secs(300);
/// First wait after a failed step; doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("{what} {namespace}/{name}: {source}")]
    Api {
        what: &'static str,
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("listing the managed Secrets: {0}")]
    List(#[source] kube::Error),
    #[error("issuing for {namespace}/{pod}: {source}")]
    Sign {
        namespace: String,
        pod: String,
        #[source]
        source: mesh_controller::ca::SignError,
    },
    #[error("the Pod watch never became ready")]
    NotReady,
    #[error("the mesh CA: {0}")]
    Ca(#[from] mesh_controller::ca::CaError),
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Reason {
    reason: &'static str,
}

/// `ghostwire_identity_*` metrics.
#[derive(Clone, Debug, Default)]
pub struct Metrics {
    issued: Family<Reason, Counter>,
    failures: Counter,
    deleted: Counter,
    managed: Gauge,
}

impl Metrics {
    pub fn new(registry: &mut Registry) -> Self {
        let m = Metrics::default();
        let r = registry.sub_registry_with_prefix("identity");
        r.register(
            "certificates_issued",
            "Pod certificates issued, by why (missing, new_owner, names_changed, renewal_due, unreadable)",
            m.issued.clone(),
        );
        r.register(
            "failures",
            "Steps (issue, apply, delete) that failed and will be retried",
            m.failures.clone(),
        );
        r.register(
            "secrets_deleted",
            "Identity Secrets deleted because no Pod wants them",
            m.deleted.clone(),
        );
        r.register(
            "pods",
            "Pods with an identity after the last pass",
            m.managed.clone(),
        );
        m
    }

    pub fn issued(&self, reason: &'static str) -> u64 {
        self.issued.get_or_create(&Reason { reason }).get()
    }
}

/// The loop's inputs.
pub struct Controller {
    pub client: kube::Client,
    pub settings: Settings,
    pub ca: CaHandle,
    pub metrics: Metrics,
}

fn api<K>(client: &kube::Client, ns: Option<&str>) -> Api<K>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
    K::DynamicType: Default,
{
    match ns {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

fn selector() -> String {
    format!("{MANAGED_BY}={MANAGER}")
}

impl Controller {
    /// Runs until the task is dropped; returns only if the Pod watch never gets ready.
    pub async fn run(self, ready: impl Fn() + Send) -> Result<(), IdentityError> {
        let ns = self.settings.namespace.as_deref();
        let kick = Arc::new(Notify::new());
        let (reader, writer) = reflector::store::<Pod>();
        let mut watches = tokio::task::JoinSet::new();
        let k = kick.clone();
        let pods = reflector::reflector(
            writer,
            watcher(api::<Pod>(&self.client, ns), watcher::Config::default()),
        )
        .default_backoff();
        watches.spawn(pods.for_each(move |ev| {
            if ev.is_ok() {
                k.notify_one();
            }
            async {}
        }));
        // Secrets are watched only to notice edits and deletions made by others.
        let k = kick.clone();
        let secrets = watcher(
            api::<Secret>(&self.client, ns),
            watcher::Config::default().labels(&selector()),
        )
        .default_backoff();
        watches.spawn(secrets.for_each(move |ev| {
            if ev.is_ok() {
                k.notify_one();
            }
            async {}
        }));
        reader
            .wait_until_ready()
            .await
            .map_err(|_| IdentityError::NotReady)?;
        ready();
        let naming = Naming {
            trust_domain: &self.settings.ca.trust_domain,
            cluster_domain: &self.settings.cluster_domain,
        };
        let mut attempt = 0u32;
        loop {
            let wants: Vec<Want> = reader
                .state()
                .iter()
                .filter_map(|p| desired::want(p, naming))
                .collect();
            let result = self.pass(&wants).await;
            let wait = match result {
                Ok(next) => {
                    attempt = 0;
                    next.and_then(|t| t.duration_since(SystemTime::now()).ok())
                        .unwrap_or(if next.is_some() {
                            Duration::ZERO
                        } else {
                            RESYNC
                        })
                        .min(RESYNC)
                }
                Err(e) => {
                    attempt += 1;
                    let wait = kube_util::backoff_from(FIRST_BACKOFF, attempt, MAX_BACKOFF);
                    tracing::warn!(error = %e, retry_in = ?wait, "identity pass incomplete");
                    wait
                }
            };
            let _ = tokio::time::timeout(wait, kick.notified()).await;
            // Let a burst of events settle into one pass.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// One pass; the earliest next renewal, or the first error (after trying every step).
    async fn pass(&self, wants: &[Want]) -> Result<Option<SystemTime>, IdentityError> {
        let list = api::<Secret>(&self.client, self.settings.namespace.as_deref())
            .list(&ListParams::default().labels(&selector()))
            .await
            .map_err(IdentityError::List)?;
        let haves: Vec<Have> = list.items.iter().filter_map(Have::of).collect();
        let now = SystemTime::now();
        let (steps, mut next) = desired::plan(wants, &haves, now);
        self.metrics.managed.set(wants.len() as i64);
        let mut first_error = None;
        for step in steps {
            let done = match &step {
                Step::Issue(w, why) => self.issue(w).await.map(|renew| {
                    self.metrics
                        .issued
                        .get_or_create(&Reason {
                            reason: why.reason(),
                        })
                        .inc();
                    tracing::info!(pod = %format!("{}/{}", w.namespace, w.pod), secret = %w.secret, reason = why.reason(), "certificate issued");
                    next = Some(next.map_or(renew, |n| n.min(renew)));
                }),
                Step::Delete { namespace, secret } => self.delete(namespace, secret).await,
            };
            if let Err(e) = done {
                self.metrics.failures.inc();
                tracing::warn!(error = %e, "identity step failed");
                first_error.get_or_insert(e);
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(next),
        }
    }

    /// Issues and applies; returns when it is due for renewal.
    async fn issue(&self, w: &Want) -> Result<SystemTime, IdentityError> {
        let ca = self.ca.current();
        let now = SystemTime::now();
        let (signed, key_pem) = ca
            .issue(&w.names.spiffe_id, &w.names.dns, &w.names.ips, now)
            .map_err(|source| IdentityError::Sign {
                namespace: w.namespace.clone(),
                pod: w.pod.clone(),
                source,
            })?;
        let serial = serial_of(&signed.chain_pem).unwrap_or_default();
        // Whole seconds: what the annotation can hold is what renewal is planned from.
        let issued_at = desired::whole_seconds(now);
        let secret = desired::secret(
            w,
            &Issued {
                chain_pem: &signed.chain_pem,
                key_pem: &key_pem,
                anchors_pem: &signed.anchors_pem,
                issued_at,
                not_after: signed.not_after,
                serial: &serial,
            },
        );
        Api::<Secret>::namespaced(self.client.clone(), &w.namespace)
            .patch(
                &w.secret,
                &PatchParams::apply(MANAGER).force(),
                &Patch::Apply(&secret),
            )
            .await
            .map_err(|source| IdentityError::Api {
                what: "applying Secret",
                namespace: w.namespace.clone(),
                name: w.secret.clone(),
                source,
            })?;
        Ok(mesh_controller::identity::renew_at(
            issued_at,
            signed.not_after,
        ))
    }

    async fn delete(&self, namespace: &str, secret: &str) -> Result<(), IdentityError> {
        match Api::<Secret>::namespaced(self.client.clone(), namespace)
            .delete(secret, &DeleteParams::default())
            .await
        {
            Ok(_) => {
                self.metrics.deleted.inc();
                tracing::info!(secret = %format!("{namespace}/{secret}"), "identity Secret no Pod wants deleted");
                Ok(())
            }
            Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
            Err(source) => Err(IdentityError::Api {
                what: "deleting Secret",
                namespace: namespace.into(),
                name: secret.into(),
                source,
            }),
        }
    }
}

/// The serial number (hex) of the first certificate in `pem_text`.
pub fn serial_of(pem_text: &str) -> Option<String> {
    let first = pem::parse_many(pem_text).ok()?.into_iter().next()?;
    let (_, cert) = x509_parser::parse_x509_certificate(first.contents()).ok()?;
    Some(cert.raw_serial_as_string().replace(':', ""))
}

/// The controller run inside this process (the demo and the lab tests): the CA's namespace is
/// made when missing, the CA loaded (or made), and the loop runs until this is dropped.
pub struct InProcess {
    /// The CA the loop signs with (e.g. to issue an impostor's certificate in a test).
    pub ca: CaHandle,
    pub metrics: Metrics,
    task: tokio::task::JoinHandle<()>,
}

impl InProcess {
    pub async fn start(
        client: &kube::Client,
        settings: Settings,
    ) -> Result<InProcess, IdentityError> {
        let ns: k8s_openapi::api::core::v1::Namespace = serde_json::from_value(
            serde_json::json!({"metadata": {"name": settings.ca.namespace}}),
        )
        .expect("a Namespace");
        match Api::all(client.clone())
            .create(&Default::default(), &ns)
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(source) => {
                return Err(IdentityError::Api {
                    what: "creating namespace",
                    namespace: settings.ca.namespace.clone(),
                    name: settings.ca.namespace.clone(),
                    source,
                });
            }
        }
        let (authority, _) = mesh_controller::ca::load_or_create(client, &settings.ca).await?;
        let ca = CaHandle::new(authority);
        let metrics = Metrics::new(&mut Registry::default());
        let controller = Controller {
            client: client.clone(),
            settings,
            ca: ca.clone(),
            metrics: metrics.clone(),
        };
        let task = tokio::spawn(async move {
            if let Err(e) = controller.run(|| {}).await {
                tracing::warn!(error = %e, "the identity controller stopped");
            }
        });
        Ok(InProcess { ca, metrics, task })
    }

    /// The mesh's trust anchors (PEM).
    pub fn anchors(&self) -> String {
        self.ca.current().anchors_pem().to_string()
    }
}

impl Drop for InProcess {
    fn drop(&mut self) {
        self.task.abort();
    }
}
