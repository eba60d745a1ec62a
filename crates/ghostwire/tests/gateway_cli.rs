//! The gateway subcommands as a user runs them: settings.sh and nat.conf from files, exit
//! codes, and `gateway init` applied to a lab pod through `--netns`.

mod common;

use common::TempDir;
use std::process::Command;

fn ghostwire() -> Command {
    Command::new(common::ghostwire())
}

#[test]
fn shell_in_settings_sh_is_refused_with_exit_2_and_its_place() {
    let d = TempDir::new("cli-shell");
    std::fs::write(d.path("settings.sh"), "VXLAN_ID=42\nVXLAN_PORT=$(curl x)\n").unwrap();
    let out = ghostwire()
        .args(["gateway", "init", "--settings"])
        .arg(d.path("settings.sh"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("settings.sh:2:12"), "{err}");
    assert!(err.contains("command substitution"), "{err}");
}

#[test]
fn bad_nat_conf_is_refused_with_exit_2() {
    let d = TempDir::new("cli-nat");
    std::fs::write(d.path("settings.sh"), "").unwrap();
    std::fs::write(d.path("nat.conf"), "web 10 tcp:99999\n").unwrap();
    let out = ghostwire()
        .args(["client", "init", "--settings"])
        .arg(d.path("settings.sh"))
        .arg("--nat-conf")
        .arg(d.path("nat.conf"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("nat.conf:1") && err.contains("99999"), "{err}");
}

/// A settings.sh or nat.conf named by flag or env must exist: with a typo, init would otherwise
/// go on with every default (the kill switch on). Only the default paths may be missing. Run in a
/// lab Pod, so that a regression changes a throwaway namespace, not this machine.
#[test]
fn a_named_config_file_that_is_missing_is_refused_with_exit_2() {
    let mut lab = lab_net::Lab::new("gw_cli_missing").unwrap();
    let gw = lab.add_pod("gw").unwrap();
    let d = TempDir::new("cli-missing");
    std::fs::write(d.path("settings.sh"), "").unwrap();
    let missing = d.path("setings.sh");
    let runs: [(&[&str], &str, &str); 3] = [
        (
            &["--settings", missing.to_str().unwrap()],
            "GW_SETTINGS_FILE",
            "--settings",
        ),
        (
            &["--nat-conf", "/nonexistent/nat.conf"],
            "NAT_CONF",
            "--nat-conf",
        ),
        (
            &["--nat6-conf", "/nonexistent/nat6.conf"],
            "NAT6_CONF",
            "--nat6-conf",
        ),
    ];
    for (args, env, flag) in runs {
        let mut cmd = ghostwire();
        cmd.args(["gateway", "init", "--netns", gw.netns().name()]);
        if env != "GW_SETTINGS_FILE" {
            cmd.arg("--settings").arg(d.path("settings.sh"));
        }
        let out = cmd.args(args).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(
            err.contains(env) && err.contains(flag) && err.contains("no such file"),
            "{args:?}: {err}"
        );
        assert!(err.contains(args[1]), "the path is named: {err}");
    }
    // Nothing was applied: no table in the Pod.
    let tables = gw.command("nft").args(["list", "tables"]).output().unwrap();
    assert!(tables.status.success());
    let tables = String::from_utf8_lossy(&tables.stdout);
    assert!(!tables.contains("ghostwire_gateway"), "{tables}");
}

#[test]
fn gateway_init_in_a_lab_pod_with_a_seed_settings_file() {
    let mut lab = lab_net::Lab::new("gw_cli").unwrap();
    let gw = lab.add_pod("gw").unwrap();
    let d = TempDir::new("cli-init");
    // pod-gateway's own style, unchanged.
    std::fs::write(
        d.path("settings.sh"),
        "#!/bin/sh\nexport VXLAN_ID=\"${VXLAN_ID:-42}\"\nexport VXLAN_IP_NETWORK=\"${VXLAN_IP_NETWORK:-172.16.0}\"\nexport VPN_INTERFACE=\"${VPN_INTERFACE:-tun0}\"\nexport VPN_BLOCK_OTHER_TRAFFIC=\"${VPN_BLOCK_OTHER_TRAFFIC:-true}\"\n",
    )
    .unwrap();
    std::fs::write(d.path("nat.conf"), "transmission 10 tcp:18289,udp:18289\n").unwrap();
    let out = ghostwire()
        .args([
            "gateway",
            "init",
            "--netns",
            gw.netns().name(),
            "--settings",
        ])
        .arg(d.path("settings.sh"))
        .arg("--nat-conf")
        .arg(d.path("nat.conf"))
        .env("GW_LOG", "info")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rules = gw
        .command("nft")
        .args(["list", "table", "inet", "ghostwire_gateway"])
        .output()
        .unwrap();
    let rules = String::from_utf8_lossy(&rules.stdout);
    assert!(
        rules.contains("tcp dport 18289 dnat ip to 172.16.0.10:18289"),
        "{rules}"
    );
    let link = gw
        .command("ip")
        .args(["-d", "link", "show", "vxlan0"])
        .output()
        .unwrap();
    let link = String::from_utf8_lossy(&link.stdout);
    assert!(
        link.contains("vxlan id 42") && link.contains("mtu 1450"),
        "{link}"
    );
}
