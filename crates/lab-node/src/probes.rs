//! Startup, readiness and liveness probes and lifecycle hooks (HTTP GET, TCP, exec, sleep), run
//! by the node as the kubelet runs them: HTTP and TCP from the node's namespace to the pod's IP,
//! exec inside the container (its mount, UTS and network namespaces, via `nsenter`). Readiness
//! and liveness start once the startup probe has succeeded; a startup or liveness probe that
//! reaches its failure threshold kills the container (preStop hook, SIGTERM, grace, SIGKILL),
//! which restarts under the pod's restart policy. gRPC probes are not run (a container with only
//! one counts as ready).

use crate::Shared;
use crate::state::{Kind, PodRt};
use crate::util::{arr, str_of};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use serde_json::Value;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

fn secs(v: &Value, default: u64) -> u64 {
    v.as_u64().unwrap_or(default)
}

fn port(spec: &Value, p: &Value) -> Option<u16> {
    match p {
        Value::Number(n) => n.as_u64().and_then(|n| u16::try_from(n).ok()),
        Value::String(name) => arr(spec, "/ports").iter().find_map(|cp| {
            (cp["name"] == name.as_str())
                .then(|| {
                    cp["containerPort"]
                        .as_u64()
                        .and_then(|n| u16::try_from(n).ok())
                })
                .flatten()
        }),
        _ => None,
    }
}

/// One probe attempt; `true` on success.
async fn attempt(
    shared: &Shared,
    spec: &Value,
    probe: &Value,
    pod_ip: IpAddr,
    env: &[(String, String)],
    pgid: i32,
) -> bool {
    let timeout = Duration::from_secs(secs(&probe["timeoutSeconds"], 1).max(1));
    handler(shared, spec, probe, pod_ip, env, pgid, timeout).await
}

/// Runs a probe's or a hook's action (`httpGet`, `tcpSocket`, `exec`, `sleep`) once, within
/// `timeout`; `true` on success.
pub async fn handler(
    shared: &Shared,
    spec: &Value,
    probe: &Value,
    pod_ip: IpAddr,
    env: &[(String, String)],
    pgid: i32,
    timeout: Duration,
) -> bool {
    if let Some(secs) = probe["sleep"]["seconds"].as_u64() {
        tokio::time::sleep(Duration::from_secs(secs).min(timeout)).await;
        return true;
    }
    if let Some(h) = probe.get("httpGet").filter(|v| v.is_object()) {
        let Some(p) = port(spec, &h["port"]) else {
            return false;
        };
        let host = h["host"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .unwrap_or(pod_ip);
        let path = match str_of(h, "/path") {
            "" => "/".to_string(),
            p => p.to_string(),
        };
        let headers: String = arr(h, "/httpHeaders")
            .iter()
            .map(|hd| format!("{}: {}\r\n", str_of(hd, "/name"), str_of(hd, "/value")))
            .collect();
        let node = shared.node_netns.clone();
        let addr = SocketAddr::new(host, p);
        return tokio::task::spawn_blocking(move || {
            node.run(move || -> std::io::Result<bool> {
                let mut s = TcpStream::connect_timeout(&addr, timeout)?;
                s.set_read_timeout(Some(timeout))?;
                write!(
                    s,
                    "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: kube-probe/1.33\r\nAccept: */*\r\n{headers}Connection: close\r\n\r\n"
                )?;
                let mut buf = [0u8; 64];
                let n = s.read(&mut buf)?;
                let line = String::from_utf8_lossy(&buf[..n]);
                let code: u16 = line.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
                Ok((200..400).contains(&code))
            })
        })
        .await
        .ok()
        .and_then(|r| r.ok())
        .and_then(|r| r.ok())
        .unwrap_or(false);
    }
    if let Some(t) = probe.get("tcpSocket").filter(|v| v.is_object()) {
        let Some(p) = port(spec, &t["port"]) else {
            return false;
        };
        let host = t["host"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .unwrap_or(pod_ip);
        let node = shared.node_netns.clone();
        let addr = SocketAddr::new(host, p);
        return tokio::task::spawn_blocking(move || {
            node.run(move || TcpStream::connect_timeout(&addr, timeout).is_ok())
        })
        .await
        .ok()
        .and_then(|r| r.ok())
        .unwrap_or(false);
    }
    if let Some(e) = probe.get("exec").filter(|v| v.is_object()) {
        let cmd: Vec<String> = arr(e, "/command")
            .iter()
            .filter_map(|c| c.as_str().map(str::to_string))
            .collect();
        if cmd.is_empty() {
            return false;
        }
        // Not before the container's own namespaces and mounts are in place.
        crate::container::wait_launched(pgid, timeout).await;
        let mut c = tokio::process::Command::new("nsenter");
        c.args([
            "--target",
            &pgid.to_string(),
            "--mount",
            "--uts",
            "--net",
            "--",
        ])
        .args(&cmd)
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true);
        return matches!(
            tokio::time::timeout(timeout, c.status()).await,
            Ok(Ok(s)) if s.success()
        );
    }
    false
}

/// Kills a container as the kubelet does after a failed startup or liveness probe: its preStop
/// hook, SIGTERM, the grace period, SIGKILL. It then restarts under the pod's restart policy.
async fn kill(
    shared: &Shared,
    rt: &PodRt,
    spec: &Value,
    ip: IpAddr,
    env: &[(String, String)],
    pgid: i32,
) {
    let grace = Duration::from_secs(
        rt.lock().pod["spec"]["terminationGracePeriodSeconds"]
            .as_u64()
            .unwrap_or(30),
    );
    let begun = tokio::time::Instant::now();
    pre_stop(shared, spec, ip, env, pgid, grace).await;
    let _ = killpg(Pid::from_raw(pgid), Signal::SIGTERM);
    tokio::time::sleep(grace.saturating_sub(begun.elapsed())).await;
    let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
}

/// Runs the container's preStop hook, if it has one, for at most `grace`.
pub async fn pre_stop(
    shared: &Shared,
    spec: &Value,
    ip: IpAddr,
    env: &[(String, String)],
    pgid: i32,
    grace: Duration,
) {
    let hook = &spec["lifecycle"]["preStop"];
    if hook.is_object() {
        let ok = tokio::time::timeout(
            grace,
            handler(
                shared,
                spec,
                hook,
                ip,
                env,
                pgid,
                grace.max(Duration::from_secs(1)),
            ),
        )
        .await
        .unwrap_or(false);
        if !ok {
            tracing::info!(container = str_of(spec, "/name"), "preStop hook failed");
        }
    }
}

/// Runs the container's startup probe to success (then marks it started), then its readiness
/// and liveness probes, until aborted.
pub async fn run(
    shared: Arc<Shared>,
    rt: Arc<PodRt>,
    kind: Kind,
    idx: usize,
    spec: Value,
    env: Vec<(String, String)>,
    pgid: i32,
) {
    let Some(ip) = rt.lock().ipv4.map(IpAddr::V4) else {
        return;
    };
    let has_readiness = spec["readinessProbe"].is_object();
    let startup = &spec["startupProbe"];
    if startup.is_object() {
        tokio::time::sleep(Duration::from_secs(secs(
            &startup["initialDelaySeconds"],
            0,
        )))
        .await;
        let period = Duration::from_secs(secs(&startup["periodSeconds"], 10).max(1));
        let failure_needed = secs(&startup["failureThreshold"], 3).max(1);
        let mut fails = 0;
        loop {
            if attempt(&shared, &spec, startup, ip, &env, pgid).await {
                rt.update(kind, idx, |c| {
                    c.started = c.running();
                    c.ready = c.running() && !has_readiness;
                });
                break;
            }
            fails += 1;
            if fails >= failure_needed {
                tracing::info!(
                    pod = rt.name,
                    container = str_of(&spec, "/name"),
                    "startup probe failed; killing"
                );
                kill(&shared, &rt, &spec, ip, &env, pgid).await;
                return;
            }
            tokio::time::sleep(period).await;
        }
    }
    let mut tasks = tokio::task::JoinSet::new();
    for (probe_kind, probe) in [
        ("readiness", spec["readinessProbe"].clone()),
        ("liveness", spec["livenessProbe"].clone()),
    ] {
        if !probe.is_object() {
            continue;
        }
        let (shared, rt, spec, env) = (shared.clone(), rt.clone(), spec.clone(), env.clone());
        tasks.spawn(async move {
            tokio::time::sleep(Duration::from_secs(secs(&probe["initialDelaySeconds"], 0))).await;
            let period = Duration::from_secs(secs(&probe["periodSeconds"], 10).max(1));
            let success_needed = secs(&probe["successThreshold"], 1).max(1);
            let failure_needed = secs(&probe["failureThreshold"], 3).max(1);
            let (mut ok_run, mut fail_run) = (0u64, 0u64);
            loop {
                let ok = attempt(&shared, &spec, &probe, ip, &env, pgid).await;
                if ok {
                    ok_run += 1;
                    fail_run = 0;
                } else {
                    fail_run += 1;
                    ok_run = 0;
                }
                if probe_kind == "readiness" {
                    if ok_run >= success_needed {
                        rt.update(kind, idx, |c| c.ready = c.running());
                    } else if fail_run >= failure_needed {
                        rt.update(kind, idx, |c| c.ready = false);
                    }
                } else if fail_run >= failure_needed {
                    tracing::info!(
                        pod = rt.name,
                        container = str_of(&spec, "/name"),
                        "liveness probe failed; killing"
                    );
                    kill(&shared, &rt, &spec, ip, &env, pgid).await;
                    return;
                }
                tokio::time::sleep(period).await;
            }
        });
    }
    while tasks.join_next().await.is_some() {}
}
