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

/// Lifts the soft limit on open files to the hard one, as Go's runtime does at start. The
/// proxy holds two descriptors per proxied connection, and one more for each upstream
/// HTTP/1.1 connection of its own client (the probe that sees a server's close while the
/// connection is idle), so the soft default of 1,024 found in many containers is far below
/// what a busy sidecar needs. Returns the soft and hard limits now in force.
fn raise_open_files_limit() -> nix::Result<(u64, u64)> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard)?;
    }
    Ok((soft.max(hard), hard))
}

pub async fn run(s: ProxySettings) -> Result<(), Exit> {
    tracing::info!(threads = s.threads, "proxy starting");
    match raise_open_files_limit() {
        Ok((soft, hard)) => tracing::info!(soft, hard, "open files limit"),
        Err(e) => tracing::warn!(error = %e, "cannot raise the open files limit"),
    }
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
    let ai_pod = s.ai_pod.clone();
    let mut proxy = mesh_proxy::Proxy::bind_with(s, store, source, identity)
        .await
        .code(Code::Failure)?;
    if let Some((namespace, pod)) = ai_pod {
        // The Pod's LLM rewriting policy, followed through the API with the Pod's account
        // (the same watch as the identity agent's).
        let client = kube_util::client().await.code(Code::Api)?;
        let (tx, policy) = identity::ai::handle();
        tracing::info!(%namespace, %pod, "AI rewriting follows the Pod's policy");
        tokio::spawn(identity::ai::follow(
            client,
            namespace,
            pod,
            tx,
            proxy.llm_policy_errors(),
        ));
        proxy = proxy.with_llm(policy);
    }
    tracing::info!(admin = %proxy.admin_addr(), "proxy listening");
    proxy.serve(crate::injector::stop_signal()).await;
    tracing::info!("proxy stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};

    #[test]
    fn the_open_files_limit_is_raised_to_the_hard_one() {
        let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
        setrlimit(Resource::RLIMIT_NOFILE, hard.min(256), hard).unwrap();
        assert_eq!(super::raise_open_files_limit().unwrap(), (hard, hard));
        assert_eq!(getrlimit(Resource::RLIMIT_NOFILE).unwrap(), (hard, hard));
    }
}
