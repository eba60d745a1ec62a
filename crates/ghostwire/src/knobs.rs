//! Turns a capability's knob table into CLI flags with `GW_*` env fallbacks,
//! so the table stays the only place a knob is declared.

use clap::{Arg, ArgMatches, Args, Command, FromArgMatches};
use knobs::Knob;
use std::collections::BTreeMap;
use std::marker::PhantomData;

/// Which knob table a subcommand's flags come from.
pub trait Table: Send + Sync + 'static {
    const KNOBS: &'static [Knob];
}

/// The preview switch's knobs (`init`, `watcher`).
#[derive(Debug, Clone)]
pub struct Switch;
impl Table for Switch {
    const KNOBS: &'static [Knob] = switch::config::KNOBS;
}

/// The mesh's knobs (`proxy-init`, `proxy`).
#[derive(Debug, Clone)]
pub struct Mesh;
impl Table for Mesh {
    const KNOBS: &'static [Knob] = mesh_config::KNOBS;
}

/// The mesh controller's knobs (`controller`).
#[derive(Debug, Clone)]
pub struct Controller;
impl Table for Controller {
    const KNOBS: &'static [Knob] = mesh_controller::settings::KNOBS;
}

/// The identity capability's knobs (`identity`, `attach`).
#[derive(Debug, Clone)]
pub struct Identity;
impl Table for Identity {
    const KNOBS: &'static [Knob] = identity::settings::KNOBS;
}

/// The egress gateway's knobs (`gateway …`, `client …`): pod-gateway's names, no `GW_` prefix.
#[derive(Debug, Clone)]
pub struct Gateway;
impl Table for Gateway {
    const KNOBS: &'static [Knob] = gateway::settings::KNOBS;
}

/// The service mirror's knobs (`mirror`): the seed's `SSM_*` names plus `GW_MIRROR_*`.
#[derive(Debug, Clone)]
pub struct Mirror;
impl Table for Mirror {
    const KNOBS: &'static [Knob] = mirror::config::KNOBS;
}

/// Values given by flag or environment; knobs not given are absent, so that
/// the defaults file and the built-in default can apply in that order.
#[derive(Debug, Clone)]
pub struct KnobArgs<T: Table = Switch>(pub BTreeMap<String, String>, PhantomData<T>);

impl<T: Table> Default for KnobArgs<T> {
    fn default() -> Self {
        KnobArgs(BTreeMap::new(), PhantomData)
    }
}

impl<T: Table> FromArgMatches for KnobArgs<T> {
    fn from_arg_matches(m: &ArgMatches) -> Result<Self, clap::Error> {
        Ok(KnobArgs(
            T::KNOBS
                .iter()
                .filter_map(|k| Some((k.env.to_string(), m.get_one::<String>(k.env)?.clone())))
                .collect(),
            PhantomData,
        ))
    }

    fn update_from_arg_matches(&mut self, m: &ArgMatches) -> Result<(), clap::Error> {
        *self = Self::from_arg_matches(m)?;
        Ok(())
    }
}

impl<T: Table> Args for KnobArgs<T> {
    fn augment_args(cmd: Command) -> Command {
        T::KNOBS.iter().fold(cmd, |cmd, k| {
            let default = if k.default.is_empty() {
                "(empty)"
            } else {
                k.default
            };
            cmd.arg(
                Arg::new(k.env)
                    .long(k.flag)
                    .env(k.env)
                    .value_name("VALUE")
                    .help(format!("{} [default: {default}]", k.help))
                    .help_heading("Settings (flag > env > --config file > default)"),
            )
        })
    }

    fn augment_args_for_update(cmd: Command) -> Command {
        Self::augment_args(cmd)
    }
}
