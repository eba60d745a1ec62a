//! `ghostwire init`: the preview switch's init container.

use crate::exit::{Code, Exit, WithCode};
use crate::knobs::KnobArgs;
use anyhow::Context;
use clap::{Args, ValueEnum};
use std::path::PathBuf;
use switch::config::{ApiUnreachable, Settings, Sources, read_defaults_file};
use switch::init::{self as sw, Jump};
use switch::{discover, dnat_map};

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Output {
    Text,
    Json,
}

#[derive(Args, Debug)]
pub struct InitArgs {
    #[command(flatten)]
    pub knobs: KnobArgs,
    /// Defaults file: KEY=VALUE lines, or a directory with one file per key (a mounted ConfigMap).
    #[arg(long, env = "GW_CONFIG", value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Read Services from this file (`kubectl get svc -o json` or `-o yaml`) instead of the API.
    #[arg(long, value_name = "PATH")]
    pub from_file: Option<PathBuf>,
    /// Also add the jump, so routing is on without a watcher.
    #[arg(long, conflicts_with = "cleanup")]
    pub activate: bool,
    /// Print the ruleset and the map; touch neither the kernel nor the file.
    #[arg(long)]
    pub dry_run: bool,
    /// Remove all of the switch's rules (both families) and nothing else, then exit.
    #[arg(long)]
    pub cleanup: bool,
    /// Format of the map printed on stdout.
    #[arg(long, value_enum, default_value = "text")]
    pub output: Output,
}

/// Resolves settings from flags, env, the defaults file and built-in defaults. The Pod's
/// IPs (for `GW_IPV6=auto`) are read in `netns` when given, else here.
pub fn settings(
    knobs: &KnobArgs,
    config: Option<&PathBuf>,
    netns: Option<&netns::Netns>,
) -> Result<Settings, Exit> {
    let file = match config {
        Some(p) => read_defaults_file(p)
            .with_context(|| format!("GW_CONFIG={:?}: cannot read the defaults file", p.display()))
            .code(Code::Config)?,
        None => Default::default(),
    };
    for k in file.keys() {
        if !switch::config::KNOBS.iter().any(|n| n.env == *k) {
            tracing::warn!(key = %k, "unknown key in the defaults file; ignored");
        }
    }
    let sources = Sources {
        cli: knobs.0.clone(),
        file,
        pod_namespace: std::env::var("POD_NAMESPACE").ok(),
        resolv_conf: std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default(),
        api_server_host: std::env::var("KUBERNETES_SERVICE_HOST").ok(),
        pod_ips: Vec::new(),
    };
    // Only `auto` needs the Pod's IPs; an explicit GW_IPV6 never reads them.
    let auto = sources
        .cli
        .get(switch::config::IPV6)
        .or_else(|| sources.file.get(switch::config::IPV6))
        .is_none_or(|v| v.trim() == "auto");
    let pod_ips = if auto {
        let env = std::env::var("POD_IPS").ok();
        match netns {
            Some(ns) => ns
                .run(move || discover::pod_ips(env.as_deref()))
                .context("entering the network namespace to read the Pod's IPs")
                .code(Code::Kernel)?,
            None => discover::pod_ips(env.as_deref()),
        }
    } else {
        Vec::new()
    };
    let s = Settings::resolve(&Sources { pod_ips, ..sources }).code(Code::Config)?;
    tracing::debug!(ipv4 = s.ipv4, ipv6 = s.ipv6, "families mapped");
    Ok(s)
}

pub async fn run(args: InitArgs) -> Result<(), Exit> {
    let s = settings(&args.knobs, args.config.as_ref(), None)?;
    if args.cleanup {
        let backend = sw::backend(&s).code(Code::Kernel)?;
        sw::cleanup(&backend).code(Code::Kernel)?;
        tracing::info!(backend = %backend, "removed all preview-switch rules");
        return Ok(());
    }
    // The labels file is read before any API call: a bad one is a configuration error.
    let from_labels = if args.activate {
        None
    } else {
        sw::jump_from_labels(&s)
            .map_err(anyhow::Error::msg)
            .code(Code::Config)?
    };
    if let Some((jump, role)) = &from_labels {
        tracing::info!(
            role = %role,
            label = %s.role_label_key,
            jump = if *jump == Jump::On { "on" } else { "off" },
            "the jump follows the Pod's role label from GW_LABELS_FILE"
        );
    }
    let services = match &args.from_file {
        Some(path) => discover::services_from_file(path).code(Code::Config)?,
        None => {
            // A client that cannot even be configured (no kubeconfig, no in-cluster account)
            // is a configuration error, whatever GW_API_UNREACHABLE says.
            let client = kube_util::client().await.code(Code::Api)?;
            let listed = discover::services_from_api(client, &s.namespace, s.api_timeout).await;
            match (listed, s.api_unreachable) {
                (Ok(services), _) => services,
                (Err(e), ApiUnreachable::Fail) => return Err(e).code(Code::Api),
                (Err(e), ApiUnreachable::Active) => {
                    tracing::warn!(
                        error = %e,
                        "the API could not be reached: starting with no pairs, so every \
                         Service reaches its active backend (GW_API_UNREACHABLE=active); \
                         the watcher fills the pairs in once the API answers"
                    );
                    Vec::new()
                }
            }
        }
    };
    tracing::info!(namespace = %s.namespace, services = services.len(), "discovered Services");
    let plan = sw::plan(&services, &s);
    let jump = match (args.activate, from_labels) {
        (true, _) => Jump::On,
        (false, Some((j, _))) => j,
        (false, None) => Jump::Keep,
    };
    if s.mode == switch::config::Mode::Mesh {
        // No kernel rules: the mesh proxy routes by the map.
        if !args.dry_run {
            sw::apply_mesh(&plan, &s, jump).code(Code::Failure)?;
        }
        print!("{}", dnat_map::render(&plan, &s));
        return Ok(());
    }
    let backend = sw::backend(&s).code(Code::Kernel)?;
    let map = match args.output {
        Output::Text => dnat_map::render(&plan, &s),
        Output::Json => dnat_map::render_json(&plan, &s) + "\n",
    };
    if args.dry_run {
        // Reading the current jump needs the kernel; without it, assume what --activate says.
        let table = sw::desired(&backend, &plan, &s, jump)
            .unwrap_or_else(|_| switch::rules::table(&plan, &s, jump == Jump::On));
        let rules = backend.render(&table).code(Code::Config)?;
        println!("# ruleset ({backend}, not applied)\n{rules}\n# dnat map (not written)\n{map}");
        return Ok(());
    }
    let table = sw::desired(&backend, &plan, &s, jump).code(Code::Kernel)?;
    sw::apply(&backend, &table, &plan, &s).map_err(|e| match e {
        sw::InitError::Rules(e) => Exit {
            code: Code::Kernel,
            error: e.into(),
        },
        e @ sw::InitError::Map { .. } => Exit {
            code: Code::Failure,
            error: e.into(),
        },
    })?;
    sw::report_nat_users(&s);
    if let Some(outcome) = sw::self_test(&plan, &s)
        && outcome.fails_init(s.self_test)
    {
        return Err(Exit {
            code: Code::Validate,
            error: anyhow::anyhow!(
                "self-test: {outcome:?}: connections to ClusterIPs do not reach the switch's chain \
                 (GW_SELF_TEST=unready starts the Pod and keeps the watcher not ready)"
            ),
        });
    }
    print!("{map}");
    Ok(())
}
