//! One AdmissionReview in, one out: decode, decide which capabilities a Pod CREATE wants
//! (annotations of the Pod over its owners' over the defaults ConfigMap), and answer with a
//! JSON Patch or a denial. Anything that is not a Pod CREATE is allowed unchanged.

use crate::capability::{Capability, Denial, PodPatch, Workload};
use crate::defaults::Defaults;
use crate::metrics::Outcome;
use crate::owner::{self, OwnerError};
use k8s_openapi::api::core::v1::Pod;
use kube::core::DynamicObject;
use kube::core::admission::{
    AdmissionRequest, AdmissionResponse, AdmissionReview, META_API_VERSION_V1, META_KIND, Operation,
};

/// Records which capabilities a Pod already got, so reinvocations and re-created Pods
/// (`kubectl get -o yaml | kubectl create -f -`) are not injected twice.
pub const INJECTED: &str = "ghostwire.dev/injected";

#[derive(Debug, thiserror::Error)]
pub enum ReviewError {
    /// The body is not an `admission.k8s.io/v1` AdmissionReview with a usable request.
    #[error("malformed AdmissionReview: {0}")]
    Malformed(String),
    #[error(transparent)]
    Owner(#[from] OwnerError),
    #[error("reading the defaults ConfigMap: {0}")]
    Defaults(#[source] Box<kube::Error>),
    #[error("cannot encode the response: {0}")]
    Encode(String),
}

/// What happens to a Pod whose owners cannot be read (the API timed out or refused) when the
/// Pod asks for nothing by its own labels and annotations or the defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OwnerReadFailure {
    /// Admit it unchanged, with a warning to its creator, a log line and the
    /// `owners_unread` result: an API hiccup does not block Pods that never opted in, at the
    /// cost of missing a Pod whose opt-in is only on its Deployment while the API fails.
    #[default]
    Admit,
    /// Fail the review (HTTP 500), so the webhook's failurePolicy decides.
    Fail,
}

impl std::str::FromStr for OwnerReadFailure {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "admit" => Ok(Self::Admit),
            "fail" => Ok(Self::Fail),
            other => Err(format!("expected \"admit\" or \"fail\", got {other:?}")),
        }
    }
}

pub struct Injector {
    capabilities: Vec<Box<dyn Capability>>,
    owners: owner::Owners,
    defaults: Defaults,
    owner_read_failure: OwnerReadFailure,
}

/// The answer to one review: the response body and how it ended.
pub struct Reviewed {
    pub body: Vec<u8>,
    pub outcome: Outcome,
}

impl Injector {
    pub fn new(
        capabilities: Vec<Box<dyn Capability>>,
        owners: owner::Owners,
        defaults: Defaults,
        owner_read_failure: OwnerReadFailure,
    ) -> Self {
        Injector {
            capabilities,
            owners,
            defaults,
            owner_read_failure,
        }
    }

    /// Answers one AdmissionReview request body.
    pub async fn review(&self, body: &[u8]) -> Result<Reviewed, ReviewError> {
        let malformed = |m: String| ReviewError::Malformed(m);
        let review: AdmissionReview<DynamicObject> =
            serde_json::from_slice(body).map_err(|e| malformed(e.to_string()))?;
        if review.types.api_version != META_API_VERSION_V1 || review.types.kind != META_KIND {
            return Err(malformed(format!(
                "expected apiVersion {META_API_VERSION_V1:?} and kind {META_KIND:?}, got {:?} and {:?}",
                review.types.api_version, review.types.kind
            )));
        }
        let request: AdmissionRequest<DynamicObject> = review
            .try_into()
            .map_err(|_| malformed("it has no request".into()))?;
        let (response, outcome) = self.admit(&request).await?;
        Ok(Reviewed {
            body: encode(response)?,
            outcome,
        })
    }

    async fn admit(
        &self,
        req: &AdmissionRequest<DynamicObject>,
    ) -> Result<(AdmissionResponse, Outcome), ReviewError> {
        let response = AdmissionResponse::from(req);
        let is_pod =
            req.kind.group.is_empty() && req.kind.version == "v1" && req.kind.kind == "Pod";
        if !is_pod || req.operation != Operation::Create || req.sub_resource.is_some() {
            return Ok((response, Outcome::Unchanged));
        }
        let object = req
            .object
            .as_ref()
            .ok_or_else(|| ReviewError::Malformed("a Pod CREATE without an object".into()))?;
        let pod: Pod = serde_json::to_value(object)
            .and_then(serde_json::from_value)
            .map_err(|e| ReviewError::Malformed(format!("request.object is not a Pod: {e}")))?;
        let namespace = req
            .namespace
            .clone()
            .or_else(|| pod.metadata.namespace.clone())
            .unwrap_or_else(|| "default".into());
        let own = owner::ghostwire_annotations(&pod.metadata);
        let mut workload = Workload {
            labels: pod.metadata.labels.clone().unwrap_or_default(),
            wanted: Vec::new(),
            annotations: own.clone(),
            defaults: self
                .defaults
                .get()
                .await
                .map_err(|e| ReviewError::Defaults(Box::new(e)))?,
            namespace,
        };
        // The cheap checks first: the Pod's own opt-in decides whether an owner that cannot
        // be read blocks it.
        match self
            .owners
            .annotations(&workload.namespace, &pod.metadata)
            .await
        {
            Ok(mut from_owners) => {
                from_owners.extend(own);
                workload.annotations = from_owners;
            }
            Err(e) => {
                let asks = match self.asks_by_itself(&workload) {
                    Ok(asks) => asks,
                    Err(denial) => return Ok((response.deny(denial), Outcome::Denied)),
                };
                if asks || self.owner_read_failure == OwnerReadFailure::Fail {
                    return Err(e.into());
                }
                tracing::warn!(namespace = %workload.namespace, pod = %pod_name(&pod), error = %e,
                    "admitted unchanged: its owners cannot be read and it asks for nothing by itself");
                let mut response = response;
                response.warnings = Some(vec![format!(
                    "ghostwire: admitted without injection: {e}; ghostwire.dev/ annotations on the Pod's owners were not seen"
                )]);
                return Ok((response, Outcome::OwnersUnread));
            }
        }
        let patch = match self.mutate(&pod, &mut workload) {
            Ok(patch) => patch,
            Err(denial) => {
                tracing::info!(namespace = %workload.namespace, pod = %pod_name(&pod), reason = %denial, "denied");
                return Ok((response.deny(denial), Outcome::Denied));
            }
        };
        let changed = !patch.is_empty();
        let (ops, warnings) = patch.into_parts();
        let mut response = if changed {
            tracing::info!(namespace = %workload.namespace, pod = %pod_name(&pod), "injected");
            response
                .with_patch(ops)
                .map_err(|e| ReviewError::Encode(e.to_string()))?
        } else {
            response
        };
        if !warnings.is_empty() {
            response.warnings = Some(warnings);
        }
        Ok((
            response,
            if changed {
                Outcome::Injected
            } else {
                Outcome::Unchanged
            },
        ))
    }

    /// Whether any capability wants the Pod by its own labels and annotations and the
    /// defaults alone (its owners unread).
    fn asks_by_itself(&self, workload: &Workload) -> Result<bool, Denial> {
        for cap in &self.capabilities {
            if cap.wants(workload)? {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// The patch for a Pod: each wanted capability not injected yet adds its pieces.
    fn mutate(&self, pod: &Pod, workload: &mut Workload) -> Result<PodPatch, Denial> {
        let mut patch = PodPatch::new(pod)?;
        // Every capability decides first, so that the ones that meet in this Pod can adapt.
        for cap in &self.capabilities {
            if cap.wants(workload)? {
                workload.wanted.push(cap.name());
            }
        }
        let workload = &*workload;
        let done: Vec<&str> = pod
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(INJECTED))
            .map(|v| v.split(',').map(str::trim).collect())
            .unwrap_or_default();
        let mut injected = done.clone();
        for cap in &self.capabilities {
            if workload.wanted.contains(&cap.name()) && !done.contains(&cap.name()) {
                cap.patch(pod, workload, &mut patch)?;
                injected.push(cap.name());
            }
        }
        for key in workload.annotations.keys() {
            let known = key == INJECTED
                || self
                    .capabilities
                    .iter()
                    .any(|c| c.annotations().contains(&key.as_str()));
            if !known {
                patch.warn(format!(
                    "ghostwire: unknown annotation {key} ignored (see docs/configuration.md)"
                ));
            }
        }
        if injected.len() > done.len() {
            patch.set_annotation(INJECTED, &injected.join(","));
        }
        Ok(patch)
    }
}

/// The response review as JSON. kube writes the patch bytes as an array of numbers; the API
/// server's Go decoder takes that too, but base64 is what Go itself writes for `[]byte` and
/// what every other consumer (the lab API included) reads.
fn encode(response: AdmissionResponse) -> Result<Vec<u8>, ReviewError> {
    use base64::Engine;
    let encoding = |e: serde_json::Error| ReviewError::Encode(e.to_string());
    let mut review = serde_json::to_value(response.into_review()).map_err(encoding)?;
    if let Some(patch) = review.pointer_mut("/response/patch") {
        let bytes: Vec<u8> = serde_json::from_value(patch.take()).map_err(encoding)?;
        *patch = base64::engine::general_purpose::STANDARD
            .encode(bytes)
            .into();
    }
    serde_json::to_vec(&review).map_err(encoding)
}

fn pod_name(pod: &Pod) -> &str {
    pod.metadata
        .name
        .as_deref()
        .or(pod.metadata.generate_name.as_deref())
        .unwrap_or("")
}
