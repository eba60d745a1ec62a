//! Callers are Pods: their projected ServiceAccount token (audience: the mesh's) is checked with
//! a TokenReview for that audience; the Pod's name and UID come from the review's `extra`
//! (set by the API server for Pod-bound tokens), never from anything the caller says.

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use kube::api::{Api, PostParams};
use std::future::Future;
use std::pin::Pin;

const POD_NAME: &str = "authentication.kubernetes.io/pod-name";
const POD_UID: &str = "authentication.kubernetes.io/pod-uid";
const SA_PREFIX: &str = "system:serviceaccount:";

/// An authenticated proxy.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Caller {
    pub namespace: String,
    pub service_account: String,
    pub pod_name: String,
    pub pod_uid: String,
}

impl Caller {
    /// `namespace/pod`.
    pub fn pod(&self) -> String {
        format!("{}/{}", self.namespace, self.pod_name)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("no `authorization: Bearer <token>` metadata")]
    Missing,
    #[error("token refused: {0}")]
    Refused(String),
    #[error("token of {0:?} is not a ServiceAccount's")]
    NotServiceAccount(String),
    #[error("token of {0:?} is not bound to a Pod (no {POD_NAME} and {POD_UID} in the review)")]
    NotPodBound(String),
    #[error("TokenReview failed: {0}")]
    Review(#[from] kube::Error),
}

impl AuthError {
    /// For the `reason` label of the auth failure metric.
    pub fn reason(&self) -> &'static str {
        match self {
            AuthError::Missing => "missing",
            AuthError::Refused(_) => "refused",
            AuthError::NotServiceAccount(_) => "not_service_account",
            AuthError::NotPodBound(_) => "not_pod_bound",
            AuthError::Review(_) => "review_failed",
        }
    }
}

/// Who a token belongs to. The controller's is [`TokenReviewer`]; tests of the pure parts may
/// use their own.
pub trait Authenticate: Send + Sync + 'static {
    fn authenticate<'a>(
        &'a self,
        token: &'a str,
    ) -> Pin<Box<dyn Future<Output = Result<Caller, AuthError>> + Send + 'a>>;
}

/// TokenReview against the API server, for one audience. The controller's ServiceAccount needs
/// `system:auth-delegator`.
pub struct TokenReviewer {
    api: Api<TokenReview>,
    audience: String,
}

impl TokenReviewer {
    pub fn new(client: kube::Client, audience: impl Into<String>) -> Self {
        TokenReviewer {
            api: Api::all(client),
            audience: audience.into(),
        }
    }

    pub async fn review(&self, token: &str) -> Result<Caller, AuthError> {
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.to_string()),
                audiences: Some(vec![self.audience.clone()]),
            },
            ..TokenReview::default()
        };
        let status = self
            .api
            .create(&PostParams::default(), &review)
            .await?
            .status
            .unwrap_or_default();
        if status.authenticated != Some(true) {
            return Err(AuthError::Refused(
                status.error.unwrap_or_else(|| "not authenticated".into()),
            ));
        }
        if !status
            .audiences
            .unwrap_or_default()
            .contains(&self.audience)
        {
            return Err(AuthError::Refused(format!(
                "not valid for the audience {:?}",
                self.audience
            )));
        }
        caller_of(status.user.unwrap_or_default())
    }
}

/// The caller named by a successful review's user info.
pub fn caller_of(
    user: k8s_openapi::api::authentication::v1::UserInfo,
) -> Result<Caller, AuthError> {
    let name = user.username.unwrap_or_default();
    let (namespace, service_account) = name
        .strip_prefix(SA_PREFIX)
        .and_then(|r| r.split_once(':'))
        .filter(|(ns, sa)| !ns.is_empty() && !sa.is_empty())
        .ok_or_else(|| AuthError::NotServiceAccount(name.clone()))?;
    let extra = user.extra.unwrap_or_default();
    let one = |k: &str| {
        extra
            .get(k)
            .and_then(|v| v.first())
            .filter(|v| !v.is_empty())
            .cloned()
    };
    let (Some(pod_name), Some(pod_uid)) = (one(POD_NAME), one(POD_UID)) else {
        return Err(AuthError::NotPodBound(name.clone()));
    };
    Ok(Caller {
        namespace: namespace.to_string(),
        service_account: service_account.to_string(),
        pod_name,
        pod_uid,
    })
}

impl Authenticate for TokenReviewer {
    fn authenticate<'a>(
        &'a self,
        token: &'a str,
    ) -> Pin<Box<dyn Future<Output = Result<Caller, AuthError>> + Send + 'a>> {
        Box::pin(self.review(token))
    }
}

/// The bearer token of a gRPC call's metadata.
pub fn bearer(md: &tonic::metadata::MetadataMap) -> Result<&str, AuthError> {
    md.get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or(AuthError::Missing)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::authentication::v1::UserInfo;
    use std::collections::BTreeMap;

    fn user(name: &str, extra: &[(&str, &str)]) -> UserInfo {
        UserInfo {
            username: Some(name.into()),
            extra: Some(
                extra
                    .iter()
                    .map(|(k, v)| (k.to_string(), vec![v.to_string()]))
                    .collect::<BTreeMap<_, _>>(),
            ),
            ..UserInfo::default()
        }
    }

    #[test]
    fn the_pod_comes_from_the_review_only() {
        let c = caller_of(user(
            "system:serviceaccount:shop:web",
            &[(POD_NAME, "web-1"), (POD_UID, "u-1")],
        ))
        .unwrap();
        assert_eq!(c.pod(), "shop/web-1");
        assert_eq!(
            (c.service_account.as_str(), c.pod_uid.as_str()),
            ("web", "u-1")
        );
        assert!(matches!(
            caller_of(user(
                "system:serviceaccount:shop:web",
                &[(POD_NAME, "web-1")]
            )),
            Err(AuthError::NotPodBound(_))
        ));
        assert!(matches!(
            caller_of(user("alice", &[(POD_NAME, "x"), (POD_UID, "y")])),
            Err(AuthError::NotServiceAccount(_))
        ));
    }

    #[test]
    fn bearer_needs_the_scheme_and_a_token() {
        let mut md = tonic::metadata::MetadataMap::new();
        assert!(bearer(&md).is_err());
        md.insert("authorization", "Basic abc".parse().unwrap());
        assert!(bearer(&md).is_err());
        md.insert("authorization", "Bearer abc".parse().unwrap());
        assert_eq!(bearer(&md).unwrap(), "abc");
    }
}
