//! Pre-serialised objects: each stored version of an object is turned into JSON once and the
//! bytes are shared by every list and every watch that sends it, so a list of 10,000 Services
//! or an event fanned out to 100 watchers costs copies of bytes, not 10,000 or 100 clones and
//! serialisations of the object.

use crate::resources::ResourceType;
use crate::store::Key;
use bytes::{BufMut, Bytes, BytesMut};
use serde_json::Value;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// The JSON of each object version last sent, keyed by where it lives; an entry is valid while
/// it belongs to the same stored `Arc` (a new version is a new `Arc`).
#[derive(Default)]
pub struct Cache {
    entries: Mutex<HashMap<Key, (Arc<Value>, Bytes)>>,
}

/// Whether the stored object already says what `rt` would put on it (then its own JSON is
/// the reply's).
fn as_served(rt: &ResourceType, obj: &Value) -> bool {
    obj["kind"] == rt.kind.as_str() && obj["apiVersion"] == rt.api_version().as_str()
}

fn serialise(rt: &ResourceType, obj: &Value) -> Bytes {
    if as_served(rt, obj) {
        return Bytes::from(serde_json::to_vec(obj).expect("JSON values serialize"));
    }
    let mut o = obj.clone();
    if let Some(m) = o.as_object_mut() {
        m.insert("apiVersion".into(), rt.api_version().into());
        m.insert("kind".into(), rt.kind.clone().into());
    }
    Bytes::from(serde_json::to_vec(&o).expect("JSON values serialize"))
}

fn key_of(rt: &ResourceType, obj: &Value) -> Key {
    Key {
        group: rt.group.clone(),
        resource: rt.resource.clone(),
        namespace: obj["metadata"]["namespace"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
        name: obj["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
    }
}

impl Cache {
    /// The JSON of one stored object as `rt` serves it (with its apiVersion and kind).
    pub fn object(&self, rt: &ResourceType, obj: &Arc<Value>) -> Bytes {
        let key = key_of(rt, obj);
        if !as_served(rt, obj) {
            return serialise(rt, obj);
        }
        if let Some((o, b)) = self.entries.lock().expect("serial cache lock").get(&key)
            && Arc::ptr_eq(o, obj)
        {
            return b.clone();
        }
        let b = serialise(rt, obj);
        self.entries
            .lock()
            .expect("serial cache lock")
            .insert(key, (obj.clone(), b.clone()));
        b
    }

    /// A whole list reply: `{"apiVersion", "items", "kind", "metadata"}` with the items'
    /// cached JSON copied in.
    pub fn list(&self, rt: &ResourceType, items: &[&Arc<Value>], metadata: &Value) -> Bytes {
        let parts: Vec<Bytes> = {
            let mut entries = self.entries.lock().expect("serial cache lock");
            items
                .iter()
                .map(|obj| {
                    if !as_served(rt, obj) {
                        return serialise(rt, obj);
                    }
                    let key = key_of(rt, obj);
                    match entries.get(&key) {
                        Some((o, b)) if Arc::ptr_eq(o, obj) => b.clone(),
                        _ => {
                            let b = serialise(rt, obj);
                            entries.insert(key, ((*obj).clone(), b.clone()));
                            b
                        }
                    }
                })
                .collect()
        };
        let head = serde_json::to_vec(&serde_json::json!({
            "apiVersion": rt.api_version(),
            "kind": format!("{}List", rt.kind),
            "metadata": metadata,
        }))
        .expect("JSON values serialize");
        let size: usize = parts.iter().map(|p| p.len() + 1).sum::<usize>() + head.len() + 16;
        let mut out = BytesMut::with_capacity(size);
        // `{...head fields...,"items":[` — the head without its closing brace.
        out.put_slice(&head[..head.len() - 1]);
        out.put_slice(b",\"items\":[");
        for (i, p) in parts.iter().enumerate() {
            if i > 0 {
                out.put_u8(b',');
            }
            out.put_slice(p);
        }
        out.put_slice(b"]}");
        out.freeze()
    }

    /// Forgets the objects of one resource that are not in `current` (after a full list).
    pub fn retain(&self, rt: &ResourceType, current: &[Arc<Value>]) {
        let mut entries = self.entries.lock().expect("serial cache lock");
        let live: std::collections::HashSet<*const Value> =
            current.iter().map(Arc::as_ptr).collect();
        entries.retain(|k, (o, _)| {
            k.group != rt.group || k.resource != rt.resource || live.contains(&Arc::as_ptr(o))
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::Registry;
    use serde_json::json;

    #[test]
    fn lists_are_the_same_json_as_serialising_them_whole() {
        let rt = Registry::builtin().find("", "v1", "configmaps").unwrap();
        let objs: Vec<Arc<Value>> = (0..3)
            .map(|i| {
                Arc::new(json!({"apiVersion": "v1", "kind": "ConfigMap",
                                "metadata": {"name": format!("c{i}"), "namespace": "d", "resourceVersion": "7"},
                                "data": {"k": i}}))
            })
            .collect();
        let cache = Cache::default();
        let refs: Vec<&Arc<Value>> = objs.iter().collect();
        let meta = json!({"resourceVersion": "9"});
        let body = cache.list(&rt, &refs, &meta);
        let got: Value = serde_json::from_slice(&body).unwrap();
        let want = json!({"apiVersion": "v1", "kind": "ConfigMapList", "metadata": meta,
                          "items": objs.iter().map(|o| (**o).clone()).collect::<Vec<_>>()});
        assert_eq!(got, want);
        // The second list reuses the bytes; a new version of one object is serialised anew.
        let again = cache.list(&rt, &refs, &meta);
        assert_eq!(again, body);
        let changed = Arc::new(json!({"apiVersion": "v1", "kind": "ConfigMap",
                                      "metadata": {"name": "c1", "namespace": "d"}, "data": {"k": "new"}}));
        assert_eq!(
            serde_json::from_slice::<Value>(&cache.object(&rt, &changed)).unwrap(),
            *changed
        );
        let empty = cache.list(&rt, &[], &meta);
        assert_eq!(
            serde_json::from_slice::<Value>(&empty).unwrap()["items"],
            json!([])
        );
        // An object stored without kind gets the served one.
        let bare = Arc::new(json!({"metadata": {"name": "x"}}));
        let got: Value = serde_json::from_slice(&cache.object(&rt, &bare)).unwrap();
        assert_eq!(
            (got["apiVersion"].as_str(), got["kind"].as_str()),
            (Some("v1"), Some("ConfigMap"))
        );
        cache.retain(&rt, &objs);
        assert_eq!(cache.entries.lock().unwrap().len(), 2);
    }
}
