//! `ghostwire init`: discover → pair → rules + map → apply → verify → commit the map.

use crate::config::{BackendChoice, Settings, TABLE};
use crate::dnat_map;
use crate::pairing::{self, Plan, Svc};
use crate::rules;
use atomic_file::Staged;
use k8s_openapi::api::core::v1::Service;
use netrules::Backend;

#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error(transparent)]
    Rules(#[from] netrules::Error),
    #[error("cannot write the DNAT map {path} (GW_IPTABLES_DNAT_MAP): {source}")]
    Map {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// Picks the configured backend, or detects one.
pub fn backend(s: &Settings) -> Result<Backend, netrules::Error> {
    match s.backend {
        BackendChoice::Auto => Backend::detect(),
        BackendChoice::Fixed(kind) => Ok(Backend::new(kind)),
    }
}

/// Pairs the Services and logs every skipped one with its reason.
pub fn plan(services: &[Service], s: &Settings) -> Plan {
    let svcs: Vec<Svc> = services.iter().map(Svc::from_service).collect();
    let plan = pairing::plan(&svcs, s);
    for k in &plan.skipped {
        tracing::info!(service = %k.service, reason = %k.reason, "skipped");
    }
    for m in &plan.mappings {
        tracing::debug!(active = %m.active_addr, preview = %m.preview_addr, protocol = %m.protocol, service = %m.active, "mapping");
    }
    plan
}

/// What init will do about the jump.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Jump {
    /// Add it (`--activate`, or the role label says preview).
    On,
    /// Remove it (the role label says anything else).
    Off,
    /// Leave it as it is: init never adds or removes it on its own.
    Keep,
}

/// The jump from the Pod's own labels file (`GW_LABELS_FILE`, a downward-API volume of
/// `metadata.labels`): no API call and no RBAC, so routing matches the label from the
/// first packet. `None` when no labels file is configured.
pub fn jump_from_labels(s: &Settings) -> Result<Option<(Jump, crate::watcher::Role)>, String> {
    let Some(path) = &s.labels_file else {
        return Ok(None);
    };
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("GW_LABELS_FILE={:?}: cannot read it: {e}", path.display()))?;
    let labels = crate::watcher::role::parse_downward_labels(&text)
        .map_err(|e| format!("GW_LABELS_FILE={:?}: {e}", path.display()))?;
    let role = crate::watcher::Role::of(Some(&labels), s);
    let jump = if role.jump() { Jump::On } else { Jump::Off };
    Ok(Some((jump, role)))
}

/// The table to apply: the jump is on with `Jump::On`, off with `Jump::Off`, else as the
/// kernel has it now.
pub fn desired(
    backend: &Backend,
    plan: &Plan,
    s: &Settings,
    jump: Jump,
) -> netrules::Result<netrules::Table> {
    let on = rules::table(plan, s, true);
    let keep_on = match jump {
        Jump::On => true,
        Jump::Off => false,
        Jump::Keep => {
            let current = backend.read(&on)?;
            rules::jump_is_on(backend, &current, &on, s)?
        }
    };
    Ok(if keep_on {
        on
    } else {
        rules::table(plan, s, false)
    })
}

/// Applies the table and then, only if that succeeded, puts the map in place.
pub fn apply(
    backend: &Backend,
    table: &netrules::Table,
    plan: &Plan,
    s: &Settings,
) -> Result<(), InitError> {
    let staged = match &s.dnat_map {
        Some(path) => Some(
            Staged::write(path, dnat_map::render(plan, s), dnat_map::MODE).map_err(|source| {
                InitError::Map {
                    path: path.display().to_string(),
                    source,
                }
            })?,
        ),
        None => None,
    };
    backend.apply(table)?;
    if let (Some(staged), Some(path)) = (staged, &s.dnat_map) {
        staged.commit().map_err(|source| InitError::Map {
            path: path.display().to_string(),
            source,
        })?;
    }
    tracing::info!(
        backend = %backend,
        table = TABLE,
        chain = %s.nat_chain,
        mappings = plan.mappings.len(),
        "DNAT rules applied and verified"
    );
    Ok(())
}

/// Mesh mode (`GW_SWITCH_MODE=mesh`): writes the map for the proxy instead of kernel rules.
/// Like the jump, `on` is kept as the file has it when `jump` is [`Jump::Keep`].
pub fn apply_mesh(plan: &Plan, s: &Settings, jump: Jump) -> Result<(), InitError> {
    let path = s.dnat_map.as_ref().ok_or_else(|| InitError::Map {
        path: String::new(),
        source: std::io::Error::other(
            "GW_SWITCH_MODE=mesh needs GW_IPTABLES_DNAT_MAP: the proxy reads the mapping there",
        ),
    })?;
    let on = match jump {
        Jump::On => true,
        Jump::Off => false,
        Jump::Keep => dnat_map::MeshMap::read(path).is_some_and(|m| m.on),
    };
    dnat_map::MeshMap::new(plan, s, on)
        .write(path)
        .map_err(|source| InitError::Map {
            path: path.display().to_string(),
            source,
        })?;
    tracing::info!(path = %path.display(), mappings = plan.mappings.len(), on, "mesh mode: map written for the proxy");
    Ok(())
}

/// Removes all of the switch's rules (both families) and nothing else.
pub fn cleanup(backend: &Backend) -> Result<(), netrules::Error> {
    backend.cleanup(TABLE)
}

/// Logs every other NAT chain on the switch's hook in this namespace at warn, saying
/// which runs first; returns them for the metric.
pub fn report_nat_users(s: &Settings) -> Vec<(netrules::NatUser, crate::selftest::Order)> {
    match crate::selftest::other_nat_users(s.jump_hook) {
        Ok(users) => {
            crate::selftest::log_other_nat_users(&users);
            users
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot list the other NAT chains in this namespace");
            Vec::new()
        }
    }
}

/// The self-test (`GW_SELF_TEST`), logged: `None` when it is off.
pub fn self_test(plan: &Plan, s: &Settings) -> Option<crate::selftest::Outcome> {
    if s.self_test == crate::config::SelfTest::Off {
        return None;
    }
    let outcome = match crate::selftest::target(plan, s.api_server) {
        Some(t) => crate::selftest::probe(t, std::time::Duration::from_secs(2)),
        None => crate::selftest::Outcome::Inconclusive {
            reason: "no active TCP Service with a preview and no KUBERNETES_SERVICE_HOST to probe"
                .into(),
        },
    };
    outcome.log();
    Some(outcome)
}
