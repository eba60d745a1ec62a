//! Shared helpers for the binary's integration tests: they run the real
//! `ghostwire` binary inside lab pods on the real kernel.
#![allow(dead_code)]

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
