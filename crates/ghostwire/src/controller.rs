//! `ghostwire controller`: the mesh's control plane (library: mesh-controller).

use crate::exit::{Code, Exit, WithCode};
use crate::knobs::{Controller as Table, KnobArgs};
use clap::Args;
use mesh_controller::auth::TokenReviewer;
use mesh_controller::ca::CaHandle;
use mesh_controller::metrics::Metrics;
use mesh_controller::model::Model;
use mesh_controller::server::{Controller, serve};
use std::sync::Arc;
use tokio::net::TcpListener;

#[derive(Args, Debug)]
pub struct ControllerArgs {
    #[command(flatten)]
    pub knobs: KnobArgs<Table>,
}

/// Ready once the watches have published the mesh.
struct Health(Model);

impl admin::Health for Health {
    fn healthz(&self) -> Result<(), String> {
        Ok(())
    }
    fn readyz(&self) -> Result<(), String> {
        match self.0.load().version {
            0 => Err("the cluster's Services are not listed yet".into()),
            _ => Ok(()),
        }
    }
}

pub async fn run(args: ControllerArgs) -> Result<(), Exit> {
    let s = mesh_controller::settings::settings(&args.knobs.0).code(Code::Config)?;
    let client = kube_util::client().await.code(Code::Api)?;
    let model = Model::default();
    let mut registry = prometheus_client::registry::Registry::with_prefix("ghostwire");
    let metrics = Metrics::new(&mut registry);
    let auth = Arc::new(TokenReviewer::new(client.clone(), s.audience.clone()));
    let (authority, seen) = mesh_controller::ca::load_or_create(&client, &s.ca)
        .await
        .code(Code::Api)?;
    let ca = CaHandle::new(authority);
    let controller = Controller::new(model.clone(), auth, metrics.clone())
        .with_ca(ca.clone())
        .with_events(client.clone());
    let ca_errors = metrics.ca_errors.clone();
    tokio::spawn(mesh_controller::ca::follow(
        client.clone(),
        s.ca.clone(),
        ca,
        seen,
        move |_| {
            ca_errors.inc();
        },
    ));
    let grpc = TcpListener::bind(s.grpc_addr).await.code(Code::Config)?;
    let admin_listener = TcpListener::bind(s.admin_addr).await.code(Code::Config)?;
    tracing::info!(grpc = %s.grpc_addr, admin = %s.admin_addr, audience = %s.audience, ca = %format!("{}/{}", s.ca.namespace, s.ca.secret), trust_domain = %s.ca.trust_domain, "controller serving");
    let stop = crate::injector::stop_signal();
    tokio::pin!(stop);
    tokio::select! {
        r = mesh_controller::watch::run_with_metrics(client, model.clone(), s.ca.trust_domain.clone(), metrics) => {
            r.code(Code::Api)?;
        }
        () = serve(controller, grpc, std::future::pending()) => {}
        () = admin::serve(admin_listener, Arc::new(registry), Arc::new(Health(model)), std::future::pending()) => {}
        () = &mut stop => tracing::info!("controller stopping"),
    }
    Ok(())
}
