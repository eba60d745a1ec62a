//! Shared helpers for the binary's integration tests: they run the real
//! `ghostwire` binary inside lab pods on the real kernel.
#![allow(dead_code)]

pub mod cluster;
pub mod target;

use lab_net::Pod;
use std::path::{Path, PathBuf};
use std::process::Output;

pub fn ghostwire() -> &'static str {
    env!("CARGO_BIN_EXE_ghostwire")
}

/// A directory named after the test, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(test: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!("gw-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Gives a pod its own /etc/resolv.conf, the way `ip netns exec` looks for it
/// (/etc/netns/NAME/resolv.conf); removed on drop.
pub struct PodResolv(PathBuf);

impl PodResolv {
    pub fn new(pod: &Pod, nameserver: &str) -> PodResolv {
        let dir = Path::new("/etc/netns").join(pod.netns().name());
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("resolv.conf"),
            format!("nameserver {nameserver}\n"),
        )
        .unwrap();
        PodResolv(dir)
    }
}

impl Drop for PodResolv {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
        // Remove /etc/netns too if we were the last to use it, as the host had it.
        let _ = std::fs::remove_dir(Path::new("/etc/netns"));
    }
}

/// Runs `ghostwire ARGS` inside the pod with only the given GW_* environment.
pub fn run_in(pod: &Pod, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = pod.command(ghostwire());
    cmd.args(args);
    for (k, _) in std::env::vars() {
        if k.starts_with("GW_") || k == "POD_NAMESPACE" || k == "KUBECONFIG" {
            cmd.env_remove(k);
        }
    }
    cmd.envs(env.iter().copied());
    cmd.output().expect("run ghostwire")
}

pub fn assert_ok(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The pod's rules, normalised (see `netrules::fingerprint`).
pub fn fingerprint(pod: &Pod) -> String {
    pod.netns().run(netrules::fingerprint).unwrap().unwrap()
}

/// One sample of a Prometheus text exposition: metric name, labels, value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

/// Parses the Prometheus/OpenMetrics text format (comments skipped); panics with the
/// offending line on anything malformed, so a broken exposition fails the test.
pub fn parse_metrics(text: &str) -> Vec<Sample> {
    let mut out = Vec::new();
    for line in text.lines() {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("bad line {line:?}"));
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value in {line:?}"));
        let (name, labels) = match series.split_once('{') {
            None => (series.to_string(), vec![]),
            Some((name, rest)) => {
                let body = rest
                    .strip_suffix('}')
                    .unwrap_or_else(|| panic!("bad labels in {line:?}"));
                let labels = body
                    .split(',')
                    .filter(|p| !p.is_empty())
                    .map(|p| {
                        let (k, v) = p
                            .split_once('=')
                            .unwrap_or_else(|| panic!("bad label in {line:?}"));
                        (k.to_string(), v.trim_matches('"').to_string())
                    })
                    .collect();
                (name.to_string(), labels)
            }
        };
        assert!(
            name.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "bad metric name in {line:?}"
        );
        out.push(Sample {
            name,
            labels,
            value,
        });
    }
    out
}

/// The value of `name` with exactly these labels, if present.
pub fn metric(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples
        .iter()
        .find(|s| {
            s.name == name
                && s.labels.len() == labels.len()
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.iter().any(|(a, b)| a == k && b == v))
        })
        .map(|s| s.value)
}

/// A plain HTTP GET to 127.0.0.1; returns (status, body).
pub fn http_get(addr: std::net::SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(5))?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(5)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"
    )?;
    let mut raw = String::new();
    s.read_to_string(&mut raw)?;
    let status = raw.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = raw
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

/// Waits for `cond` to hold, checking every 50 ms, for at most `secs` seconds.
pub fn wait_for(what: &str, secs: u64, mut cond: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    while !cond() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// The bound of the lab-cluster tests' waits (Pods start slowly on a loaded 2-core machine).
pub const LAB_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(90);

/// [`until`] within [`LAB_TIMEOUT`].
pub async fn until_lab<T, F: std::future::Future<Output = Option<T>>>(
    what: &str,
    f: impl FnMut() -> F,
) -> T {
    until(what, LAB_TIMEOUT.as_secs(), f).await
}

/// Waits (async) for `f` to give a value, checking every 200 ms, for at most `secs` seconds.
pub async fn until<T, F: std::future::Future<Output = Option<T>>>(
    what: &str,
    secs: u64,
    mut f: impl FnMut() -> F,
) -> T {
    let end = tokio::time::Instant::now() + std::time::Duration::from_secs(secs);
    while tokio::time::Instant::now() < end {
        if let Some(x) = f().await {
            return x;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    panic!("timed out waiting for {what}");
}

/// The pids of the attached proxies in the network namespace `ns` (an inode).
pub fn proxies(ns: u64) -> Vec<u32> {
    let mut out = vec![];
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let args: Vec<&[u8]> = cmd.split(|b| *b == 0).collect();
        if !(args.contains(&&b"identity-agent"[..]) && args.contains(&&b"--proxy"[..])) {
            continue;
        }
        if std::fs::metadata(format!("/proc/{pid}/ns/net"))
            .is_ok_and(|m| std::os::unix::fs::MetadataExt::ino(&m) == ns)
        {
            out.push(pid);
        }
    }
    out
}

/// The real `ghostwire injector` on loopback as the lab cluster's webhook for Pods labelled
/// `app=shop` (docs/lab/injector.yaml, its port replaced), once it has written its CA into the
/// webhook configuration; killed when the child is dropped.
pub async fn injector(c: &lab_node::Cluster) -> tokio::process::Child {
    use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
    use kube::api::{Api, Patch, PatchParams};
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let listen = format!("127.0.0.1:{port}");
    let child = tokio::process::Command::new(ghostwire())
        .args(["injector", "--self-signed", "--listen", &listen])
        .args(["--admin-listen", "127.0.0.1:0", "--tls-san", "127.0.0.1"])
        .args(["--namespace", "default", "--defaults-configmap", ""])
        .args(["--image", "ghostwire:dev"])
        .env("KUBECONFIG", c.kubeconfig_path())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../docs/lab/injector.yaml"
    ))
    .unwrap()
    .replace("127.0.0.1:8443", &listen);
    let webhook: serde_json::Value = serde_saphyr::from_str(&text).unwrap();
    let api: Api<MutatingWebhookConfiguration> = Api::all(c.client().await.unwrap());
    api.patch(
        "ghostwire-injector",
        &PatchParams::apply("test").force(),
        &Patch::Apply(&webhook),
    )
    .await
    .unwrap();
    until(
        "the injector's CA in its webhook configuration",
        90,
        || async {
            let hook = api.get("ghostwire-injector").await.ok()?;
            hook.webhooks?
                .first()?
                .client_config
                .ca_bundle
                .as_ref()
                .map(|_| ())
        },
    )
    .await;
    child
}
