//! Field-by-field checks of the conversions JSON hides, on hand-encoded messages.

use super::*;

/// A minimal protobuf writer for the tests.
#[derive(Default)]
struct W(Vec<u8>);

impl W {
    fn varint(&mut self, mut v: u64) -> &mut Self {
        loop {
            let b = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                self.0.push(b);
                return self;
            }
            self.0.push(b | 0x80);
        }
    }
    fn key(&mut self, tag: u32, wire: u64) -> &mut Self {
        self.varint((u64::from(tag) << 3) | wire)
    }
    fn int(&mut self, tag: u32, v: i64) -> &mut Self {
        self.key(tag, 0).varint(v as u64)
    }
    fn bytes(&mut self, tag: u32, b: &[u8]) -> &mut Self {
        self.key(tag, 2).varint(b.len() as u64);
        self.0.extend_from_slice(b);
        self
    }
    fn str(&mut self, tag: u32, s: &str) -> &mut Self {
        self.bytes(tag, s.as_bytes())
    }
    fn msg(&mut self, tag: u32, m: &W) -> &mut Self {
        self.bytes(tag, &m.0)
    }
    fn entry(&mut self, tag: u32, k: &str, v: &[u8]) -> &mut Self {
        let mut e = W::default();
        e.str(1, k).bytes(2, v);
        self.msg(tag, &e)
    }
}

fn w() -> W {
    W::default()
}

/// `k8s\0` + Unknown{typeMeta, raw}.
fn envelope(api_version: &str, kind: &str, obj: &W) -> Vec<u8> {
    let mut tm = w();
    tm.str(1, api_version).str(2, kind);
    let mut u = w();
    u.msg(1, &tm).msg(2, obj);
    let mut out = MAGIC.to_vec();
    out.extend_from_slice(&u.0);
    out
}

fn meta(name: &str) -> W {
    let mut m = w();
    m.str(1, name);
    m
}

#[test]
fn service_names_intorstring_and_maps() {
    let mut port_int = w();
    port_int
        .str(1, "http")
        .int(3, 80)
        .msg(4, w().int(1, 0).int(2, 8080));
    let mut port_str = w();
    port_str
        .str(1, "metrics")
        .int(3, 9090)
        .msg(4, w().int(1, 1).str(3, "metrics"));
    let mut spec = w();
    spec.msg(1, &port_int)
        .msg(1, &port_str)
        .entry(2, "app", b"web")
        .str(3, "10.96.0.10")
        .str(18, "10.96.0.10")
        .str(4, "ClusterIP")
        .str(5, "192.0.2.1");
    let mut svc = w();
    svc.msg(1, meta("web").entry(11, "tier", b"front"))
        .msg(2, &spec);
    let got = decode_body(&envelope("v1", "Service", &svc)).unwrap();
    assert_eq!(
        got,
        json!({"apiVersion": "v1", "kind": "Service",
               "metadata": {"name": "web", "labels": {"tier": "front"}},
               "spec": {"ports": [{"name": "http", "port": 80, "targetPort": 8080},
                                  {"name": "metrics", "port": 9090, "targetPort": "metrics"}],
                        "selector": {"app": "web"}, "clusterIP": "10.96.0.10",
                        "clusterIPs": ["10.96.0.10"], "type": "ClusterIP",
                        "externalIPs": ["192.0.2.1"]}})
    );
}

#[test]
fn quantity_time_bytes_and_raw_extension() {
    // Pod: resources as Quantities, a creation Time, a negative int64.
    let mut res = w();
    res.entry(1, "cpu", &w().str(1, "250m").0)
        .entry(2, "memory", &w().str(1, "64Mi").0);
    let mut c = w();
    c.str(1, "app").str(2, "busybox").msg(8, &res);
    let mut spec = w();
    spec.msg(2, &c).int(5, -1);
    let mut m = meta("p");
    m.msg(8, w().int(1, 1_700_000_000).int(2, 5));
    let mut pod = w();
    pod.msg(1, &m).msg(2, &spec);
    let got = decode_body(&envelope("v1", "Pod", &pod)).unwrap();
    assert_eq!(
        got["spec"]["containers"][0]["resources"],
        json!({"limits": {"cpu": "250m"}, "requests": {"memory": "64Mi"}})
    );
    assert_eq!(got["spec"]["activeDeadlineSeconds"], json!(-1));
    assert_eq!(
        got["metadata"]["creationTimestamp"],
        json!("2023-11-14T22:13:20Z")
    );
    // Secret data is bytes: base64 in JSON, as the JSON form carries it.
    let mut s = w();
    s.msg(1, &meta("s"))
        .entry(2, "key", b"\x00\xffv")
        .entry(4, "plain", b"text")
        .str(3, "Opaque");
    let got = decode_body(&envelope("v1", "Secret", &s)).unwrap();
    assert_eq!(got["data"], json!({"key": "AP92"}));
    assert_eq!(got["stringData"], json!({"plain": "text"}));
    // `JSON` (a CRD schema's default) carries embedded JSON, as RawExtension does.
    let mut props = w();
    props
        .str(5, "string")
        .msg(8, w().bytes(1, br#"{"a":[1,2]}"#));
    let name =
        lookup("io.k8s.apiextensions-apiserver.pkg.apis.apiextensions.v1.JSONSchemaProps").unwrap();
    props.key(38, 0).varint(1);
    let decoded = decode(name, &props.0).unwrap();
    assert_eq!(decoded["x-kubernetes-preserve-unknown-fields"], json!(true));
    assert_eq!(decoded["default"], json!({"a": [1, 2]}));
    assert_eq!(decoded["type"], json!("string"));
}

#[test]
fn empty_lists_and_maps_are_absent_and_unknown_fields_are_skipped() {
    let mut cm = w();
    cm.msg(1, &meta("c")).str(99, "ignored");
    let got = decode_body(&envelope("v1", "ConfigMap", &cm)).unwrap();
    assert_eq!(
        got,
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}})
    );
    // A map entry without a value is the empty string, as Go decodes it.
    let mut cm = w();
    cm.msg(1, &meta("c")).msg(2, w().str(1, "k"));
    let got = decode_body(&envelope("v1", "ConfigMap", &cm)).unwrap();
    assert_eq!(got["data"], json!({"k": ""}));
}

#[test]
fn reviews_rbac_and_token_requests() {
    let mut ra = w();
    ra.str(1, "default").str(2, "list").str(5, "pods");
    let mut ssar = w();
    ssar.msg(1, &w()).msg(2, w().msg(1, &ra));
    let got = decode_body(&envelope(
        "authorization.k8s.io/v1",
        "SelfSubjectAccessReview",
        &ssar,
    ))
    .unwrap();
    assert_eq!(
        got["spec"],
        json!({"resourceAttributes": {"namespace": "default", "verb": "list", "resource": "pods"}})
    );
    // SubjectAccessReview extra: map of ExtraValue → map of lists.
    let mut spec = w();
    spec.str(3, "alice")
        .entry(5, "scopes", &w().str(1, "a").str(1, "b").0);
    let mut sar = w();
    sar.msg(2, &spec);
    let got = decode_body(&envelope(
        "authorization.k8s.io/v1",
        "SubjectAccessReview",
        &sar,
    ))
    .unwrap();
    assert_eq!(
        got["spec"],
        json!({"user": "alice", "extra": {"scopes": ["a", "b"]}})
    );
    // ClusterRole: nonResourceURLs and apiGroups keep their JSON spelling.
    let mut rule = w();
    rule.str(1, "get").str(5, "/healthz");
    let mut cr = w();
    cr.msg(1, &meta("r")).msg(2, &rule);
    let got = decode_body(&envelope(
        "rbac.authorization.k8s.io/v1",
        "ClusterRole",
        &cr,
    ))
    .unwrap();
    assert_eq!(
        got["rules"],
        json!([{"verbs": ["get"], "nonResourceURLs": ["/healthz"]}])
    );
    let mut tr = w();
    tr.msg(2, w().str(1, "vault").int(4, 600));
    let got = decode_body(&envelope("authentication.k8s.io/v1", "TokenRequest", &tr)).unwrap();
    assert_eq!(
        got["spec"],
        json!({"audiences": ["vault"], "expirationSeconds": 600})
    );
}

#[test]
fn bad_bodies_are_400s_naming_the_problem() {
    let e = decode_body(b"{}").unwrap_err();
    assert_eq!(e.code, 400);
    assert!(e.message.contains("magic"), "{}", e.message);
    let e = decode_body(&envelope("v1", "Nonsense", &w())).unwrap_err();
    assert!(e.message.contains("no kind \"Nonsense\""), "{}", e.message);
    let mut bad = MAGIC.to_vec();
    bad.extend_from_slice(&[0x12, 0x05, 0x01]);
    let e = decode_body(&bad).unwrap_err();
    assert!(e.message.contains("truncated"), "{}", e.message);
}

#[test]
fn zeros_of_plain_fields_go_and_those_of_pointer_fields_stay() {
    // As kubectl writes a NodePort Service: nodePort 0, an empty type and namespace.
    let mut port = w();
    port.str(1, "")
        .int(3, 81)
        .int(5, 0)
        .msg(4, w().int(1, 0).int(2, 8081));
    let mut spec = w();
    spec.msg(1, &port).str(4, "").str(3, "");
    let mut m = meta("np");
    m.str(3, "").int(7, 0);
    let mut svc = w();
    svc.msg(1, &m).msg(2, &spec);
    let got = decode_body(&envelope("v1", "Service", &svc)).unwrap();
    assert_eq!(
        got,
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "np"},
               "spec": {"ports": [{"port": 81, "targetPort": 8081}]}})
    );
    // replicas 0 and runAsUser 0 are meant; a required zero (containerPort) stays too.
    let mut sc = w();
    sc.int(4, 0);
    let mut c = w();
    c.str(1, "c").msg(6, w().int(3, 0)).msg(15, &sc);
    let mut tpl = w();
    tpl.msg(2, w().msg(2, &c));
    let mut spec = w();
    spec.int(1, 0).msg(3, &tpl);
    let mut d = w();
    d.msg(1, &meta("d")).msg(2, &spec);
    let got = decode_body(&envelope("apps/v1", "Deployment", &d)).unwrap();
    assert_eq!(got["spec"]["replicas"], json!(0));
    let c = &got["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(c["securityContext"], json!({"runAsUser": 0}));
    assert_eq!(c["ports"], json!([{"containerPort": 0}]));
}

#[test]
fn embedded_structs_are_inlined() {
    // Volume{name, volumeSource{configMap{localObjectReference{name}}}}.
    let mut cm = w();
    cm.msg(1, w().str(1, "settings"));
    let mut vol = w();
    vol.str(1, "cfg").msg(2, w().msg(19, &cm));
    let got = decode("io.k8s.api.core.v1.Volume", &vol.0).unwrap();
    assert_eq!(
        got,
        json!({"name": "cfg", "configMap": {"name": "settings"}})
    );
}
