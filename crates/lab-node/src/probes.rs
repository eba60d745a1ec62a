//! Startup, readiness and liveness probes and lifecycle hooks (HTTP GET, TCP, exec, sleep), run
//! by the node as the kubelet runs them: HTTP and TCP from the node's namespace to the pod's IP,
//! exec inside the container (its mount, UTS and network namespaces, via `nsenter`). Readiness
//! and liveness start once the startup probe has succeeded; a startup or liveness probe that
//! reaches its failure threshold kills the container (preStop hook, SIGTERM, grace, SIGKILL),
//! which restarts under the pod's restart policy. gRPC probes are not run (a container with only
//! one counts as ready).
//!
//! Each failed attempt is recorded as the kubelet records it: a Warning `Unhealthy` event on the
//! container, `<Kind> probe failed: <output>` (an exec probe's output, `HTTP probe failed with
//! statuscode: 503`, or the dial error), deduplicated into a count; a kill after the threshold
//! as `Killing` (`Container web failed liveness probe, will be restarted`). A failed hook is a
//! Warning `FailedPostStartHook` / `FailedPreStopHook`.

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

/// The most of an exec probe's output that is kept (the kubelet's limit).
const MAX_OUTPUT: usize = 10 * 1024;

/// A dial error as Go words it (`connect: connection refused`), which is what the kubelet's
/// probe messages carry.
fn dial_error(addr: SocketAddr, e: &std::io::Error) -> String {
    let why = match e.kind() {
        std::io::ErrorKind::ConnectionRefused => "connect: connection refused".to_string(),
        std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock => "i/o timeout".to_string(),
        std::io::ErrorKind::HostUnreachable => "connect: no route to host".to_string(),
        _ => e.to_string(),
    };
    format!("dial tcp {addr}: {why}")
}

/// An exec probe's output as the kubelet reports it: stdout then stderr, at most
/// [`MAX_OUTPUT`] bytes.
fn exec_output(stdout: &[u8], stderr: &[u8]) -> String {
    let mut all = stdout.to_vec();
    all.extend_from_slice(stderr);
    all.truncate(MAX_OUTPUT);
    String::from_utf8_lossy(&all).into_owned()
}

/// One probe attempt; the failure's message otherwise.
async fn attempt(
    shared: &Shared,
    spec: &Value,
    probe: &Value,
    pod_ip: IpAddr,
    env: &[(String, String)],
    pgid: i32,
) -> Result<(), String> {
    let timeout = Duration::from_secs(secs(&probe["timeoutSeconds"], 1).max(1));
    handler(shared, spec, probe, pod_ip, env, pgid, timeout).await
}

/// Runs a probe's or a hook's action (`httpGet`, `tcpSocket`, `exec`, `sleep`) once, within
/// `timeout`; the failure's message (as the kubelet words it) otherwise.
pub async fn handler(
    shared: &Shared,
    spec: &Value,
    probe: &Value,
    pod_ip: IpAddr,
    env: &[(String, String)],
    pgid: i32,
    timeout: Duration,
) -> Result<(), String> {
    if let Some(secs) = probe["sleep"]["seconds"].as_u64() {
        tokio::time::sleep(Duration::from_secs(secs).min(timeout)).await;
        return Ok(());
    }
    if let Some(h) = probe.get("httpGet").filter(|v| v.is_object()) {
        let Some(p) = port(spec, &h["port"]) else {
            return Err(format!("unknown port {}", h["port"]));
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
        let url = format!("http://{addr}{path}");
        return tokio::task::spawn_blocking(move || {
            node.run(move || -> Result<(), String> {
                let mut s = TcpStream::connect_timeout(&addr, timeout)
                    .map_err(|e| format!("Get \"{url}\": {}", dial_error(addr, &e)))?;
                let io = |e: std::io::Error| format!("Get \"{url}\": {e}");
                s.set_read_timeout(Some(timeout)).map_err(io)?;
                write!(
                    s,
                    "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: kube-probe/1.33\r\nAccept: */*\r\n{headers}Connection: close\r\n\r\n"
                ).map_err(io)?;
                let mut buf = [0u8; 64];
                let n = s.read(&mut buf).map_err(io)?;
                let line = String::from_utf8_lossy(&buf[..n]);
                let code: u16 = line.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
                if (200..400).contains(&code) {
                    Ok(())
                } else {
                    Err(format!("HTTP probe failed with statuscode: {code}"))
                }
            })
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    }
    if let Some(t) = probe.get("tcpSocket").filter(|v| v.is_object()) {
        let Some(p) = port(spec, &t["port"]) else {
            return Err(format!("unknown port {}", t["port"]));
        };
        let host = t["host"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .unwrap_or(pod_ip);
        let node = shared.node_netns.clone();
        let addr = SocketAddr::new(host, p);
        return tokio::task::spawn_blocking(move || {
            node.run(move || {
                TcpStream::connect_timeout(&addr, timeout)
                    .map(drop)
                    .map_err(|e| dial_error(addr, &e))
            })
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    }
    if let Some(e) = probe.get("exec").filter(|v| v.is_object()) {
        let cmd: Vec<String> = arr(e, "/command")
            .iter()
            .filter_map(|c| c.as_str().map(str::to_string))
            .collect();
        if cmd.is_empty() {
            return Err("exec: no command".into());
        }
        // Not before the container's own namespaces and mounts are in place.
        if !crate::container::wait_launched(pgid, timeout).await {
            return Err(format!(
                "exec {:?}: the container did not start within {}s",
                cmd[0],
                timeout.as_secs()
            ));
        }
        let mut c = tokio::process::Command::new(crate::util::host_program("nsenter"));
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
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
        return match tokio::time::timeout(timeout, c.output()).await {
            Ok(Ok(out)) if out.status.success() => Ok(()),
            Ok(Ok(out)) => Err(exec_output(&out.stdout, &out.stderr)),
            Ok(Err(e)) => Err(format!("exec {:?}: {e}", cmd[0])),
            Err(_) => Err(format!(
                "command {:?} timed out after {}s",
                cmd.join(" "),
                timeout.as_secs()
            )),
        };
    }
    Err("no handler (exec, httpGet, tcpSocket or sleep)".into())
}

/// Kills a container as the kubelet does after a failed startup or liveness probe: its preStop
/// hook, SIGTERM, the grace period, SIGKILL. It then restarts under the pod's restart policy.
#[allow(clippy::too_many_arguments)]
async fn kill(
    shared: &Shared,
    rt: &PodRt,
    kind: Kind,
    probe_kind: &str,
    spec: &Value,
    ip: IpAddr,
    env: &[(String, String)],
    pgid: i32,
) {
    let name = str_of(spec, "/name");
    tracing::info!(
        pod = rt.name,
        container = name,
        "{probe_kind} probe failed; killing"
    );
    shared.events.normal(
        &rt.container_ref(kind, name),
        "Killing",
        format!("Container {name} failed {probe_kind} probe, will be restarted"),
    );
    let grace = Duration::from_secs(
        rt.lock().pod["spec"]["terminationGracePeriodSeconds"]
            .as_u64()
            .unwrap_or(30),
    );
    let begun = tokio::time::Instant::now();
    pre_stop(shared, rt, kind, spec, ip, env, pgid, grace).await;
    let _ = killpg(Pid::from_raw(pgid), Signal::SIGTERM);
    tokio::time::sleep(grace.saturating_sub(begun.elapsed())).await;
    let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
}

/// Runs the container's preStop hook, if it has one, for at most `grace`.
#[allow(clippy::too_many_arguments)]
pub async fn pre_stop(
    shared: &Shared,
    rt: &PodRt,
    kind: Kind,
    spec: &Value,
    ip: IpAddr,
    env: &[(String, String)],
    pgid: i32,
    grace: Duration,
) {
    let hook = &spec["lifecycle"]["preStop"];
    if hook.is_object() {
        let result = tokio::time::timeout(
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
        .unwrap_or_else(|_| Err(format!("did not finish within {}s", grace.as_secs())));
        if let Err(msg) = result {
            let name = str_of(spec, "/name");
            tracing::info!(container = name, "preStop hook failed");
            shared
                .events
                .warning(&rt.container_ref(kind, name), "FailedPreStopHook", msg);
        }
    }
}

/// Records a failed probe attempt (`Readiness probe failed: …`).
fn unhealthy(shared: &Shared, rt: &PodRt, kind: Kind, spec: &Value, probe_kind: &str, msg: &str) {
    let mut title = probe_kind.to_string();
    if let Some(first) = title.get_mut(..1) {
        first.make_ascii_uppercase();
    }
    shared.events.warning(
        &rt.container_ref(kind, str_of(spec, "/name")),
        "Unhealthy",
        format!("{title} probe failed: {msg}"),
    );
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
            match attempt(&shared, &spec, startup, ip, &env, pgid).await {
                Ok(()) => {
                    rt.update(kind, idx, |c| {
                        c.started = c.running();
                        c.ready = c.running() && !has_readiness;
                    });
                    break;
                }
                Err(msg) => unhealthy(&shared, &rt, kind, &spec, "startup", &msg),
            }
            fails += 1;
            if fails >= failure_needed {
                kill(&shared, &rt, kind, "startup", &spec, ip, &env, pgid).await;
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
                let result = attempt(&shared, &spec, &probe, ip, &env, pgid).await;
                let ok = result.is_ok();
                if let Err(msg) = &result {
                    unhealthy(&shared, &rt, kind, &spec, probe_kind, msg);
                }
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
                    kill(&shared, &rt, kind, "liveness", &spec, ip, &env, pgid).await;
                    return;
                }
                tokio::time::sleep(period).await;
            }
        });
    }
    while tasks.join_next().await.is_some() {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_are_worded_as_the_kubelet_words_them() {
        let addr: SocketAddr = "10.244.0.7:8080".parse().unwrap();
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert_eq!(
            dial_error(addr, &refused),
            "dial tcp 10.244.0.7:8080: connect: connection refused"
        );
        assert_eq!(exec_output(b"not ready\n", b"warn\n"), "not ready\nwarn\n");
        assert_eq!(exec_output(&[b'x'; 20_000], b"").len(), MAX_OUTPUT);
    }
}
