//! DNSSEC validation of upstream answers (GATEWAY_ENABLE_DNSSEC), with hickory's validating
//! handle: the question goes upstream with the DO bit, the handle fetches the DNSKEYs (and DS
//! records up the chain) it needs through the same upstream and marks every record Secure,
//! Insecure, Bogus or Indeterminate. The trust anchor is the root zone's (built into hickory:
//! the IANA root KSKs 20326 and 38696) or the DNSKEY records of the file DNSSEC_TRUST_ANCHOR
//! names, in zone-file syntax (`zone. IN DNSKEY 257 3 13 <key>`): a key for a zone other than
//! the root trusts that zone directly, with no chain to the root (how the lab tests a zone it
//! signs itself). DS records in that file are not supported (hickory's parser rejects them).

use futures::StreamExt;
use hickory_net::DnsHandle;
use hickory_net::dnssec::DnssecDnsHandle;
use hickory_net::runtime::TokioRuntimeProvider;
use hickory_net::udp::UdpClientStream;
use hickory_net::xfer::DnsExchange;
use hickory_proto::dnssec::{Proof, TrustAnchors};
use hickory_proto::op::{DnsRequest, DnsRequestOptions, Edns, Message};
use hickory_proto::rr::RecordType;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// The UDP payload size asked of upstreams for validated queries (DNS flag day 2020).
pub const EDNS_PAYLOAD: u16 = 1232;

/// A validating handle to one upstream server.
pub type Validator = DnssecDnsHandle<DnsExchange<TokioRuntimeProvider>>;

/// The trust anchor: the root zone's when `path` is `None`, else the file's DNSKEY records.
/// The error names the knob and the file.
pub fn trust_anchor(path: Option<&Path>) -> Result<Arc<TrustAnchors>, String> {
    let Some(path) = path else {
        return Ok(Arc::new(TrustAnchors::default()));
    };
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("DNSSEC_TRUST_ANCHOR={}: {e}", path.display()))?;
    if !text.lines().any(|l| {
        l.split_whitespace()
            .any(|w| w.eq_ignore_ascii_case("DNSKEY"))
    }) {
        return Err(format!(
            "DNSSEC_TRUST_ANCHOR={}: no DNSKEY record in the file",
            path.display()
        ));
    }
    text.parse::<TrustAnchors>()
        .map(Arc::new)
        .map_err(|e| format!("DNSSEC_TRUST_ANCHOR={}: {e}", path.display()))
}

/// A validating handle to `server` port 53 over UDP. Must be called inside the runtime (it
/// spawns the exchange's background task).
pub fn validator(server: IpAddr, anchors: Arc<TrustAnchors>, timeout: Duration) -> Validator {
    let exchange =
        UdpClientStream::builder(SocketAddr::new(server, 53), TokioRuntimeProvider::new())
            .with_timeout(Some(timeout))
            .exchange();
    DnssecDnsHandle::with_trust_anchor(exchange, anchors)
}

/// What validation made of one answer.
#[derive(Debug)]
pub enum Verdict {
    /// Every record in the answer and authority sections is Secure.
    Secure(Message),
    /// Nothing Bogus, but not everything Secure (an unsigned zone below an insecure
    /// delegation): relayed without the AD bit.
    Insecure(Message),
    /// A record failed validation, or validation could not be completed: SERVFAIL.
    Bogus(String),
}

/// Asks `v` the first question of `query` (DO set) and classifies the validated answer.
pub async fn ask(v: &Validator, query: &Message) -> Verdict {
    let Some(q) = query.queries.first() else {
        return Verdict::Bogus("no question".into());
    };
    let mut m = Message::query();
    m.metadata.recursion_desired = query.metadata.recursion_desired;
    m.add_query(q.clone());
    let mut edns = Edns::new();
    edns.set_max_payload(EDNS_PAYLOAD);
    edns.set_dnssec_ok(true);
    m.edns = Some(edns);
    let mut opts = DnsRequestOptions::default();
    opts.use_edns = true;
    opts.edns_payload_len = EDNS_PAYLOAD;
    opts.edns_set_dnssec_ok = true;
    opts.recursion_desired = query.metadata.recursion_desired;
    let got = v.send(DnsRequest::new(m, opts)).next().await;
    match got {
        None => Verdict::Bogus("no answer".into()),
        Some(Err(e)) => Verdict::Bogus(e.to_string()),
        Some(Ok(r)) => classify(r.into_message()),
    }
}

/// Secure when every non-RRSIG record of the answer and authority sections is Secure (and
/// there is at least one), Bogus when one is Bogus, Insecure otherwise.
pub fn classify(m: Message) -> Verdict {
    let records: Vec<_> = m
        .answers
        .iter()
        .chain(m.authorities.iter())
        .filter(|r| r.record_type() != RecordType::RRSIG)
        .collect();
    if let Some(r) = records.iter().find(|r| r.proof == Proof::Bogus) {
        return Verdict::Bogus(format!("{} {} is bogus", r.name, r.record_type()));
    }
    if !records.is_empty() && records.iter().all(|r| r.proof == Proof::Secure) {
        Verdict::Secure(m)
    } else {
        Verdict::Insecure(m)
    }
}

/// Drops the DNSSEC records the client did not ask for (it did not set DO): RRSIG, NSEC and
/// NSEC3, unless they are what it asked.
pub fn strip_dnssec(m: &mut Message, asked: RecordType) {
    let extra = |t: RecordType| {
        matches!(t, RecordType::RRSIG | RecordType::NSEC | RecordType::NSEC3) && t != asked
    };
    m.answers.retain(|r| !extra(r.record_type()));
    m.authorities.retain(|r| !extra(r.record_type()));
    m.additionals.retain(|r| !extra(r.record_type()));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_trust_anchor_file_must_hold_dnskeys_and_errors_name_the_knob() {
        assert!(trust_anchor(None).is_ok());
        let dir = std::env::temp_dir().join(format!("gw-anchor-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let missing = dir.join("missing");
        let e = trust_anchor(Some(&missing)).err().unwrap();
        assert!(e.starts_with("DNSSEC_TRUST_ANCHOR="), "{e}");
        assert!(e.contains("missing"), "{e}");
        let empty = dir.join("empty");
        std::fs::write(&empty, "; nothing\n").unwrap();
        let e = trust_anchor(Some(&empty)).err().unwrap();
        assert!(e.contains("no DNSKEY"), "{e}");
        let garbage = dir.join("garbage");
        std::fs::write(&garbage, "lab.test. IN DNSKEY 257 3 13 !!notbase64!!\n").unwrap();
        let e = trust_anchor(Some(&garbage)).err().unwrap();
        assert!(e.starts_with("DNSSEC_TRUST_ANCHOR="), "{e}");
        // An ECDSA P-256 key (64 bytes) for a zone of its own.
        let good = dir.join("good");
        let key = "mdsswUyr3DPW132mOi8V9xESWE8jTo0dxCjjnopKl+GqJxpVXckHAeF+KkxLbxILfDLUT0rAK9iUzy1L53eKGQ==";
        std::fs::write(&good, format!("lab.test. IN DNSKEY 257 3 13 {key}\n")).unwrap();
        trust_anchor(Some(&good)).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
    }
}
