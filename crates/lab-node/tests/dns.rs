//! Cluster DNS from inside Pods, with the real `getent`, `dig` and `nslookup`: the Pods' own
//! resolv.conf, hosts and nsswitch.conf, kube-dns on 10.96.0.10 reached through kube-proxy,
//! Service, headless, hostname/subdomain, SRV, PTR and pod names, NXDOMAIN with the SOA, and an
//! outside name forwarded to the lab's upstream (a real dnsmasq on loopback). The official
//! Python `kubernetes` client drives the same checks from its side: it creates a Python Pod that
//! resolves through libc and runs the same real tools, reads its log, kube-dns's ClusterIPs and
//! the headless Service's EndpointSlice hostnames.

mod common;

use common::*;
use lab_dns::peer::Dnsmasq;
use lab_node::{Cluster, ClusterOptions};
use std::collections::HashMap;
use std::time::Duration;

const MANIFEST: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: shop}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  ipFamilyPolicy: PreferDualStack
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: http}]
---
apiVersion: v1
kind: Service
metadata: {name: db, namespace: shop}
spec:
  clusterIP: None
  selector: {app: db}
  ports: [{name: pg, port: 5432}]
---
apiVersion: v1
kind: Pod
metadata: {name: web-1, namespace: shop, labels: {app: web}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - {name: web, image: busybox, command: [sleep, "100000"], ports: [{name: http, containerPort: 8080}]}
---
apiVersion: v1
kind: Pod
metadata: {name: db-0, namespace: shop, labels: {app: db}}
spec:
  hostname: db-0
  subdomain: db
  terminationGracePeriodSeconds: 1
  containers:
  - {name: db, image: busybox, command: [sleep, "100000"], ports: [{name: pg, containerPort: 5432}]}
"#;

const PROBE: &str = r#"
for i in $(seq 100); do getent hosts db-0.db.shop.svc.cluster.local >/dev/null && break; sleep 0.1; done
echo "== resolv"; cat /etc/resolv.conf
echo "== hosts"; cat /etc/hosts
echo "== nsswitch"; grep '^hosts:' /etc/nsswitch.conf
echo "== hostname"; hostname
echo "== getent-short"; getent ahostsv4 web | head -n1
echo "== getent-db-0"; getent hosts db-0.db
echo "== dig-search"; dig +short +search web
echo "== dig-aaaa"; dig +short web.shop.svc.cluster.local AAAA
echo "== dig-srv"; dig +short _http._tcp.web.shop.svc.cluster.local SRV
echo "== dig-srv-headless"; dig +short _pg._tcp.db.shop.svc.cluster.local SRV
echo "== dig-headless"; dig +short db.shop.svc.cluster.local
echo "== dig-ptr"; dig +short -x "$WEB_SERVICE_HOST"
echo "== dig-pod"; dig +short "$(echo "$POD_IP" | tr . -).shop.pod.cluster.local"
echo "== dig-kube-dns"; dig +short kube-dns.kube-system.svc.cluster.local
echo "== dig-nx"; dig nope.shop.svc.cluster.local | grep -E 'status:|IN.SOA'
echo "== dig-tcp"; dig +tcp +short web.shop.svc.cluster.local
echo "== nslookup"; nslookup web.shop.svc.cluster.local
echo "== outside"; dig +short outside.test
echo "== nslookup-outside"; nslookup outside.test
echo "== end"
"#;

/// Runs inside the `python` image's Pod (the host's python3 and tools): libc's resolver through
/// Python's socket module, then the real `getent`, `nslookup` and `dig`.
const PY_PROBE: &str = r#"
import socket, subprocess, time
for _ in range(100):
    try:
        socket.gethostbyname("db-0.db")
        break
    except OSError:
        time.sleep(0.1)
def run(*argv):
    print(subprocess.run(argv, capture_output=True, text=True).stdout, end="")
web = socket.gethostbyname("web")
print("== py-web"); print(web)
print("== py-db-0"); print(socket.gethostbyname_ex("db-0.db")[2][0])
print("== py-ptr"); print(socket.gethostbyaddr(web)[0])
try:
    socket.gethostbyname("nope.shop.svc.cluster.local.")
    print("== py-nx"); print("resolved")
except socket.gaierror as e:
    print("== py-nx"); print(e.errno == socket.EAI_NONAME)
print("== getent"); run("getent", "ahostsv4", "web.shop")
print("== nslookup"); run("nslookup", "db.shop.svc.cluster.local")
print("== dig-srv"); run("dig", "+short", "_pg._tcp.db.shop.svc.cluster.local", "SRV")
print("== end")
"#;

/// The official Python client: creates the Pod running [`PY_PROBE`], waits for it to finish, and
/// reads its log, kube-dns's ClusterIPs and the hostnames in the headless Service's slices.
const PY_CLIENT: &str = r#"
import json, sys, time
from kubernetes import client, config
config.load_kube_config(config_file=sys.argv[1])
core = client.CoreV1Api()
core.create_namespaced_pod("shop", {"apiVersion": "v1", "kind": "Pod",
    "metadata": {"name": "py-probe"},
    "spec": {"restartPolicy": "Never", "terminationGracePeriodSeconds": 1,
             "containers": [{"name": "probe", "image": "python:3.12-slim",
                             "command": ["python3", "-c", sys.argv[2]]}]}})
deadline = time.time() + 90
while True:
    p = core.read_namespaced_pod("py-probe", "shop")
    if p.status.phase in ("Succeeded", "Failed"):
        break
    assert time.time() < deadline, p.status
    time.sleep(0.2)
kube_dns = core.read_namespaced_service("kube-dns", "kube-system").spec
slices = client.DiscoveryV1Api().list_namespaced_endpoint_slice(
    "shop", label_selector="kubernetes.io/service-name=db").items
print(json.dumps({"phase": p.status.phase,
    # (the field's Python name changed between client versions)
    "kube_dns": getattr(kube_dns, "cluster_ips", None) or getattr(kube_dns, "cluster_i_ps"),
    "db_hostnames": sorted(e.hostname or "" for s in slices for e in s.endpoints),
    "log": core.read_namespaced_pod_log("py-probe", "shop")}))
"#;

async fn python_probe(cluster: &Cluster) -> serde_json::Value {
    python_json(cluster.kubeconfig_path(), PY_CLIENT, &[PY_PROBE]).await
}

fn sections(log: &str) -> HashMap<String, String> {
    let mut out = HashMap::new();
    let mut cur = String::new();
    for line in log.lines() {
        if let Some(name) = line.strip_prefix("== ") {
            cur = name.to_string();
            out.insert(cur.clone(), String::new());
        } else if let Some(s) = out.get_mut(&cur) {
            s.push_str(line);
            s.push('\n');
        }
    }
    out
}

async fn run_probe(cluster: &Cluster, name: &str, spec_extra: &str, script: &str) -> String {
    let path = cluster.data_dir().join(format!("{name}.yaml"));
    let indented: String = script.lines().map(|l| format!("      {l}\n")).collect();
    let pod = format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: shop}}\nspec:\n  restartPolicy: Never\n{spec_extra}  containers:\n  - name: probe\n    image: busybox\n    env: [{{name: POD_IP, valueFrom: {{fieldRef: {{fieldPath: status.podIP}}}}}}]\n    command: [sh, -c]\n    args:\n    - |\n{indented}"
    );
    std::fs::write(&path, pod).unwrap();
    let (ok, _, err) = kubectl(cluster, &["apply", "-f", path.to_str().unwrap()]).await;
    assert!(ok, "{err}");
    let client = cluster.client().await.unwrap();
    wait_pod(&client, "shop", name, "Succeeded", |p| {
        phase(p) == "Succeeded"
    })
    .await;
    let (ok, out, err) = kubectl(cluster, &["logs", "-n", "shop", name]).await;
    assert!(ok, "{err}");
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_resolve_cluster_names_with_real_resolvers() {
    let upstream = Dnsmasq::start(&["--address=/outside.test/192.0.2.7".into()]).unwrap();
    let mut opts = ClusterOptions::new("dns-pods", ghostwire_bin());
    opts.backoff_initial = Duration::from_millis(200);
    opts.dns_upstream = Some(upstream.addr());
    let cluster = Cluster::start(opts)
        .await
        .expect("lab cluster starts (root needed)");
    let client = cluster.client().await.unwrap();

    // kube-dns holds .10 of the static band; a user Service is allocated above it.
    let (ok, out, err) = kubectl(
        &cluster,
        &[
            "get",
            "svc",
            "-n",
            "kube-system",
            "kube-dns",
            "-o",
            "jsonpath={.spec.clusterIPs}",
        ],
    )
    .await;
    assert!(ok, "{err}");
    assert_eq!(out, r#"["10.96.0.10","fd00:10:96::a"]"#);

    let path = cluster.data_dir().join("shop.yaml");
    std::fs::write(&path, MANIFEST).unwrap();
    let (ok, _, err) = kubectl(&cluster, &["apply", "-f", path.to_str().unwrap()]).await;
    assert!(ok, "{err}");
    let ips = lab_node::scenario::cluster_ips(&client, "shop", "web")
        .await
        .unwrap();
    let web_v4 = ips[0].to_string();
    let web_v6 = ips[1].to_string();
    let std::net::IpAddr::V4(v4) = ips[0] else {
        panic!("{ips:?}")
    };
    assert!(
        u32::from(v4) - u32::from(std::net::Ipv4Addr::new(10, 96, 0, 0)) >= 256,
        "{v4} is in the static band"
    );
    wait_pod(&client, "shop", "web-1", "Ready", ready).await;
    let db_pod = wait_pod(&client, "shop", "db-0", "Ready", ready).await;
    let db_ip = db_pod.status.unwrap().pod_ip.unwrap();

    // kubectl's probe Pod and the Python client's, at the same time.
    let (log, py) = tokio::join!(
        run_probe(&cluster, "probe", "", PROBE),
        python_probe(&cluster)
    );
    let s = sections(&log);
    assert!(s.contains_key("end"), "{log}");
    assert_eq!(
        s["resolv"],
        "nameserver 10.96.0.10\nsearch shop.svc.cluster.local svc.cluster.local cluster.local\noptions ndots:5\n"
    );
    assert!(
        s["hosts"].starts_with("# Kubernetes-managed hosts file.\n"),
        "{log}"
    );
    assert!(s["hosts"].contains("\tprobe\n"), "{log}");
    assert_eq!(s["nsswitch"].trim(), "hosts:          files dns");
    assert_eq!(s["hostname"].trim(), "probe");
    assert!(s["getent-short"].starts_with(&web_v4), "{log}");
    assert!(
        s["getent-db-0"].starts_with(&format!("{db_ip} "))
            && s["getent-db-0"].contains("db-0.db.shop.svc.cluster.local"),
        "{log}"
    );
    assert_eq!(s["dig-search"].trim(), web_v4);
    assert_eq!(s["dig-aaaa"].trim(), web_v6);
    assert_eq!(s["dig-srv"].trim(), "0 100 80 web.shop.svc.cluster.local.");
    assert_eq!(
        s["dig-srv-headless"].trim(),
        "0 100 5432 db-0.db.shop.svc.cluster.local."
    );
    assert_eq!(s["dig-headless"].trim(), db_ip);
    assert_eq!(s["dig-ptr"].trim(), "web.shop.svc.cluster.local.");
    assert!(s["dig-pod"].starts_with("10.244.0."), "{log}");
    assert_eq!(s["dig-kube-dns"].trim(), "10.96.0.10");
    assert!(s["dig-nx"].contains("status: NXDOMAIN"), "{log}");
    assert!(
        s["dig-nx"].contains("SOA\tns.dns.cluster.local. hostmaster.cluster.local."),
        "{log}"
    );
    assert_eq!(s["dig-tcp"].trim(), web_v4);
    assert!(
        s["nslookup"].contains(&format!("Address: {web_v4}")),
        "{log}"
    );
    assert!(s["nslookup"].contains("Server:\t\t10.96.0.10"), "{log}");
    assert_eq!(
        s["outside"].trim(),
        "192.0.2.7",
        "forwarded to the upstream: {log}"
    );
    // (dnsmasq itself refuses the AAAA half of nslookup's question.)
    assert!(
        s["nslookup-outside"].contains("Address: 192.0.2.7"),
        "{log}"
    );

    // The Python client's side: its Pod resolved through libc and the same tools.
    assert_eq!(py["phase"], "Succeeded", "{py}");
    assert_eq!(
        py["kube_dns"],
        serde_json::json!(["10.96.0.10", "fd00:10:96::a"])
    );
    assert_eq!(py["db_hostnames"], serde_json::json!(["db-0"]), "{py}");
    let plog = py["log"].as_str().unwrap_or_default();
    let p = sections(plog);
    assert!(p.contains_key("end"), "{plog}");
    assert_eq!(p["py-web"].trim(), web_v4, "{plog}");
    assert_eq!(p["py-db-0"].trim(), db_ip, "{plog}");
    assert_eq!(p["py-ptr"].trim(), "web.shop.svc.cluster.local", "{plog}");
    assert_eq!(p["py-nx"].trim(), "True", "NXDOMAIN: {plog}");
    assert!(p["getent"].starts_with(&web_v4), "{plog}");
    assert!(
        p["nslookup"].contains(&format!("Address: {db_ip}")),
        "{plog}"
    );
    assert_eq!(
        p["dig-srv"].trim(),
        "0 100 5432 db-0.db.shop.svc.cluster.local.",
        "{plog}"
    );

    // dnsPolicy None: only dnsConfig; Default: the node's (none given to this lab: empty).
    let custom = "  dnsPolicy: None\n  dnsConfig:\n    nameservers: [10.96.0.10]\n    searches: [svc.cluster.local]\n    options: [{name: ndots, value: \"1\"}]\n";
    let log = run_probe(
        &cluster,
        "custom",
        custom,
        "cat /etc/resolv.conf; echo ==; getent ahostsv4 web.shop | head -n1",
    )
    .await;
    let (resolv, rest) = log.split_once("==\n").unwrap_or((&log, ""));
    assert_eq!(
        resolv,
        "nameserver 10.96.0.10\nsearch svc.cluster.local\noptions ndots:1\n"
    );
    assert!(rest.starts_with(&web_v4), "{log}");
    let log = run_probe(
        &cluster,
        "default-policy",
        "  dnsPolicy: Default\n",
        "cat /etc/resolv.conf; echo end",
    )
    .await;
    assert_eq!(log, "end\n");
    cluster.shutdown(Duration::from_secs(2)).await;
}
