//! CoreDNS server blocks that make `NAME.NS.svc.cluster.<remote>` and `NAME.NS.svc.cluster.global`
//! resolve to the mirrors (rewrite to `<prefix>-NS-73736d-NAME.<mirror ns>.svc.cluster.local`
//! and back in the answer).

use crate::config::Settings;
use crate::desired::SEPARATOR;
use std::fmt::Write as _;

fn block(out: &mut String, zone: &str, prefix: &str, mirror_ns: &str) {
    let _ = write!(
        out,
        "{zone} {{\n    errors\n    cache 30\n    rewrite continue {{\n        \
         name regex ([a-zA-Z0-9-_]*\\.)?([a-zA-Z0-9-_]*)\\.([a-zA-Z0-9-_]*)\\.svc\\.{zone_re} {{1}}{prefix}-{{3}}-{SEPARATOR}-{{2}}.{mirror_ns}.svc.cluster.local\n        \
         answer name ([a-zA-Z0-9-_]*\\.)?{prefix}-([a-zA-Z0-9-_]*)-{SEPARATOR}-([a-zA-Z0-9-_]*)\\.{mirror_ns_re}\\.svc\\.cluster\\.local {{1}}{{3}}.{{2}}.svc.{zone}\n    }}\n    \
         kubernetes cluster.local {{\n        pods insecure\n        endpoint_pod_names\n    }}\n    forward . /etc/resolv.conf\n    loop\n    reload\n    loadbalance\n}}\n",
        zone_re = zone.replace('.', "\\."),
        mirror_ns_re = mirror_ns.replace('.', "\\."),
    );
}

/// One block per remote (`cluster.<remote name>`, its prefix) and one for `cluster.global`
/// (prefix `gl`). The seed's global example refers to `{4}` in its answer rewrite, a group its
/// regex does not have; here both rewrites use the same groups.
pub fn render(s: &Settings) -> String {
    let mut out = String::new();
    for r in &s.remotes {
        block(
            &mut out,
            &format!("cluster.{}", r.name),
            &r.prefix,
            &s.mirror_namespace,
        );
    }
    block(&mut out, "cluster.global", "gl", &s.mirror_namespace);
    out
}
