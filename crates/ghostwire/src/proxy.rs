//! `ghostwire proxy`: the mesh's transparent sidecar.

use crate::exit::{Code, Exit, WithCode};
use crate::knobs::{KnobArgs, Mesh};
use clap::Args;
use mesh_config::{ProxySettings, Sources};
use mesh_controller::identity::{CertStore, Renewer};
use mesh_proxy::store::{ConfigSource, FileSource, Store};
use mesh_proxy::tls::IdentitySource;
use std::sync::Arc;
use std::time::Duration;

#[derive(Args, Debug)]
pub struct ProxyArgs {
    #[command(flatten)]
    pub knobs: KnobArgs<Mesh>,
}

/// The proxy's settings, resolved before its runtime is built (the runtime's size is one).
pub fn settings(args: &ProxyArgs) -> Result<ProxySettings, Exit> {
    Sources {
        given: args.knobs.0.clone(),
        ..Sources::default()
    }
    .proxy_settings()
    .code(Code::Config)
}

/// A single-threaded runtime for one worker (no cross-thread wake-ups per request: measured
/// in docs/benchmarks.md), else a multi-threaded one of that size.
pub fn runtime(s: &ProxySettings) -> std::io::Result<tokio::runtime::Runtime> {
    match s.threads {
        1 => tokio::runtime::Builder::new_current_thread(),
        n => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(n);
            b
        }
    }
    .enable_all()
    .build()
}

pub async fn run(s: ProxySettings) -> Result<(), Exit> {
    tracing::info!(threads = s.threads, "proxy starting");
    let store = Store::default();
    let source: Option<Box<dyn ConfigSource>> = match &s.config {
        _ if !s.controller.is_empty() => {
            tracing::info!(controller = ?s.controller, "routing config from the controller");
            Some(Box::new(mesh_controller::feed::ControllerSource::new(
                s.controller.clone(),
                s.token.clone(),
            )))
        }
        Some(path) => {
            let f = FileSource {
                path: path.clone(),
                poll: s.config_poll,
            };
            let generation = f.load_once(&store).code(Code::Config)?;
            tracing::info!(path = %path.display(), generation, "routing config loaded");
            Some(Box::new(f))
        }
        None => None,
    };
    let identity: Option<Arc<dyn IdentitySource>> = match (&s.tls_files, &s.identity) {
        (None, Some(id)) if !s.controller.is_empty() => {
            let certs = Arc::new(CertStore::default());
            let renewer = Renewer {
                addresses: s.controller.clone(),
                token_path: s.token.clone(),
                spiffe_id: id.clone(),
                timeout: Duration::from_secs(10),
                max_backoff: Duration::from_secs(30),
            };
            tracing::info!(spiffe_id = %id, "mesh TLS identity from the controller");
            tokio::spawn(renewer.run(certs.clone(), |_| {}));
            Some(certs)
        }
        _ => None,
    };
    mesh_proxy::run(s, store, source, identity, crate::injector::stop_signal())
        .await
        .code(Code::Failure)?;
    tracing::info!("proxy stopped");
    Ok(())
}
