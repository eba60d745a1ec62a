//! The `MeshControl` gRPC service.
//!
//! `StreamConfig`: the caller is authenticated first (TokenReview); its first message must be
//! `subscribe`; then it gets its whole view as a snapshot, and after every change of the model
//! the difference to what it was last sent, each with the model's version. ACKs and NACKs are
//! counted, kept per subscriber ([`Controller::subscribers`]) and logged; a NACK changes nothing
//! on the controller's side: the proxy keeps its last good config and the next version is sent
//! as usual (it may fix what the refused one broke).

use crate::auth::{Authenticate, Caller, bearer};
use crate::ca::{CaHandle, SignError};
use crate::metrics::Metrics;
use crate::model::{Model, ServiceMap, advance, view_for};
use futures::Stream;
use mesh_api::v1::mesh_control_server::{MeshControl, MeshControlServer};
use mesh_api::v1::proxy_message::Kind;
use mesh_api::v1::{CertificateRequest, CertificateResponse, ConfigUpdate, ProxyMessage};
use prost::Message;
use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;
use tonic::{Request, Response, Status, Streaming};

/// What the controller knows about one open stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscriber {
    pub caller: Caller,
    /// Last version sent.
    pub sent: u64,
    /// Last version the proxy acknowledged (0: none yet).
    pub acked: u64,
    /// Last version refused, with the proxy's reason.
    pub nacked: Option<(u64, String)>,
}

#[derive(Clone)]
pub struct Controller {
    model: Model,
    auth: Arc<dyn Authenticate>,
    metrics: Metrics,
    subscribers: Arc<Mutex<BTreeMap<u64, Subscriber>>>,
    next_id: Arc<AtomicU64>,
    ca: Option<CaHandle>,
    events: Option<kube::Client>,
}

impl Controller {
    pub fn new(model: Model, auth: Arc<dyn Authenticate>, metrics: Metrics) -> Self {
        Controller {
            model,
            auth,
            metrics,
            subscribers: Arc::default(),
            next_id: Arc::default(),
            ca: None,
            events: None,
        }
    }

    /// Signs the proxies' certificates with this CA (without one, `SignCertificate` is
    /// UNIMPLEMENTED).
    pub fn with_ca(mut self, ca: CaHandle) -> Self {
        self.ca = Some(ca);
        self
    }

    /// Reports refused config versions as Events on the proxy's Pod.
    pub fn with_events(mut self, client: kube::Client) -> Self {
        self.events = Some(client);
        self
    }

    /// Who is calling, from the bearer token; a refusal is counted and logged.
    async fn caller(
        &self,
        metadata: &tonic::metadata::MetadataMap,
        call: &str,
    ) -> Result<Caller, Status> {
        let caller = match bearer(metadata) {
            Ok(token) => self.auth.authenticate(token).await,
            Err(e) => Err(e),
        };
        caller.map_err(|e| {
            self.metrics
                .auth_failures
                .get_or_create(&vec![("reason", e.reason().to_string())])
                .inc();
            tracing::info!(error = %e, call, "call refused");
            Status::unauthenticated(e.to_string())
        })
    }

    /// The open streams.
    pub fn subscribers(&self) -> Vec<Subscriber> {
        self.lock().values().cloned().collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Subscriber>> {
        self.subscribers.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn into_service(self) -> MeshControlServer<Controller> {
        MeshControlServer::new(self)
    }

    fn edit(&self, id: u64, f: impl FnOnce(&mut Subscriber)) {
        if let Some(s) = self.lock().get_mut(&id) {
            f(s);
        }
    }

    /// Reads the proxy's ACKs and NACKs until the stream ends.
    async fn read_acks(self, id: u64, mut inbound: Streaming<ProxyMessage>) {
        loop {
            let msg = match inbound.message().await {
                Ok(Some(m)) => m,
                Ok(None) => return,
                Err(e) => {
                    tracing::debug!(error = %e, "config stream: read ended");
                    return;
                }
            };
            match msg.kind {
                Some(Kind::Ack(a)) => {
                    self.metrics.acks.inc();
                    self.edit(id, |s| s.acked = s.acked.max(a.version));
                }
                Some(Kind::Nack(n)) => {
                    self.metrics.nacks.inc();
                    let mut caller = None;
                    self.edit(id, |s| {
                        caller = Some(s.caller.clone());
                        s.nacked = Some((n.version, n.error.clone()));
                    });
                    let pod = caller.as_ref().map(Caller::pod).unwrap_or_default();
                    tracing::warn!(%pod, version = n.version, error = %n.error, "proxy refused a config version; it keeps its previous one");
                    if let (Some(client), Some(c)) = (&self.events, caller) {
                        let client = client.clone();
                        let message = format!(
                            "the proxy refused config version {}: {}; it keeps its previous config",
                            n.version, n.error
                        );
                        tokio::spawn(async move {
                            kube_util::event::record(&client, nack_report(&c, message)).await;
                        });
                    }
                }
                Some(Kind::Subscribe(_)) | None => {
                    tracing::debug!(
                        "config stream: ignoring a repeated subscribe or empty message"
                    );
                }
            }
        }
    }

    /// Sends the snapshot, then deltas, until the proxy goes away. The proxy's view is kept and
    /// brought up to date per version ([`advance`]): only the entries a version changed are
    /// looked at, and a version that changes nothing this proxy sees sends nothing.
    async fn push(self, id: u64, caller: Caller, tx: mpsc::Sender<Result<ConfigUpdate, Status>>) {
        let mut states = self.model.subscribe();
        let mut view: Option<(ServiceMap, u64)> = None;
        loop {
            let state = states.borrow_and_update().clone();
            let update = match &mut view {
                None => {
                    let v = view_for(&state, &caller);
                    let u = ConfigUpdate {
                        version: state.version,
                        snapshot: true,
                        services: v.values().map(|s| (**s).clone()).collect(),
                        removed: vec![],
                        pod: caller.pod(),
                    };
                    view = Some((v, state.version));
                    Some(u)
                }
                Some((v, seen)) => {
                    let (services, removed, how) = advance(v, *seen, &state, &caller.namespace);
                    *seen = state.version;
                    self.metrics
                        .recomputes
                        .get_or_create(&vec![("how", format!("{how:?}").to_lowercase())])
                        .inc();
                    (!services.is_empty() || !removed.is_empty()).then(|| ConfigUpdate {
                        version: state.version,
                        snapshot: false,
                        services,
                        removed,
                        pod: caller.pod(),
                    })
                }
            };
            if let Some(u) = update {
                let kind = if u.snapshot { "snapshot" } else { "delta" };
                self.metrics
                    .updates
                    .get_or_create(&vec![("kind", kind.to_string())])
                    .inc();
                self.metrics.update_bytes.inc_by(u.encoded_len() as u64);
                self.metrics.version.set(state.version as i64);
                self.edit(id, |s| s.sent = state.version);
                if tx.send(Ok(u)).await.is_err() {
                    return;
                }
            }
            tokio::select! {
                changed = states.changed() => if changed.is_err() { return },
                _ = tx.closed() => return,
            }
        }
    }
}

/// Removes a subscriber when its stream ends, however it ends.
struct Registration {
    controller: Controller,
    id: u64,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.controller.lock().remove(&self.id);
        self.controller.metrics.subscribers.dec();
    }
}

type UpdateStream = Pin<Box<dyn Stream<Item = Result<ConfigUpdate, Status>> + Send>>;

#[tonic::async_trait]
impl MeshControl for Controller {
    type StreamConfigStream = UpdateStream;

    async fn stream_config(
        &self,
        request: Request<Streaming<ProxyMessage>>,
    ) -> Result<Response<UpdateStream>, Status> {
        let caller = self.caller(request.metadata(), "StreamConfig").await?;
        let mut inbound = request.into_inner();
        match inbound.message().await? {
            Some(ProxyMessage {
                kind: Some(Kind::Subscribe(s)),
            }) => {
                tracing::info!(pod = %caller.pod(), proxy = %s.proxy_version, running = s.running_version, "proxy subscribed");
            }
            _ => {
                return Err(Status::invalid_argument(
                    "the first message of StreamConfig must be `subscribe`",
                ));
            }
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.lock().insert(
            id,
            Subscriber {
                caller: caller.clone(),
                sent: 0,
                acked: 0,
                nacked: None,
            },
        );
        self.metrics.subscribers.inc();
        let reg = Registration {
            controller: self.clone(),
            id,
        };
        let (tx, mut rx) = mpsc::channel(4);
        let reader = tokio::spawn(self.clone().read_acks(id, inbound));
        let pusher = self.clone().push(id, caller, tx);
        tokio::spawn(async move {
            // Either side ending ends the stream; the registration goes with it.
            tokio::select! {
                _ = pusher => {}
                _ = reader => {}
            }
            drop(reg);
        });
        let stream = futures::stream::poll_fn(move |cx| rx.poll_recv(cx));
        Ok(Response::new(Box::pin(stream)))
    }

    async fn sign_certificate(
        &self,
        request: Request<CertificateRequest>,
    ) -> Result<Response<CertificateResponse>, Status> {
        let Some(ca) = &self.ca else {
            return Err(Status::unimplemented(
                "this controller has no CA (run it with --ca-secret)",
            ));
        };
        let caller = self.caller(request.metadata(), "SignCertificate").await?;
        let csr = request.into_inner().csr_pem;
        let count = |result: &str| {
            self.metrics
                .certificates
                .get_or_create(&vec![("result", result.to_string())])
                .inc();
        };
        match ca
            .current()
            .sign(&csr, &caller, std::time::SystemTime::now())
        {
            Ok(signed) => {
                count("signed");
                let not_after = signed
                    .not_after
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_secs() as i64;
                tracing::debug!(pod = %caller.pod(), not_after, "certificate signed");
                Ok(Response::new(CertificateResponse {
                    certificate_pem: signed.chain_pem,
                    trust_anchors_pem: signed.anchors_pem,
                    not_after,
                }))
            }
            Err(e) => {
                count(e.reason());
                tracing::warn!(pod = %caller.pod(), error = %e, "certificate refused");
                Err(match e {
                    SignError::BadCsr(_) => Status::invalid_argument(e.to_string()),
                    SignError::Identity { .. } | SignError::WantsCa => {
                        Status::permission_denied(e.to_string())
                    }
                    SignError::Sign(_) => Status::internal(e.to_string()),
                })
            }
        }
    }
}

/// The Event for a refused version, on the proxy's Pod.
fn nack_report(c: &Caller, message: String) -> kube_util::event::Report<'static> {
    kube_util::event::Report {
        component: "ghostwire-controller",
        warning: true,
        reason: "ConfigRefused",
        action: "Push",
        message,
        about: k8s_openapi::api::core::v1::ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Pod".into()),
            namespace: Some(c.namespace.clone()),
            name: Some(c.pod_name.clone()),
            uid: Some(c.pod_uid.clone()),
            ..Default::default()
        },
    }
}

/// Serves `controller` on `listener` (plaintext HTTP/2) until `shutdown` completes; then every
/// connection is closed at once, so proxies see the controller gone and fail over or wait.
pub async fn serve(
    controller: Controller,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()>,
) {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use hyper_util::server::conn::auto::Builder;
    use hyper_util::service::TowerToHyperService;
    let service = controller.into_service();
    let mut connections = tokio::task::JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            _ = &mut shutdown => return,
            accepted = listener.accept() => match accepted {
                Ok((s, _)) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "controller: accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
        };
        let _ = stream.set_nodelay(true);
        let svc = TowerToHyperService::new(service.clone());
        connections.spawn(async move {
            if let Err(e) = Builder::new(TokioExecutor::new())
                .http2_only()
                .serve_connection(TokioIo::new(stream), svc)
                .await
            {
                tracing::debug!(error = %e, "controller: connection ended with an error");
            }
        });
    }
}
