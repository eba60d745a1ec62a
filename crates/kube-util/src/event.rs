//! Kubernetes Events (core/v1, which every API server and `kubectl describe` show) for what a
//! ghostwire controller wants an operator to see next to the object it is about.

use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};

/// One Event about `about`, from `component` (also the reporting controller).
#[derive(Debug, Clone)]
pub struct Report<'a> {
    pub component: &'a str,
    /// `Normal` or `Warning`.
    pub warning: bool,
    /// UpperCamelCase, machine-readable (`ConfigRefused`).
    pub reason: &'a str,
    /// What the component was doing (`Push`, `Sign`).
    pub action: &'a str,
    pub message: String,
    /// Needs at least `namespace` and `name`; `kind`, `apiVersion` and `uid` make
    /// `kubectl describe` find it.
    pub about: ObjectReference,
}

/// The Event object for `r` at `now` (pure). Named as the API server's own recorders name theirs,
/// `<object>.<unique hex>`, so two reports never collide.
pub fn build(r: &Report<'_>, now: Timestamp) -> Event {
    let namespace = r
        .about
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    let object = r.about.name.as_deref().unwrap_or("unknown");
    let unique = now.as_nanosecond() as u128 ^ u128::from(rand::random::<u32>());
    Event {
        metadata: ObjectMeta {
            name: Some(format!("{object}.{unique:x}")),
            namespace: Some(namespace),
            ..Default::default()
        },
        involved_object: r.about.clone(),
        reason: Some(r.reason.into()),
        message: Some(r.message.clone()),
        type_: Some(if r.warning { "Warning" } else { "Normal" }.into()),
        count: Some(1),
        first_timestamp: Some(Time(now)),
        last_timestamp: Some(Time(now)),
        event_time: Some(MicroTime(now)),
        reporting_component: Some(r.component.into()),
        reporting_instance: Some(r.component.into()),
        action: Some(r.action.into()),
        source: Some(EventSource {
            component: Some(r.component.into()),
            host: None,
        }),
        ..Default::default()
    }
}

/// Creates the Event; a failure is logged, never returned: an Event is a courtesy to the
/// operator and must not stop the work it reports on.
pub async fn record(client: &kube::Client, r: Report<'_>) {
    let ev = build(&r, Timestamp::now());
    let ns = ev.metadata.namespace.clone().unwrap_or_default();
    if let Err(e) = Api::<Event>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &ev)
        .await
    {
        tracing::warn!(error = %e, reason = r.reason, "cannot record an Event");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_name_their_object_type_and_component() {
        let r = Report {
            component: "ghostwire-controller",
            warning: true,
            reason: "ConfigRefused",
            action: "Push",
            message: "version 7: bad route".into(),
            about: ObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                namespace: Some("shop".into()),
                name: Some("web-1".into()),
                uid: Some("u-1".into()),
                ..Default::default()
            },
        };
        let now = Timestamp::from_second(1_800_000_000).unwrap();
        let a = build(&r, now);
        let b = build(&r, now);
        assert_eq!(a.metadata.namespace.as_deref(), Some("shop"));
        assert!(a.metadata.name.as_deref().unwrap().starts_with("web-1."));
        assert_ne!(a.metadata.name, b.metadata.name, "two reports, two names");
        assert_eq!(a.type_.as_deref(), Some("Warning"));
        assert_eq!(a.involved_object.uid.as_deref(), Some("u-1"));
        assert_eq!(
            a.reporting_component.as_deref(),
            Some("ghostwire-controller")
        );
        assert_eq!(a.last_timestamp, Some(Time(now)));
        let normal = build(
            &Report {
                warning: false,
                ..r
            },
            now,
        );
        assert_eq!(normal.type_.as_deref(), Some("Normal"));
    }
}
