//! LLM request rewriting for an attached Pod (`ghostwire.dev/ai: "true"`, or the seed's
//! `kube-gateway.io/ai`): the Pod's policy, from its annotations and its ConfigMap, for the
//! mesh proxy's rewriting layer (`mesh_proxy::llm`) on the agent's outbound path.
//!
//! - [`rewriter`] is pure: the Pod and its ConfigMaps → the policy in force (`None`: the Pod
//!   is not opted in). The ConfigMap is `<pod>-ghostwire-ai`, or else the seed's
//!   `<pod>-kube-gateway`, key `config`, the seed's JSON (`llm_rewrite::Policy`); no ConfigMap
//!   is the empty policy. `ghostwire.dev/ai-model` (or the seed's `kube-gateway.io/ai-model`)
//!   overrides every request's model.
//! - [`follow`] watches the Pod and both ConfigMaps by name (the Pod's ServiceAccount may
//!   get/list/watch just those: `ghostwire attach` grants it) and swaps the policy whole on
//!   every change, from the moment all three watches have listed (until then nothing is
//!   rewritten, never half a policy). A policy that does not parse is logged with the field
//!   and value and counted; the last good one stays in force.

use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::api::Api;
use kube::runtime::{WatchStreamExt, watcher};
use llm_rewrite::{Policy, Rewriter};
use mesh_proxy::llm::PolicyHandle;
use prometheus_client::metrics::counter::Counter;
use std::collections::BTreeMap;
use std::sync::Arc;
use tokio::sync::watch;

pub use mesh_config::ai::{AI, MODEL, SEED_AI, opted_in};

/// The ConfigMap's key.
pub const KEY: &str = "config";

/// The Pod's ConfigMap names: ours, then the seed's.
pub fn configmap_names(pod: &str) -> [String; 2] {
    [format!("{pod}-ghostwire-ai"), format!("{pod}-kube-gateway")]
}

#[derive(Debug, thiserror::Error)]
pub enum AiError {
    #[error("ConfigMap {configmap}: key {KEY:?} is missing")]
    MissingKey { configmap: String },
    #[error("ConfigMap {configmap}, key {KEY:?}: {source}")]
    Policy {
        configmap: String,
        #[source]
        source: llm_rewrite::ConfigError,
    },
}

/// The policy in force for `pod` given its ConfigMaps (ours, the seed's), pure.
pub fn rewriter(
    pod: &Pod,
    ours: Option<&ConfigMap>,
    seed: Option<&ConfigMap>,
) -> Result<Option<Rewriter>, AiError> {
    let empty = BTreeMap::new();
    let annotations = pod.metadata.annotations.as_ref().unwrap_or(&empty);
    if !opted_in(annotations) {
        return Ok(None);
    }
    let policy =
        match ours.or(seed) {
            None => Policy::default(),
            Some(cm) => {
                let configmap = cm.metadata.name.clone().unwrap_or_default();
                let text = cm.data.as_ref().and_then(|d| d.get(KEY)).ok_or_else(|| {
                    AiError::MissingKey {
                        configmap: configmap.clone(),
                    }
                })?;
                Policy::parse(text).map_err(|source| AiError::Policy { configmap, source })?
            }
        };
    let model_override = MODEL
        .iter()
        .find_map(|k| annotations.get(*k))
        .map(|m| m.trim().to_string())
        .filter(|m| !m.is_empty());
    Ok(Some(Rewriter {
        policy,
        model_override,
    }))
}

/// One watched object: what the last complete listing plus later events say.
struct Watched<K> {
    now: Option<K>,
    relist: Option<Option<K>>,
    /// A first listing completed: `now` is known, not just not seen yet.
    listed: bool,
}

impl<K> Watched<K> {
    fn new() -> Self {
        Watched {
            now: None,
            relist: None,
            listed: false,
        }
    }

    /// Applies an event; true when `now` changed.
    fn apply(&mut self, ev: watcher::Event<K>) -> bool {
        match ev {
            watcher::Event::Init => {
                self.relist = Some(None);
                false
            }
            watcher::Event::InitApply(o) => {
                self.relist = Some(Some(o));
                false
            }
            watcher::Event::InitDone => {
                self.now = self.relist.take().flatten();
                self.listed = true;
                true
            }
            watcher::Event::Apply(o) => {
                self.now = Some(o);
                true
            }
            watcher::Event::Delete(_) => {
                self.now = None;
                true
            }
        }
    }
}

enum Ev {
    Pod(Box<watcher::Event<Pod>>),
    Ours(watcher::Event<ConfigMap>),
    Seed(watcher::Event<ConfigMap>),
}

/// What the Pod's and both ConfigMaps' watches say so far.
struct Seen {
    pod: Watched<Pod>,
    ours: Watched<ConfigMap>,
    seed: Watched<ConfigMap>,
}

impl Seen {
    fn new() -> Seen {
        Seen {
            pod: Watched::new(),
            ours: Watched::new(),
            seed: Watched::new(),
        }
    }

    /// Applies one event; the policy in force when it may have changed, and only once all
    /// three watches have listed. Before that a ConfigMap not listed yet would look absent,
    /// and the Pod's model override would be rewritten in without the ConfigMap's rules.
    fn apply(&mut self, ev: Ev) -> Option<Result<Option<Rewriter>, AiError>> {
        let changed = match ev {
            Ev::Pod(e) => self.pod.apply(*e),
            Ev::Ours(e) => self.ours.apply(e),
            Ev::Seed(e) => self.seed.apply(e),
        };
        let all_listed = self.pod.listed && self.ours.listed && self.seed.listed;
        if !(changed && all_listed) {
            return None;
        }
        Some(match self.pod.now.as_ref() {
            None => Ok(None),
            Some(pod) => rewriter(pod, self.ours.now.as_ref(), self.seed.now.as_ref()),
        })
    }
}

/// A handle for the proxy (no policy until the Pod is seen) and the sender [`follow`] feeds.
pub fn handle() -> (watch::Sender<Option<Arc<Rewriter>>>, PolicyHandle) {
    PolicyHandle::channel(None)
}

/// Watches `namespace/pod` and its ConfigMaps and keeps `tx` at the policy in force; runs
/// until the process ends. `errors` counts policies refused.
pub async fn follow(
    client: kube::Client,
    namespace: String,
    pod: String,
    tx: watch::Sender<Option<Arc<Rewriter>>>,
    errors: Counter,
) {
    use futures::StreamExt;
    let by_name = |n: &str| watcher::Config::default().fields(&format!("metadata.name={n}"));
    let [ours_name, seed_name] = configmap_names(&pod);
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &namespace);
    let pods = watcher(Api::<Pod>::namespaced(client, &namespace), by_name(&pod))
        .default_backoff()
        .map(|e| e.map(|e| Ev::Pod(Box::new(e))))
        .boxed();
    let ours = watcher(cms.clone(), by_name(&ours_name))
        .default_backoff()
        .map(|e| e.map(Ev::Ours))
        .boxed();
    let seed = watcher(cms, by_name(&seed_name))
        .default_backoff()
        .map(|e| e.map(Ev::Seed))
        .boxed();
    let mut events = futures::stream::select_all([pods, ours, seed]);
    let mut seen = Seen::new();
    while let Some(ev) = events.next().await {
        let ev = match ev {
            Ok(ev) => ev,
            Err(e) => {
                tracing::warn!(error = %e, "AI policy watch (retrying)");
                continue;
            }
        };
        let Some(now) = seen.apply(ev) else {
            continue;
        };
        match now {
            Ok(r) => {
                let same = match (&r, tx.borrow().as_deref()) {
                    (Some(a), Some(b)) => {
                        a.policy == b.policy && a.model_override == b.model_override
                    }
                    (None, None) => true,
                    _ => false,
                };
                if !same {
                    tracing::info!(
                        rewriting = r.is_some(),
                        model_override = ?r.as_ref().and_then(|r| r.model_override.clone()),
                        "AI policy in force"
                    );
                    tx.send_replace(r.map(Arc::new));
                }
            }
            Err(e) => {
                errors.inc();
                tracing::warn!(error = %e, "AI policy refused; the last good one stays in force");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(annotations: serde_json::Value) -> Pod {
        serde_json::from_value(
            json!({"metadata": {"name": "web", "namespace": "shop", "annotations": annotations}}),
        )
        .unwrap()
    }

    fn cm(name: &str, data: serde_json::Value) -> ConfigMap {
        serde_json::from_value(json!({"metadata": {"name": name}, "data": data})).unwrap()
    }

    #[test]
    fn only_opted_in_pods_get_a_policy() {
        assert!(rewriter(&pod(json!({})), None, None).unwrap().is_none());
        assert!(
            rewriter(&pod(json!({AI: "false"})), None, None)
                .unwrap()
                .is_none()
        );
        assert!(
            rewriter(&pod(json!({SEED_AI: "false"})), None, None)
                .unwrap()
                .is_none()
        );
        let r = rewriter(&pod(json!({SEED_AI: "yes"})), None, None)
            .unwrap()
            .unwrap();
        assert_eq!(r.policy, Policy::default());
        assert_eq!(r.model_override, None);
    }

    #[test]
    fn ours_wins_over_the_seeds_and_the_model_annotation_applies() {
        let p = pod(json!({AI: "true", "kube-gateway.io/ai-model": "tiny"}));
        let [o, s] = configmap_names("web");
        assert_eq!(o, "web-ghostwire-ai");
        let ours = cm(&o, json!({KEY: r#"{"response":{"bannedWords":["a"]}}"#}));
        let seed = cm(&s, json!({KEY: r#"{"response":{"bannedWords":["b"]}}"#}));
        let r = rewriter(&p, Some(&ours), Some(&seed)).unwrap().unwrap();
        assert_eq!(r.policy.banned_words, ["a"]);
        assert_eq!(r.model_override.as_deref(), Some("tiny"));
        let r = rewriter(&p, None, Some(&seed)).unwrap().unwrap();
        assert_eq!(r.policy.banned_words, ["b"]);
    }

    #[test]
    fn a_bad_configmap_names_itself_and_the_field() {
        let p = pod(json!({AI: "true"}));
        let e = rewriter(&p, Some(&cm("web-ghostwire-ai", json!({}))), None)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("web-ghostwire-ai") && e.contains("\"config\""),
            "{e}"
        );
        let bad = cm(
            "web-ghostwire-ai",
            json!({KEY: r#"{"request":{"maxTokens":"lots"}}"#}),
        );
        let e = rewriter(&p, Some(&bad), None).unwrap_err().to_string();
        assert!(e.contains("web-ghostwire-ai"), "{e}");
        assert!(e.contains("request.maxTokens") && e.contains("lots"), "{e}");
    }

    #[test]
    fn a_relist_replaces_what_was_there() {
        let mut w = Watched::new();
        assert!(w.apply(watcher::Event::Apply(1)));
        assert_eq!(w.now, Some(1));
        assert!(!w.apply(watcher::Event::Init));
        assert!(w.apply(watcher::Event::InitDone));
        assert_eq!(w.now, None);
        w.apply(watcher::Event::Init);
        w.apply(watcher::Event::InitApply(2));
        w.apply(watcher::Event::InitDone);
        assert_eq!(w.now, Some(2));
        assert!(w.apply(watcher::Event::Delete(2)));
        assert_eq!(w.now, None);
    }

    #[test]
    fn no_policy_is_in_force_before_every_watch_has_listed() {
        use watcher::Event::{InitApply, InitDone};
        let rules = cm(
            "web-ghostwire-ai",
            json!({KEY: r#"{"response": {"bannedWords": ["secret"]}}"#}),
        );
        let mut seen = Seen::new();
        let pod = pod(json!({AI: "true", MODEL[0]: "tiny"}));
        assert!(seen.apply(Ev::Pod(Box::new(InitApply(pod)))).is_none());
        // The Pod is listed first: its model override alone would be half the policy.
        assert!(seen.apply(Ev::Pod(Box::new(InitDone))).is_none());
        assert!(seen.apply(Ev::Seed(InitDone)).is_none());
        assert!(seen.apply(Ev::Ours(InitApply(rules))).is_none());
        let now = seen.apply(Ev::Ours(InitDone)).unwrap().unwrap().unwrap();
        assert_eq!(now.model_override.as_deref(), Some("tiny"));
        let with_rules = rewriter(seen.pod.now.as_ref().unwrap(), seen.ours.now.as_ref(), None)
            .unwrap()
            .unwrap();
        assert!(now.policy == with_rules.policy && now.policy != Policy::default());
        // Later events apply at once; the Pod gone is no policy.
        let gone = seen.pod.now.clone().unwrap();
        assert!(
            seen.apply(Ev::Pod(Box::new(watcher::Event::Delete(gone))))
                .unwrap()
                .unwrap()
                .is_none()
        );
    }
}
