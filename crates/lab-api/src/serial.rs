//! Replies made from pre-serialised objects. The store serialises each object version once, when
//! it is written, without `apiVersion` and `kind` ([`crate::store::Stored`]); everything here
//! only copies those bytes:
//! - a list reply is the list's head and its items' bytes concatenated. Items of built-in kinds
//!   go out as stored, without `apiVersion` and `kind`, as kube-apiserver sends them (clients
//!   know the type from the list); items of custom resources carry them, as the real server's
//!   unstructured objects do;
//! - a get reply and a watch event's object carry the served `apiVersion` and `kind`, written in
//!   front of the stored bytes;
//! - a watch event's line is made once per (served version, event type) and shared by every
//!   watcher that sends it ([`Lines`]).

use crate::resources::ResourceType;
use crate::store::Stored;
use bytes::{BufMut, Bytes, BytesMut};
use serde::{Serialize, Serializer};
use serde_json::Value;
use std::sync::Mutex;

/// An object's fields but `apiVersion` and `kind`.
struct Untyped<'a>(&'a serde_json::Map<String, Value>);

impl Serialize for Untyped<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(
            self.0
                .iter()
                .filter(|(k, _)| !matches!(k.as_str(), "apiVersion" | "kind")),
        )
    }
}

/// The JSON of an object without its `apiVersion` and `kind` (the store's form).
pub fn untyped(obj: &Value) -> Bytes {
    let v = match obj {
        Value::Object(m) => serde_json::to_vec(&Untyped(m)),
        other => serde_json::to_vec(other),
    };
    Bytes::from(v.expect("JSON values serialize"))
}

/// `"apiVersion":…,"kind":…` for the type `rt` serves.
fn type_fields(rt: &ResourceType) -> Vec<u8> {
    let mut out = Vec::with_capacity(48);
    out.extend_from_slice(b"\"apiVersion\":");
    serde_json::to_writer(&mut out, &rt.api_version()).expect("strings serialize");
    out.extend_from_slice(b",\"kind\":");
    serde_json::to_writer(&mut out, &rt.kind).expect("strings serialize");
    out
}

/// Writes stored JSON into `out` with `fields` (`"name":value` pairs) added at its front.
fn put_with(out: &mut BytesMut, fields: &[u8], json: &[u8]) {
    match json.strip_prefix(b"{") {
        Some(rest) => {
            out.put_u8(b'{');
            out.put_slice(fields);
            if rest.first() != Some(&b'}') {
                out.put_u8(b',');
            }
            out.put_slice(rest);
        }
        // Not an object (never stored, but never mangled either).
        None => out.put_slice(json),
    }
}

/// One stored object as `rt` serves it on its own: with `apiVersion` and `kind`.
pub fn typed(rt: &ResourceType, json: &[u8]) -> Bytes {
    let fields = type_fields(rt);
    let mut out = BytesMut::with_capacity(json.len() + fields.len() + 2);
    put_with(&mut out, &fields, json);
    out.freeze()
}

/// A whole list reply: `{"apiVersion","kind","metadata","items"}` with the items' stored JSON
/// copied in.
pub fn list(rt: &ResourceType, items: &[&Stored], metadata: &Value) -> Bytes {
    let head = serde_json::to_vec(&serde_json::json!({
        "apiVersion": rt.api_version(),
        "kind": format!("{}List", rt.kind),
        "metadata": metadata,
    }))
    .expect("JSON values serialize");
    // Custom resources' items carry their type, built-in ones' do not.
    let fields = rt.crd.is_some().then(|| type_fields(rt));
    let per_item = fields.as_ref().map_or(0, Vec::len) + 2;
    let size: usize =
        items.iter().map(|s| s.json.len() + per_item).sum::<usize>() + head.len() + 16;
    let mut out = BytesMut::with_capacity(size);
    // `{…head fields…,"items":[`: the head without its closing brace.
    out.put_slice(&head[..head.len() - 1]);
    out.put_slice(b",\"items\":[");
    for (i, s) in items.iter().enumerate() {
        if i > 0 {
            out.put_u8(b',');
        }
        match &fields {
            Some(f) => put_with(&mut out, f, &s.json),
            None => out.put_slice(&s.json),
        }
    }
    out.put_slice(b"]}");
    out.freeze()
}

/// One watch line, `{"type":…,"object":…}\n`, the object as `rt` serves it.
pub fn event_line(rt: &ResourceType, kind: &str, json: &[u8]) -> Bytes {
    let fields = type_fields(rt);
    let mut out = BytesMut::with_capacity(json.len() + fields.len() + kind.len() + 28);
    out.put_slice(b"{\"type\":\"");
    out.put_slice(kind.as_bytes());
    out.put_slice(b"\",\"object\":");
    put_with(&mut out, &fields, json);
    out.put_slice(b"}\n");
    out.freeze()
}

/// The watch lines made from one event, by served group, version and event type: the first
/// watcher to send a line makes it, the others send the same bytes.
#[derive(Debug, Default)]
pub struct Lines(Mutex<Vec<(String, String, &'static str, Bytes)>>);

impl Lines {
    pub fn get(&self, rt: &ResourceType, kind: &'static str, json: &[u8]) -> Bytes {
        let mut lines = self.0.lock().expect("watch line lock");
        if let Some((.., b)) = lines
            .iter()
            .find(|(g, v, k, _)| *g == rt.group && *v == rt.version && *k == kind)
        {
            return b.clone();
        }
        let b = event_line(rt, kind, json);
        lines.push((rt.group.clone(), rt.version.clone(), kind, b.clone()));
        b
    }

    /// How many different lines were made (tests).
    #[cfg(test)]
    pub fn made(&self) -> usize {
        self.0.lock().expect("watch line lock").len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::Registry;
    use serde_json::json;
    use std::sync::Arc;

    fn stored(v: Value) -> Stored {
        Stored {
            json: untyped(&v),
            object: Arc::new(v),
        }
    }

    #[test]
    fn lists_gets_and_events_are_the_objects_json_in_the_shape_kubernetes_sends() {
        let rt = Registry::builtin().find("", "v1", "configmaps").unwrap();
        let objs: Vec<Stored> = (0..3)
            .map(|i| {
                stored(json!({"apiVersion": "v1", "kind": "ConfigMap",
                              "metadata": {"name": format!("c{i}"), "namespace": "d", "resourceVersion": "7"},
                              "data": {"k": i}}))
            })
            .collect();
        let untyped_of = |s: &Stored| {
            let mut v = (*s.object).clone();
            let m = v.as_object_mut().unwrap();
            m.remove("apiVersion");
            m.remove("kind");
            v
        };
        let refs: Vec<&Stored> = objs.iter().collect();
        let meta = json!({"resourceVersion": "9"});
        let got: Value = serde_json::from_slice(&list(&rt, &refs, &meta)).unwrap();
        let want = json!({"apiVersion": "v1", "kind": "ConfigMapList", "metadata": meta,
                          "items": objs.iter().map(untyped_of).collect::<Vec<_>>()});
        assert_eq!(got, want);
        let empty: Value = serde_json::from_slice(&list(&rt, &[], &meta)).unwrap();
        assert_eq!(empty["items"], json!([]));

        // A get and a watch event carry the type, also for an object stored without it.
        let bare = stored(json!({"metadata": {"name": "x"}}));
        for s in [&objs[1], &bare] {
            let mut want = untyped_of(s);
            want["apiVersion"] = json!("v1");
            want["kind"] = json!("ConfigMap");
            let got: Value = serde_json::from_slice(&typed(&rt, &s.json)).unwrap();
            assert_eq!(got, want);
            let line = event_line(&rt, "MODIFIED", &s.json);
            assert_eq!(line.last(), Some(&b'\n'));
            let got: Value = serde_json::from_slice(&line).unwrap();
            assert_eq!(got, json!({"type": "MODIFIED", "object": want}));
        }
        let nothing = stored(json!({}));
        let got: Value = serde_json::from_slice(&typed(&rt, &nothing.json)).unwrap();
        assert_eq!(got, json!({"apiVersion": "v1", "kind": "ConfigMap"}));
    }

    #[test]
    fn custom_resource_list_items_carry_their_type() {
        let mut rt = (*Registry::builtin().find("", "v1", "configmaps").unwrap()).clone();
        (rt.group, rt.version, rt.kind) = ("example.com".into(), "v2".into(), "Widget".into());
        rt.crd = Some("widgets.example.com".into());
        // Stored at another version: served at the asked one.
        let w = stored(json!({"apiVersion": "example.com/v1", "kind": "Widget",
                              "metadata": {"name": "w"}, "spec": {"size": 1}}));
        let got: Value = serde_json::from_slice(&list(&rt, &[&w, &w], &json!({}))).unwrap();
        let item = json!({"apiVersion": "example.com/v2", "kind": "Widget",
                          "metadata": {"name": "w"}, "spec": {"size": 1}});
        assert_eq!(got["items"], json!([item, item]));
        assert_eq!(got["kind"], "WidgetList");
    }

    #[test]
    fn watchers_of_one_event_share_its_lines() {
        let reg = Registry::builtin();
        let rt = reg.find("", "v1", "services").unwrap();
        let s = stored(json!({"metadata": {"name": "s"}}));
        let lines = Lines::default();
        let a = lines.get(&rt, "MODIFIED", &s.json);
        let b = lines.get(&rt, "MODIFIED", &s.json);
        // The same bytes, not an equal copy.
        assert_eq!(a.as_ptr(), b.as_ptr());
        // A watcher whose selector turns the change into ADDED gets its own line.
        let c = lines.get(&rt, "ADDED", &s.json);
        assert_ne!(a, c);
        assert_eq!(lines.made(), 2);
        assert_eq!(
            serde_json::from_slice::<Value>(&c).unwrap()["type"],
            "ADDED"
        );
    }
}
