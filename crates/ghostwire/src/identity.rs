//! `ghostwire identity`: a certificate per opted-in Pod from the mesh CA (library: identity).

use crate::exit::{Code, Exit, WithCode};
use crate::knobs::{Identity as Table, KnobArgs};
use clap::Args;
use identity::controller::{Controller, Metrics};
use mesh_controller::ca::CaHandle;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::net::TcpListener;

#[derive(Args, Debug)]
pub struct IdentityArgs {
    #[command(flatten)]
    pub knobs: KnobArgs<Table>,
}

/// Ready once the Pod watch has listed.
struct Health(Arc<AtomicBool>);

impl admin::Health for Health {
    fn healthz(&self) -> Result<(), String> {
        Ok(())
    }
    fn readyz(&self) -> Result<(), String> {
        match self.0.load(Ordering::Relaxed) {
            true => Ok(()),
            false => Err("the Pods are not listed yet".into()),
        }
    }
}

pub async fn run(args: IdentityArgs) -> Result<(), Exit> {
    let s = identity::settings::settings(&args.knobs.0).code(Code::Config)?;
    let client = kube_util::client().await.code(Code::Api)?;
    let mut registry = prometheus_client::registry::Registry::with_prefix("ghostwire");
    let metrics = Metrics::new(&mut registry);
    let (authority, seen) = mesh_controller::ca::load_or_create(&client, &s.ca)
        .await
        .code(Code::Api)?;
    let ca = CaHandle::new(authority);
    tokio::spawn(mesh_controller::ca::follow(
        client.clone(),
        s.ca.clone(),
        ca.clone(),
        seen,
        |_| {},
    ));
    let admin_listener = TcpListener::bind(s.admin_addr).await.code(Code::Config)?;
    tracing::info!(admin = %s.admin_addr, ca = %format!("{}/{}", s.ca.namespace, s.ca.secret), trust_domain = %s.ca.trust_domain, lifetime = ?s.ca.lifetime, "identity controller starting");
    let ready = Arc::new(AtomicBool::new(false));
    let r = ready.clone();
    let controller = Controller {
        client,
        settings: s,
        ca,
        metrics,
    };
    let stop = crate::injector::stop_signal();
    tokio::pin!(stop);
    tokio::select! {
        r = controller.run(move || r.store(true, Ordering::Relaxed)) => r.code(Code::Api)?,
        () = admin::serve(admin_listener, Arc::new(registry), Arc::new(Health(ready)), std::future::pending()) => {}
        () = &mut stop => tracing::info!("identity controller stopping"),
    }
    Ok(())
}
