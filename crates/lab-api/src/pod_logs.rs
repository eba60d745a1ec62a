//! `GET /api/v1/namespaces/{ns}/pods/{name}/log`: the API server forwards log requests to the
//! node that runs the Pod, as kube-apiserver forwards them to the kubelet. The node plugs in
//! through [`PodLogs`] ([`crate::Options::pod_logs`]); without one the subresource answers like a
//! cluster whose node is unreachable.

use crate::http::{Body, Request};
use crate::server::State;
use crate::status::{ApiError, Subject};
use bytes::Bytes;
use futures::future::BoxFuture;
use http_body_util::{BodyExt, StreamBody};
use hyper::Response;
use hyper::body::Frame;
use serde_json::Value;
use std::convert::Infallible;
use std::sync::Arc;
use tokio::sync::mpsc;

/// The query of a log request (`PodLogOptions`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogRequest {
    /// `container`: `None` when the client named none.
    pub container: Option<String>,
    /// `previous`: the last terminated instance of the container.
    pub previous: bool,
    /// `follow`: keep streaming until the container ends.
    pub follow: bool,
    /// `tailLines`.
    pub tail_lines: Option<u64>,
    /// `limitBytes`.
    pub limit_bytes: Option<u64>,
    /// `timestamps`.
    pub timestamps: bool,
}

/// Why a node could not serve logs; mapped to the status a real API server returns.
#[derive(Debug, thiserror::Error)]
pub enum PodLogError {
    /// 400, e.g. "container x is not valid for pod y" or "previous terminated container ... not found".
    #[error("{0}")]
    BadRequest(String),
    /// 500, e.g. the node could not read the log file.
    #[error("{0}")]
    Internal(String),
}

/// Serves Pod logs: implemented by the lab node. `pod` is the stored Pod object.
pub trait PodLogs: Send + Sync {
    /// Returns a channel of log bytes; closing it ends the response.
    fn logs(
        &self,
        pod: Value,
        request: LogRequest,
    ) -> BoxFuture<'static, Result<mpsc::Receiver<Bytes>, PodLogError>>;
}

/// A [`PodLogs`] in [`crate::Options`] (cloneable, printable).
#[derive(Clone)]
pub struct PodLogsHandle(pub Arc<dyn PodLogs>);

impl std::fmt::Debug for PodLogsHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PodLogsHandle")
    }
}

fn number(req: &Request, name: &str) -> Result<Option<u64>, ApiError> {
    req.param(name)
        .map(|v| {
            v.parse::<u64>()
                .map_err(|_| ApiError::bad_request(format!("invalid {name} {v:?}: not a number")))
        })
        .transpose()
}

/// Answers a `pods/{name}/log` GET.
pub async fn serve(
    state: &Arc<State>,
    req: &Request,
    namespace: &str,
    name: &str,
) -> Result<Response<Body>, ApiError> {
    if req.method != hyper::Method::GET {
        return Err(ApiError::method_not_allowed(req.method.as_str()));
    }
    let key = crate::store::Key {
        group: String::new(),
        resource: "pods".into(),
        namespace: namespace.into(),
        name: name.into(),
    };
    let pod = state.store.get(&key).ok_or_else(|| {
        ApiError::not_found(Subject {
            group: "",
            kind: "pods",
            name,
        })
    })?;
    let request = LogRequest {
        container: req.param("container").map(str::to_string),
        previous: req.flag("previous"),
        follow: req.flag("follow"),
        tail_lines: number(req, "tailLines")?,
        limit_bytes: number(req, "limitBytes")?,
        timestamps: req.flag("timestamps"),
    };
    let Some(node) = state.pod_logs.clone() else {
        return Err(ApiError::bad_request(format!(
            "pod {name} does not run on a node that serves logs"
        )));
    };
    let rx = node
        .0
        .logs((*pod).clone(), request)
        .await
        .map_err(|e| match e {
            PodLogError::BadRequest(m) => ApiError::bad_request(m),
            PodLogError::Internal(m) => ApiError::internal(m),
        })?;
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|b| (Ok::<_, Infallible>(Frame::data(b)), rx))
    });
    Ok(Response::builder()
        .header("Content-Type", "text/plain")
        .header("Transfer-Encoding", "chunked")
        .body(BodyExt::boxed(StreamBody::new(stream)))
        .expect("static response parts are valid"))
}
