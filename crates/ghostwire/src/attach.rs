//! `ghostwire attach POD` (by hand, from a kubeconfig) and `ghostwire identity-agent` (what
//! it starts in the Pod); library: identity.

use crate::exit::{Code, Exit, WithCode};
use crate::knobs::{Identity as Table, KnobArgs};
use clap::Args;
use identity::agent::AgentError;
use identity::attach::{AttachError, Attached};

#[derive(Args, Debug)]
pub struct AttachArgs {
    /// The running Pod to attach to.
    pub pod: String,
    /// Its namespace (default: the kubeconfig context's).
    #[arg(short, long)]
    pub namespace: Option<String>,
    #[command(flatten)]
    pub knobs: KnobArgs<Table>,
}

#[derive(Args, Debug)]
pub struct AgentArgs {
    /// Run the proxy itself (the supervisor starts it so; not for hand use).
    #[arg(long, hide = true)]
    pub proxy: bool,
    #[command(flatten)]
    pub knobs: KnobArgs<Table>,
}

pub async fn attach(args: AttachArgs) -> Result<(), Exit> {
    let client = kube_util::client().await.code(Code::Api)?;
    let ns = args
        .namespace
        .unwrap_or_else(|| client.default_namespace().to_string());
    match identity::attach::attach(&client, &ns, &args.pod, &args.knobs.0).await {
        Ok(Attached::Added) => {
            println!(
                "attached {} to pod {ns}/{}",
                identity::attach::CONTAINER,
                args.pod
            );
            Ok(())
        }
        Ok(Attached::AlreadyThere) => {
            println!(
                "pod {ns}/{} already has {}",
                args.pod,
                identity::attach::CONTAINER
            );
            Ok(())
        }
        Err(e) => {
            let code = code_of(&e);
            Err(e).code(code)
        }
    }
}

/// What the Pod is (no containers, hostNetwork) or what was given (a knob, an annotation) is
/// bad input, exit 2; the API's refusals and a missing Pod (its 404) are exit 3.
fn code_of(e: &AttachError) -> Code {
    match e {
        AttachError::Config(_)
        | AttachError::Annotation { .. }
        | AttachError::NoContainers(_)
        | AttachError::HostNetwork(_) => Code::Config,
        AttachError::NotFound(_) | AttachError::Api { .. } => Code::Api,
    }
}

pub async fn agent(args: AgentArgs) -> Result<(), Exit> {
    let s = identity::agent::settings(
        &args.knobs.0,
        std::env::var("POD_NAME").ok(),
        std::env::var("POD_NAMESPACE").ok(),
    )
    .code(Code::Config)?;
    if args.proxy {
        let client = kube_util::client().await.code(Code::Api)?;
        return identity::proxy::run(s, client).await.code(Code::Failure);
    }
    let exe = std::env::current_exe().code(Code::Failure)?;
    match identity::agent::supervise(&s, exe, vec!["identity-agent".into(), "--proxy".into()]).await
    {
        Ok(()) => Ok(()),
        Err(e @ AgentError::Rules(_)) => Err(e).code(Code::Kernel),
        Err(e) => Err(e).code(Code::Failure),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pod_and_the_input_are_exit_2_the_api_exit_3() {
        let pod = || "shop/web".to_string();
        assert_eq!(code_of(&AttachError::NoContainers(pod())), Code::Config);
        assert_eq!(code_of(&AttachError::HostNetwork(pod())), Code::Config);
        assert_eq!(code_of(&AttachError::NotFound(pod())), Code::Api);
    }
}
