//! `ghostwire proxy-init`: the mesh's init container.

use crate::exit::{Code, Exit, WithCode};
use crate::knobs::{KnobArgs, Mesh};
use clap::Args;
use mesh_config::{InitSettings, Sources};
use mesh_proxy_init::rules;

#[derive(Args, Debug)]
pub struct ProxyInitArgs {
    #[command(flatten)]
    pub knobs: KnobArgs<Mesh>,
    /// Print the ruleset; do not touch the kernel.
    #[arg(long, conflicts_with_all = ["cleanup", "validate"])]
    pub dry_run: bool,
    /// Remove every rule of proxy-init (both families) and nothing else, then exit.
    #[arg(long, conflicts_with = "validate")]
    pub cleanup: bool,
    /// Do not change rules: prove that an outbound connection lands on the outbound port
    /// (run it as a uid other than the proxy's, before the proxy starts). Exit 5 if not.
    #[arg(long)]
    pub validate: bool,
}

pub fn settings(knobs: &KnobArgs<Mesh>) -> Result<InitSettings, Exit> {
    Sources {
        given: knobs.0.clone(),
        api_server_host: std::env::var("KUBERNETES_SERVICE_HOST").ok(),
        ..Sources::default()
    }
    .init_settings()
    .code(Code::Config)
}

pub async fn run(args: ProxyInitArgs) -> Result<(), Exit> {
    let s = settings(&args.knobs)?;
    if args.validate {
        let seen = mesh_proxy_init::validate(s.outbound_port, s.ipv6, s.validate_timeout)
            .code(Code::Validate)?;
        for dst in seen {
            println!("redirected: {dst} -> outbound port {}", s.outbound_port);
        }
        return Ok(());
    }
    let backend = rules::backend(&s).code(Code::Kernel)?;
    if args.cleanup {
        rules::cleanup(&backend).code(Code::Kernel)?;
        tracing::info!(%backend, "removed all proxy-init rules");
        return Ok(());
    }
    let table = rules::table(&s);
    if args.dry_run {
        println!(
            "# ruleset ({backend}, not applied)\n{}",
            backend.render(&table).code(Code::Config)?
        );
        return Ok(());
    }
    rules::apply(&backend, &s).code(Code::Kernel)?;
    tracing::info!(
        %backend,
        inbound_port = s.inbound_port,
        outbound_port = s.outbound_port,
        proxy_uid = s.proxy_uid,
        ipv6 = s.ipv6,
        "mesh redirection applied and verified"
    );
    Ok(())
}
