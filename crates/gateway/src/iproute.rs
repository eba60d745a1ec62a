//! Links, addresses, routes and policy rules through iproute2: every change of one step is one
//! `ip -batch -` process (not one per command), reads are `ip -j` (JSON). iproute2 is in every
//! image that has NET_ADMIN tooling, adds nothing to the build, and its batch mode stops at the
//! first failing line, so a step is applied in order and reports the exact line that failed.

use serde_json::Value;
use std::net::IpAddr;
use std::process::Command;

#[derive(Debug, thiserror::Error)]
pub enum IpError {
    #[error("cannot run `ip` (is iproute2 installed?): {0}")]
    Spawn(#[source] std::io::Error),
    #[error("`ip {args}` failed: {stderr}")]
    Failed { args: String, stderr: String },
    #[error("cannot parse the output of `ip {args}`: {reason}")]
    Parse { args: String, reason: String },
}

fn run(args: &[&str], stdin: Option<&str>) -> Result<String, IpError> {
    let out = netns::output(Command::new("ip").args(args), stdin.map(str::as_bytes))
        .map_err(IpError::Spawn)?;
    if !out.status.success() {
        let mut args = args.join(" ");
        if let Some(s) = stdin {
            args.push_str(&format!(" <<< {:?}", s.trim()));
        }
        return Err(IpError::Failed {
            args,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs `script` (one `ip` command per line, without the leading `ip`) as one process.
/// `family` is `-4`, `-6` or empty. An empty script runs nothing.
pub fn batch(family: &str, script: &str) -> Result<(), IpError> {
    if script.trim().is_empty() {
        return Ok(());
    }
    let mut args = vec![];
    if !family.is_empty() {
        args.push(family);
    }
    args.extend(["-batch", "-"]);
    run(&args, Some(script)).map(drop)
}

/// `ip -j ARGS`, parsed. Commands that print nothing give an empty array.
pub fn json(args: &[&str]) -> Result<Value, IpError> {
    let mut all = vec!["-j"];
    all.extend_from_slice(args);
    let out = run(&all, None)?;
    if out.trim().is_empty() {
        return Ok(Value::Array(vec![]));
    }
    serde_json::from_str(&out).map_err(|e| IpError::Parse {
        args: args.join(" "),
        reason: e.to_string(),
    })
}

/// A route's next hop: the gateway (if any) and the device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NextHop {
    pub gateway: Option<IpAddr>,
    pub dev: String,
}

fn next_hops(v: &Value) -> Vec<NextHop> {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| {
            Some(NextHop {
                gateway: r["gateway"].as_str().and_then(|g| g.parse().ok()),
                dev: r["dev"].as_str()?.to_string(),
            })
        })
        .collect()
}

/// The default routes of one family (`-4` or `-6`) in the main table.
pub fn default_routes(family: &str) -> Result<Vec<NextHop>, IpError> {
    Ok(next_hops(&json(&[family, "route", "show", "default"])?))
}

/// The routes of protocol `proto` (ghostwire tags the routes it adds with one).
pub fn routes_of_proto(family: &str, proto: &str) -> Result<Vec<NextHop>, IpError> {
    Ok(next_hops(&json(&[
        family, "route", "show", "proto", proto,
    ])?))
}

/// One link's details (`ip -d link show DEV`), or None if it does not exist.
pub fn link(dev: &str) -> Result<Option<Value>, IpError> {
    match json(&["-d", "link", "show", "dev", dev]) {
        Ok(Value::Array(mut a)) if !a.is_empty() => Ok(Some(a.swap_remove(0))),
        Ok(_) => Ok(None),
        Err(IpError::Failed { stderr, .. }) if stderr.contains("does not exist") => Ok(None),
        Err(e) => Err(e),
    }
}

/// The addresses (with prefix length) on `dev`.
pub fn addresses(dev: &str) -> Result<Vec<ipnet::IpNet>, IpError> {
    let v = json(&["addr", "show", "dev", dev])?;
    Ok(v.as_array()
        .into_iter()
        .flatten()
        .flat_map(|l| l["addr_info"].as_array().cloned().unwrap_or_default())
        .filter_map(|a| {
            let ip: IpAddr = a["local"].as_str()?.parse().ok()?;
            ipnet::IpNet::new(ip, a["prefixlen"].as_u64()? as u8).ok()
        })
        .collect())
}

/// Whether a policy rule at `pref` with `suppress_prefixlength 0` lookup main exists.
pub fn has_suppress_rule(family: &str, pref: u32) -> Result<bool, IpError> {
    let v = json(&[family, "rule", "show", "pref", &pref.to_string()])?;
    Ok(v.as_array().into_iter().flatten().any(|r| {
        r["table"].as_str() == Some("main") && r["suppress_prefixlen"].as_u64() == Some(0)
    }))
}
