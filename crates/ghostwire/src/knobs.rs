//! Turns the switch's knob table into CLI flags with `GW_*` env fallbacks,
//! so the table stays the only place a knob is declared.

use clap::{Arg, ArgMatches, Args, Command, FromArgMatches};
use std::collections::BTreeMap;
use switch::config::KNOBS;

/// Values given by flag or environment; knobs not given are absent, so that
/// the defaults file and the built-in default can apply in that order.
#[derive(Debug, Default, Clone)]
pub struct KnobArgs(pub BTreeMap<String, String>);

impl FromArgMatches for KnobArgs {
    fn from_arg_matches(m: &ArgMatches) -> Result<Self, clap::Error> {
        Ok(KnobArgs(
            KNOBS
                .iter()
                .filter_map(|k| Some((k.env.to_string(), m.get_one::<String>(k.env)?.clone())))
                .collect(),
        ))
    }

    fn update_from_arg_matches(&mut self, m: &ArgMatches) -> Result<(), clap::Error> {
        *self = Self::from_arg_matches(m)?;
        Ok(())
    }
}

impl Args for KnobArgs {
    fn augment_args(cmd: Command) -> Command {
        KNOBS.iter().fold(cmd, |cmd, k| {
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
