//! The cluster-wide defaults below the workload annotations: a ConfigMap of `GW_*` keys in the
//! injector's namespace, read through the API and kept for a short while so that a burst of
//! Pods costs one read. When a read fails, the last values read are used (an API hiccup does
//! not block admissions once the ConfigMap has been read).

use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

pub type Values = Arc<BTreeMap<String, String>>;

pub struct Defaults {
    api: Api<ConfigMap>,
    name: Option<String>,
    ttl: Duration,
    cached: Mutex<Option<(Instant, Values)>>,
}

impl Defaults {
    /// `name: None` means no defaults ConfigMap: the built-in defaults apply.
    pub fn new(client: kube::Client, namespace: &str, name: Option<String>, ttl: Duration) -> Self {
        Defaults {
            api: Api::namespaced(client, namespace),
            name,
            ttl,
            cached: Mutex::new(None),
        }
    }

    /// The current defaults; a missing ConfigMap means none.
    pub async fn get(&self) -> Result<Values, kube::Error> {
        let Some(name) = &self.name else {
            return Ok(Values::default());
        };
        let last = self
            .cached
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if let Some((at, v)) = &last
            && at.elapsed() < self.ttl
        {
            return Ok(v.clone());
        }
        let data = match self.api.get_opt(name).await {
            Ok(cm) => cm.and_then(|cm| cm.data).unwrap_or_default(),
            Err(e) => {
                let Some((_, values)) = last else {
                    return Err(e);
                };
                tracing::warn!(configmap = %name, error = %e, "cannot read the defaults ConfigMap; using the last values read");
                return Ok(values);
            }
        };
        let values = Values::new(data);
        *self.cached.lock().unwrap_or_else(|e| e.into_inner()) =
            Some((Instant::now(), values.clone()));
        Ok(values)
    }
}
