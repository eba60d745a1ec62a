//! Who a request comes from: client certificates (CN is the user, O the groups), the admin
//! bearer token, and ServiceAccount tokens the server issued through TokenRequest.
//!
//! ServiceAccount tokens are JWTs with the claims a real cluster's carry (`iss`, `sub`, `aud`,
//! `exp`, `kubernetes.io` with the namespace, account and bound Pod). The lab signs them with
//! HMAC-SHA256 under a key kept with its PKI, not with an RSA key: nothing outside the lab
//! verifies them, and they stay valid across restarts with a data dir. A token authenticates
//! only while it has not expired, names one of the audiences asked for (the API server's own
//! when none are), its ServiceAccount still exists with the same UID, and so does the Pod it
//! is bound to.

use base64::Engine;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The audience tokens get when TokenRequest names none, and what API requests require.
pub const API_AUDIENCE: &str = "https://kubernetes.default.svc.cluster.local";
/// The `iss` claim of the tokens the lab issues.
pub const ISSUER: &str = "https://kubernetes.default.svc.cluster.local";

pub const AUTHENTICATED: &str = "system:authenticated";
pub const UNAUTHENTICATED: &str = "system:unauthenticated";
/// The user of requests that carry no credentials.
pub const ANONYMOUS: &str = "system:anonymous";

/// An authenticated identity (`user.Info`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct UserInfo {
    pub name: String,
    pub uid: String,
    pub groups: Vec<String>,
    pub extra: BTreeMap<String, Vec<String>>,
}

impl UserInfo {
    /// The admin: what the admin kubeconfig's certificate and the admin token authenticate as.
    pub fn admin() -> Self {
        UserInfo {
            name: "lab-admin".into(),
            groups: vec![crate::rbac::MASTERS.into(), AUTHENTICATED.into()],
            ..Default::default()
        }
    }

    /// Who a request without credentials is, as kube-apiserver's anonymous authenticator says:
    /// `system:anonymous` in `system:unauthenticated`; RBAC then decides what it may do.
    pub fn anonymous() -> Self {
        UserInfo {
            name: ANONYMOUS.into(),
            groups: vec![UNAUTHENTICATED.into()],
            ..Default::default()
        }
    }

    /// `system:serviceaccount:NS:NAME` with the groups every ServiceAccount has.
    pub fn service_account(ns: &str, name: &str, uid: &str) -> Self {
        UserInfo {
            name: format!("system:serviceaccount:{ns}:{name}"),
            uid: uid.into(),
            groups: vec![
                "system:serviceaccounts".into(),
                format!("system:serviceaccounts:{ns}"),
                AUTHENTICATED.into(),
            ],
            ..Default::default()
        }
    }

    /// The user a client certificate names: CN the name, each O a group.
    pub fn from_certificate(der: &[u8]) -> Option<Self> {
        let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
        let subject = cert.subject();
        let name = subject
            .iter_common_name()
            .next()?
            .as_str()
            .ok()?
            .to_string();
        let mut groups: Vec<String> = subject
            .iter_organization()
            .filter_map(|o| o.as_str().ok().map(String::from))
            .collect();
        groups.push(AUTHENTICATED.into());
        Some(UserInfo {
            name,
            groups,
            ..Default::default()
        })
    }

    /// The `userInfo` of reviews and admission requests.
    pub fn to_json(&self) -> serde_json::Value {
        let mut v = serde_json::json!({"username": self.name, "groups": self.groups});
        if !self.uid.is_empty() {
            v["uid"] = self.uid.clone().into();
        }
        if !self.extra.is_empty() {
            v["extra"] = serde_json::json!(self.extra);
        }
        v
    }
}

/// A name and UID, as the `kubernetes.io` claim records the account and the bound object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Ref {
    pub name: String,
    pub uid: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct KubeClaims {
    pub namespace: String,
    pub serviceaccount: Ref,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<Ref>,
}

/// The claims of a ServiceAccount token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub iss: String,
    pub sub: String,
    pub aud: Vec<String>,
    pub exp: i64,
    pub iat: i64,
    pub nbf: i64,
    pub jti: String,
    #[serde(rename = "kubernetes.io")]
    pub kube: KubeClaims,
}

impl Claims {
    /// The user the token authenticates as (with the bound Pod in `extra`, as a real server
    /// reports it).
    pub fn user(&self) -> UserInfo {
        let mut u = UserInfo::service_account(
            &self.kube.namespace,
            &self.kube.serviceaccount.name,
            &self.kube.serviceaccount.uid,
        );
        u.extra.insert(
            "authentication.kubernetes.io/credential-id".into(),
            vec![format!("JTI={}", self.jti)],
        );
        if let Some(p) = &self.kube.pod {
            u.extra.insert(
                "authentication.kubernetes.io/pod-name".into(),
                vec![p.name.clone()],
            );
            u.extra.insert(
                "authentication.kubernetes.io/pod-uid".into(),
                vec![p.uid.clone()],
            );
        }
        u
    }
}

fn b64(b: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

/// Signs claims into a compact JWT (HS256).
pub fn sign(key: &[u8], claims: &Claims) -> String {
    let header = b64(br#"{"alg":"HS256","typ":"JWT"}"#);
    let body = b64(&serde_json::to_vec(claims).expect("claims serialize"));
    let input = format!("{header}.{body}");
    let k = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key);
    let tag = ring::hmac::sign(&k, input.as_bytes());
    format!("{input}.{}", b64(tag.as_ref()))
}

/// Why a token does not authenticate (the wording TokenReview's `status.error` carries).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("invalid bearer token")]
    Malformed,
    #[error("invalid bearer token, token is expired (exp)")]
    Expired,
    #[error("invalid bearer token, token not valid yet (nbf)")]
    NotYet,
    #[error(
        "invalid bearer token, token audiences {token:?} is invalid for the target audiences {wanted:?}"
    )]
    Audience {
        token: Vec<String>,
        wanted: Vec<String>,
    },
    #[error("invalid bearer token, service account token has been invalidated")]
    Invalidated,
}

/// Checks a token's signature, time window and audiences; returns its claims and the
/// audiences (of `wanted`) it is valid for. Whether its account and Pod still exist is the
/// caller's check.
pub fn verify(
    key: &[u8],
    token: &str,
    wanted: &[String],
    now: i64,
) -> Result<(Claims, Vec<String>), TokenError> {
    let mut parts = token.split('.');
    let (Some(h), Some(b), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(TokenError::Malformed);
    };
    let dec = |x: &str| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(x)
            .map_err(|_| TokenError::Malformed)
    };
    let k = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key);
    ring::hmac::verify(&k, format!("{h}.{b}").as_bytes(), &dec(s)?)
        .map_err(|_| TokenError::Malformed)?;
    let claims: Claims = serde_json::from_slice(&dec(b)?).map_err(|_| TokenError::Malformed)?;
    if claims.iss != ISSUER {
        return Err(TokenError::Malformed);
    }
    if now >= claims.exp {
        return Err(TokenError::Expired);
    }
    if now < claims.nbf {
        return Err(TokenError::NotYet);
    }
    let ok: Vec<String> = wanted
        .iter()
        .filter(|a| claims.aud.contains(a))
        .cloned()
        .collect();
    if ok.is_empty() {
        return Err(TokenError::Audience {
            token: claims.aud.clone(),
            wanted: wanted.to_vec(),
        });
    }
    Ok((claims, ok))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(aud: &[&str]) -> Claims {
        Claims {
            iss: ISSUER.into(),
            sub: "system:serviceaccount:shop:web".into(),
            aud: aud.iter().map(|a| a.to_string()).collect(),
            exp: 2_000,
            iat: 1_000,
            nbf: 1_000,
            jti: "j1".into(),
            kube: KubeClaims {
                namespace: "shop".into(),
                serviceaccount: Ref {
                    name: "web".into(),
                    uid: "sa-uid".into(),
                },
                pod: Some(Ref {
                    name: "web-1".into(),
                    uid: "pod-uid".into(),
                }),
            },
        }
    }

    #[test]
    fn tokens_verify_only_with_key_time_and_audience() {
        let key = b"0123456789abcdef";
        let api = vec![API_AUDIENCE.to_string()];
        let t = sign(key, &claims(&[API_AUDIENCE, "vault"]));
        let (c, aud) = verify(key, &t, &api, 1_500).unwrap();
        assert_eq!(aud, api);
        let u = c.user();
        assert_eq!(u.name, "system:serviceaccount:shop:web");
        assert_eq!(
            u.groups,
            [
                "system:serviceaccounts",
                "system:serviceaccounts:shop",
                AUTHENTICATED
            ]
        );
        assert_eq!(u.extra["authentication.kubernetes.io/pod-name"], ["web-1"]);
        assert_eq!(
            verify(key, &t, &["vault".into(), "x".into()], 1_500)
                .unwrap()
                .1,
            ["vault"]
        );
        assert_eq!(
            verify(key, &t, &["x".into()], 1_500).unwrap_err(),
            TokenError::Audience {
                token: vec![API_AUDIENCE.into(), "vault".into()],
                wanted: vec!["x".into()]
            }
        );
        assert_eq!(
            verify(key, &t, &api, 2_000).unwrap_err(),
            TokenError::Expired
        );
        assert_eq!(verify(key, &t, &api, 999).unwrap_err(), TokenError::NotYet);
        assert_eq!(
            verify(b"another key", &t, &api, 1_500).unwrap_err(),
            TokenError::Malformed
        );
        // A changed claim breaks the signature.
        let mut parts: Vec<String> = t.split('.').map(String::from).collect();
        let mut forged = claims(&[API_AUDIENCE]);
        forged.kube.namespace = "kube-system".into();
        parts[1] = b64(&serde_json::to_vec(&forged).unwrap());
        assert_eq!(
            verify(key, &parts.join("."), &api, 1_500).unwrap_err(),
            TokenError::Malformed
        );
        assert_eq!(
            verify(key, "not-a-jwt", &api, 1_500).unwrap_err(),
            TokenError::Malformed
        );
    }
}
