//! Watch streams: newline-delimited `{"type", "object"}` events with the real resourceVersion
//! semantics — unset/"0" starts with the current state as ADDED events, a version replays what
//! came after it, a compacted version gets an ERROR event with a 410 Expired Status — plus
//! bookmarks, `sendInitialEvents`, `timeoutSeconds`, and selector-aware ADDED/DELETED.

use crate::api::{Target, selectors, store_error};
use crate::http::{Body, Request, stream_response};
use crate::resources::ResourceType;
use crate::selectors::{FieldSelector, LabelSelector};
use crate::serial;
use crate::server::State;
use crate::status::ApiError;
use crate::store::{Event, EventType, Stored};
use crate::table;
use bytes::Bytes;
use hyper::Response;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{broadcast, mpsc};

struct Filter {
    rt: Arc<ResourceType>,
    namespace: Option<String>,
    labels: LabelSelector,
    fields: FieldSelector,
}

impl Filter {
    fn matches(&self, o: &Value) -> bool {
        self.labels.matches(o) && self.fields.matches(o)
    }

    /// The event a watcher with this filter sees for a change, if any.
    fn view(&self, ev: &Event) -> Option<&'static str> {
        if ev.key.group != self.rt.group || ev.key.resource != self.rt.resource {
            return None;
        }
        if self
            .namespace
            .as_ref()
            .is_some_and(|ns| *ns != ev.key.namespace)
        {
            return None;
        }
        let now = self.matches(&ev.object);
        let before = ev.prev.as_ref().is_some_and(|p| self.matches(p));
        match ev.kind {
            EventType::Added => now.then_some("ADDED"),
            EventType::Deleted => now.then_some("DELETED"),
            EventType::Modified => match (before, now) {
                (true, true) => Some("MODIFIED"),
                (false, true) => Some("ADDED"),
                (true, false) => Some("DELETED"),
                (false, false) => None,
            },
        }
    }
}

struct Shape {
    rt: Arc<ResourceType>,
    table: bool,
    include_object: String,
}

impl Shape {
    fn table_line(&self, kind: &str, obj: &Value) -> Bytes {
        let object = table::render(
            &self.rt,
            &[obj],
            json!({"resourceVersion": obj["metadata"]["resourceVersion"]}),
            &self.include_object,
        );
        Self::event(kind, &object)
    }

    /// The line of a stored object that the watch starts with.
    fn initial(&self, s: &Stored) -> Bytes {
        if self.table {
            return self.table_line("ADDED", &s.object);
        }
        serial::event_line(&self.rt, "ADDED", &s.json)
    }

    /// The line of a change, shared with the other watchers that send the same one.
    fn change(&self, kind: &'static str, ev: &Event) -> Bytes {
        if self.table {
            return self.table_line(kind, &ev.object);
        }
        ev.lines.get(&self.rt, kind, &ev.json)
    }

    fn event(kind: &str, object: &Value) -> Bytes {
        let mut b = serde_json::to_vec(&json!({"type": kind, "object": object}))
            .expect("JSON values serialize");
        b.push(b'\n');
        Bytes::from(b)
    }

    fn bookmark(&self, rv: u64, initial_end: bool) -> Bytes {
        let mut meta = json!({"resourceVersion": rv.to_string()});
        if initial_end {
            meta["annotations"] = json!({"k8s.io/initial-events-end": "true"});
        }
        let obj =
            json!({"kind": self.rt.kind, "apiVersion": self.rt.api_version(), "metadata": meta});
        let mut b = serde_json::to_vec(&json!({"type": "BOOKMARK", "object": obj}))
            .expect("JSON values serialize");
        b.push(b'\n');
        Bytes::from(b)
    }
}

pub fn serve(
    state: &Arc<State>,
    req: &Request,
    t: &Target,
    name: Option<&str>,
) -> Result<Response<Body>, ApiError> {
    let (labels, mut fields) = selectors(req, &t.rt)?;
    if let Some(n) = name {
        fields = FieldSelector::parse(&format!("metadata.name={n}"), &t.rt)?;
    }
    let filter = Filter {
        rt: t.rt.clone(),
        namespace: t.namespace.clone(),
        labels,
        fields,
    };
    let shape = Shape {
        rt: t.rt.clone(),
        table: table::wanted(&req.accept),
        include_object: req.param("includeObject").unwrap_or("Metadata").to_string(),
    };
    let bookmarks = req.flag("allowWatchBookmarks");
    let send_initial = req.flag("sendInitialEvents");
    let rv = req.param("resourceVersion").unwrap_or_default();
    let timeout = req
        .param("timeoutSeconds")
        .and_then(|s| s.parse::<u64>().ok())
        .map_or(Duration::from_secs(1800), Duration::from_secs);
    if send_initial && (req.param("resourceVersionMatch") != Some("NotOlderThan") || !bookmarks) {
        return Err(ApiError::invalid(
            "meta.k8s.io",
            "ListOptions",
            "",
            vec![crate::status::Cause::forbidden(
                "sendInitialEvents",
                "sendInitialEvents is forbidden for watch unless the WatchList feature gate is enabled and resourceVersionMatch is NotOlderThan and allowWatchBookmarks is true",
            )],
        ));
    }
    let (tx, rx) = mpsc::channel::<Bytes>(256);
    let mut first: Vec<Bytes> = Vec::new();
    let (start_rv, events) = if rv.is_empty() || rv == "0" || send_initial {
        let (items, list_rv, events) =
            state
                .store
                .list_and_watch(&t.rt.group, &t.rt.resource, t.namespace.as_deref());
        first.extend(
            items
                .iter()
                .filter(|s| filter.matches(&s.object))
                .map(|s| shape.initial(s)),
        );
        if send_initial {
            first.push(shape.bookmark(list_rv, true));
        }
        (list_rv, Some((Vec::new(), events)))
    } else {
        let since = rv
            .parse::<u64>()
            .map_err(|_| ApiError::bad_request(format!("invalid resource version: {rv:?}")))?;
        match state.store.watch(Some(since)) {
            Ok(w) => (since, Some(w)),
            Err(e) => {
                // A real server answers 200 and reports the expiry as the stream's first event.
                let status = store_error(e, t, "").to_status();
                first.push(Shape::event("ERROR", &status));
                (since, None)
            }
        }
    };
    let interval = state.bookmark_interval;
    let mut shutdown = state.shutdown.clone();
    let mut reset = state.watch_reset.subscribe();
    tokio::spawn(async move {
        for line in first {
            if tx.send(line).await.is_err() {
                return;
            }
        }
        let Some((backlog, mut live)) = events else {
            return;
        };
        let mut last = start_rv;
        for ev in backlog {
            last = ev.rv;
            if let Some(kind) = filter.view(&ev)
                && tx.send(shape.change(kind, &ev)).await.is_err()
            {
                return;
            }
        }
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline);
        let mut ticker = tokio::time::interval(interval);
        ticker.tick().await;
        loop {
            tokio::select! {
                _ = &mut deadline => {
                    if bookmarks {
                        let _ = tx.send(shape.bookmark(last, false)).await;
                    }
                    return;
                }
                _ = shutdown.changed() => return,
                _ = reset.changed() => return,
                _ = tx.closed() => return,
                _ = ticker.tick(), if bookmarks => {
                    if tx.send(shape.bookmark(last, false)).await.is_err() {
                        return;
                    }
                }
                ev = live.recv() => match ev {
                    Ok(ev) => {
                        if ev.rv <= last {
                            continue;
                        }
                        last = ev.rv;
                        if let Some(kind) = filter.view(&ev)
                            && tx.send(shape.change(kind, &ev)).await.is_err()
                        {
                            return;
                        }
                    }
                    // A watcher too slow to keep up is closed; it resumes from its last version.
                    Err(broadcast::error::RecvError::Lagged(_)) | Err(broadcast::error::RecvError::Closed) => return,
                },
            }
        }
    });
    Ok(stream_response(rx))
}
