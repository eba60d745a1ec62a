# The workloads benchmark from the official Python client (docs/benchmarks.md, "Lab: Deployments
# at scale"): python3 python_rollout.py KUBECONFIG REPLICAS LIMIT_SECONDS against a lab cluster.
# One lab cluster (kubeconfig argv[1]): a Deployment of N busybox Pods (exec readiness probe every
# second), apply -> all Ready (per Pod create -> Ready p50/p99), then a rolling update
# (template annotation) until N updated, available and no old Pods, with the Pod counts checked at
# every watch event. Prints one line of JSON.
import sys, time, json, threading
from kubernetes import client, config, watch
config.load_kube_config(sys.argv[1]); n = int(sys.argv[2]); limit = float(sys.argv[3])
core, apps = client.CoreV1Api(), client.AppsV1Api()
name = "ab"
pods = {}; born = {}; readyat = {}; state = {"rolling": False, "max_active": 0, "min_ready": 10**9, "events": 0}
lock = threading.Lock()
def watcher():
    w = watch.Watch()
    for ev in w.stream(core.list_namespaced_pod, "default", label_selector="app=ab", timeout_seconds=3600):
        p = ev["object"]; nm = p.metadata.name; now = time.time()
        with lock:
            if ev["type"] == "DELETED":
                pods.pop(nm, None)
            else:
                active = p.metadata.deletion_timestamp is None and p.status.phase not in ("Succeeded", "Failed")
                rd = active and any(c.type == "Ready" and c.status == "True" for c in (p.status.conditions or []))
                pods[nm] = (active, rd)
                born.setdefault(nm, now)
                if rd: readyat.setdefault(nm, now)
            if state["rolling"]:
                state["events"] += 1
                state["max_active"] = max(state["max_active"], sum(1 for a, r in pods.values() if a))
                state["min_ready"] = min(state["min_ready"], sum(1 for a, r in pods.values() if r))
threading.Thread(target=watcher, daemon=True).start()
time.sleep(2)
def done(gen):
    d = apps.read_namespaced_deployment(name, "default"); s = d.status
    return (s.observed_generation or 0) >= gen and s.updated_replicas == n and s.replicas == n and s.ready_replicas == n and s.available_replicas == n
def wait(gen):
    t = time.time()
    while not done(gen):
        if time.time() - t > limit:
            d = apps.read_namespaced_deployment(name, "default")
            rss = [(r.metadata.name, r.spec.replicas, r.status.replicas, r.status.ready_replicas) for r in apps.list_namespaced_replica_set("default", label_selector="app=ab").items]
            return "timeout status=%s rss=%s" % (d.status.to_dict(), rss)
        time.sleep(0.2)
def q(v, p): v = sorted(v); return v[min(len(v)-1, int(round((len(v)-1)*p)))]
t0 = time.time()
apps.create_namespaced_deployment("default", {"metadata": {"name": name}, "spec": {"replicas": n,
    "selector": {"matchLabels": {"app": name}}, "template": {"metadata": {"labels": {"app": name}}, "spec": {
    "terminationGracePeriodSeconds": 1, "containers": [{"name": "main", "image": "busybox", "command": ["sleep", "1000000"],
    "readinessProbe": {"exec": {"command": ["true"]}, "periodSeconds": 1}}]}}}})
err = wait(1); apply_s = time.time() - t0
with lock:
    per = [readyat[k] - born[k] for k in readyat]
out = {"n": n, "apply_s": round(apply_s, 1), "pod_p50_s": round(q(per, .5), 2), "pod_p99_s": round(q(per, .99), 2), "apply_err": err}
if not err:
    with lock:
        state["rolling"] = True
    t1 = time.time()
    d = apps.patch_namespaced_deployment(name, "default", {"spec": {"template": {"metadata": {"annotations": {"restartedAt": str(t1)}}}}})
    err = wait(d.metadata.generation)
    while not err:
        with lock:
            if len(pods) == n: break
        if time.time() - t1 > limit: err = "old pods never gone"
        time.sleep(0.2)
    out.update({"roll_s": round(time.time() - t1, 1), "roll_err": err, "max_active": state["max_active"], "min_ready": state["min_ready"], "events": state["events"]})
apps.delete_namespaced_deployment(name, "default")
print(json.dumps(out), flush=True)
