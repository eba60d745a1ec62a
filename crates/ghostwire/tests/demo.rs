//! `ghostwire demo` end to end: passes, and leaves nothing behind, also when stopped by a signal.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

fn leftovers(pid: u32) -> Vec<String> {
    netns::Netns::list()
        .unwrap()
        .into_iter()
        .filter(|n| n.starts_with(&format!("gwl{pid}-")))
        .collect()
}

#[test]
fn demo_routes_right_and_cleans_up() {
    let child = Command::new(common::ghostwire())
        .args(["demo", "--backend", "nftables"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let preview_row = text
        .lines()
        .find(|l| l.trim_start().starts_with("shop-preview") && l.contains(" orders "))
        .unwrap_or_else(|| panic!("no preview row in:\n{text}"));
    assert!(
        preview_row.contains("orders-preview") && preview_row.ends_with('✓'),
        "{preview_row}"
    );
    assert!(leftovers(pid).is_empty(), "{:?}", leftovers(pid));
}

#[test]
fn sigterm_removes_the_lab() {
    let mut child = Command::new(common::ghostwire())
        .args(["demo", "--hold", "--backend", "iptables-legacy"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    // Wait until the lab is up and held (the line is printed only then).
    let held = lines
        .by_ref()
        .map_while(Result::ok)
        .any(|l| l.contains("holding the lab"));
    assert!(held, "demo never reached the hold");
    assert!(!leftovers(pid).is_empty(), "the held lab should exist");
    nix_kill(pid);
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130));
    assert!(leftovers(pid).is_empty(), "{:?}", leftovers(pid));
}

fn nix_kill(pid: u32) {
    let st = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(st.success());
}
