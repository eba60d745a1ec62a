//! `ghostwire lab …`: the lab's command-line entry points.

use crate::exit::{Code, Exit, WithCode};
use anyhow::Context;
use clap::{Args, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Subcommand)]
pub enum LabCommand {
    /// Run the lab's Kubernetes API server in the foreground (until Ctrl-C or SIGTERM).
    Api(ApiArgs),
}

#[derive(Args)]
pub struct ApiArgs {
    /// Address to listen on; port 0 picks a free port.
    #[arg(long, env = "GW_LAB_LISTEN", default_value = "127.0.0.1:6443")]
    listen: SocketAddr,
    /// Keep objects and keys here so they survive a restart; in memory when unset.
    #[arg(long, env = "GW_LAB_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Where to write the admin kubeconfig.
    #[arg(long, env = "GW_LAB_KUBECONFIG", default_value = "lab.kubeconfig")]
    kubeconfig: PathBuf,
}

pub async fn run(cmd: LabCommand) -> Result<(), Exit> {
    match cmd {
        LabCommand::Api(args) => api(args).await,
    }
}

async fn api(args: ApiArgs) -> Result<(), Exit> {
    let opts = lab_api::Options {
        listen: args.listen,
        data_dir: args.data_dir,
        kubeconfig: Some(args.kubeconfig),
        ..Default::default()
    };
    let server = lab_api::Server::start(opts)
        .await
        .context("starting the lab API")
        .code(Code::Config)?;
    let path = server.kubeconfig_path().display().to_string();
    println!("lab API serving at {}", server.url());
    println!("kubeconfig: {path}");
    println!("try: kubectl --kubeconfig {path} get namespaces");
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r.context("waiting for Ctrl-C")?,
        _ = term.recv() => {}
    }
    server.shutdown().await;
    Ok(())
}
