//! `ghostwire lab …`: the lab's command-line entry points.

use crate::exit::Exit;
use clap::Subcommand;

#[derive(Subcommand)]
pub enum LabCommand {}

pub async fn run(cmd: LabCommand) -> Result<(), Exit> {
    match cmd {}
}
