//! The forwarder's answer cache: replies keyed by what makes them differ (name, type, class,
//! and the query's EDNS, DO and CD bits), each kept for the TTL it carries — the smallest TTL
//! of its answer records, or for a negative answer (NXDOMAIN, or NOERROR without answers) the
//! smaller of its SOA's TTL and SOA MINIMUM (RFC 2308 §5); a negative answer without an SOA,
//! a truncated one and any other response code are not kept. At most `capacity` entries: a
//! full cache drops the entry that expires first (expired ones first of all). Time is passed
//! in, so the tests step it instead of sleeping.
//!
//! An answer is kept in wire form, with where its TTL fields are: a hit is a copy whose TTLs
//! are lowered by the entry's age in place, with no parsing or encoding (what makes dnsmasq
//! fast on hits, and what the forwarder's hot path needs).

use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::{RData, RecordType};
use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

/// The longest a positive answer is kept, whatever its TTL (one day).
pub const MAX_TTL: u32 = 86_400;
/// The longest a negative answer is kept (three hours, RFC 2308 §5's suggestion).
pub const MAX_NEGATIVE_TTL: u32 = 10_800;

/// What makes two queries share an answer: the question's name (lower case, wire form), type
/// and class, and whether the query has EDNS, the DO bit and the CD bit — as bytes, so that a
/// query's key is built straight from its wire form ([`WireQuery::parse`]) without parsing
/// it into a message, and compares equal to the key [`Key::of`] builds from the parsed query.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Key(Box<[u8]>);

impl std::borrow::Borrow<[u8]> for Key {
    fn borrow(&self) -> &[u8] {
        &self.0
    }
}

const KEY_EDNS: u8 = 1;
const KEY_DO: u8 = 2;
const KEY_CD: u8 = 4;
/// flags, type, class, then the name (at most 255 bytes).
const KEY_MAX: usize = 5 + 255;

impl Key {
    /// The key of `query`'s first question; `None` when it has none.
    pub fn of(query: &Message) -> Option<Key> {
        let q = query.queries.first()?;
        let mut flags = 0;
        if let Some(e) = &query.edns {
            flags |= KEY_EDNS;
            if e.flags().dnssec_ok {
                flags |= KEY_DO;
            }
        }
        if query.metadata.checking_disabled {
            flags |= KEY_CD;
        }
        let mut k = Vec::with_capacity(KEY_MAX);
        k.push(flags);
        k.extend_from_slice(&u16::from(q.query_type()).to_be_bytes());
        k.extend_from_slice(&u16::from(q.query_class()).to_be_bytes());
        for label in q.name().iter() {
            k.push(u8::try_from(label.len()).ok()?);
            k.extend(label.iter().map(u8::to_ascii_lowercase));
        }
        k.push(0);
        Some(Key(k.into_boxed_slice()))
    }

    /// The question's name in wire form, lower case.
    pub fn name(&self) -> &[u8] {
        &self.0[5..]
    }
}

/// What the forwarder's hot path needs of a query, read from its wire form without parsing
/// it into a message: only a plain query (opcode QUERY, one question, no answer or authority
/// records, at most one additional record which is an OPT) is read; anything else is `None`
/// and takes the slow path.
#[derive(Debug)]
pub struct WireQuery {
    key: [u8; KEY_MAX],
    key_len: usize,
    /// The length of the question section (from offset 12).
    pub question_len: usize,
    /// The largest UDP answer the client takes (512 without EDNS).
    pub udp_limit: usize,
}

impl WireQuery {
    pub fn parse(raw: &[u8]) -> Option<WireQuery> {
        let u16_at = |i: usize| -> Option<u16> {
            Some(u16::from_be_bytes([*raw.get(i)?, *raw.get(i + 1)?]))
        };
        // QR = 0 (a query), opcode 0 (QUERY).
        if raw.len() < 12 || raw[2] & 0xF8 != 0 {
            return None;
        }
        let (qd, an, ns, ar) = (u16_at(4)?, u16_at(6)?, u16_at(8)?, u16_at(10)?);
        if qd != 1 || an != 0 || ns != 0 || ar > 1 {
            return None;
        }
        let mut key = [0u8; KEY_MAX];
        let mut k = 5;
        let mut at = 12;
        loop {
            let len = usize::from(*raw.get(at)?);
            if len & 0xC0 != 0 || k + 1 + len > KEY_MAX {
                return None;
            }
            key[k] = len as u8;
            let label = raw.get(at + 1..at + 1 + len)?;
            for (d, s) in key[k + 1..k + 1 + len].iter_mut().zip(label) {
                *d = s.to_ascii_lowercase();
            }
            k += 1 + len;
            at += 1 + len;
            if len == 0 {
                break;
            }
        }
        key[1..5].copy_from_slice(raw.get(at..at + 4)?);
        let question_len = at + 4 - 12;
        at += 4;
        let mut flags = 0;
        if raw[3] & 0x10 != 0 {
            flags |= KEY_CD;
        }
        let mut udp_limit = 512;
        if ar == 1 {
            // An OPT pseudo-record: root name, type 41, class = payload size, TTL = extended
            // rcode, version, flags (DO is the top bit); its options must fill its data exactly.
            if *raw.get(at)? != 0 || u16_at(at + 1)? != u16::from(RecordType::OPT) {
                return None;
            }
            udp_limit = usize::from(u16_at(at + 3)?).max(512);
            flags |= KEY_EDNS;
            if u16_at(at + 7)? & 0x8000 != 0 {
                flags |= KEY_DO;
            }
            let end = at + 11 + usize::from(u16_at(at + 9)?);
            let mut o = at + 11;
            while o < end {
                o += 4 + usize::from(u16_at(o + 2)?);
            }
            if o != end {
                return None;
            }
            at = end;
        }
        if at != raw.len() {
            return None;
        }
        key[0] = flags;
        Some(WireQuery {
            key,
            key_len: k,
            question_len,
            udp_limit,
        })
    }

    /// The cache key, as [`Key::of`] would make it from the parsed query.
    pub fn key(&self) -> &[u8] {
        &self.key[..self.key_len]
    }

    /// The question's name in wire form, lower case.
    pub fn name(&self) -> &[u8] {
        &self.key[5..self.key_len]
    }
}

/// How long `reply` may be kept, in seconds; `None` when not at all.
pub fn ttl(reply: &Message) -> Option<u32> {
    if reply.metadata.truncation {
        return None;
    }
    let positive =
        reply.metadata.response_code == ResponseCode::NoError && !reply.answers.is_empty();
    let ttl = if positive {
        reply.answers.iter().map(|r| r.ttl).min()?.min(MAX_TTL)
    } else if matches!(
        reply.metadata.response_code,
        ResponseCode::NoError | ResponseCode::NXDomain
    ) {
        reply
            .authorities
            .iter()
            .find_map(|r| match &r.data {
                RData::SOA(soa) => Some(r.ttl.min(soa.minimum)),
                _ => None,
            })?
            .min(MAX_NEGATIVE_TTL)
    } else {
        return None;
    };
    (ttl > 0).then_some(ttl)
}

/// Where the TTL of each record of the DNS message `wire` is (the OPT pseudo-record's TTL
/// field holds EDNS flags, so it is left out); `None` when the message is malformed.
pub fn ttl_offsets(wire: &[u8]) -> Option<Vec<usize>> {
    let u16_at = |i: usize| -> Option<usize> {
        Some(usize::from(u16::from_be_bytes([
            *wire.get(i)?,
            *wire.get(i + 1)?,
        ])))
    };
    let questions = u16_at(4)?;
    let records = u16_at(6)? + u16_at(8)? + u16_at(10)?;
    let mut at = 12;
    for _ in 0..questions {
        at = skip_name(wire, at)? + 4;
    }
    let mut offsets = Vec::with_capacity(records);
    for _ in 0..records {
        at = skip_name(wire, at)?;
        let rtype = u16_at(at)?;
        let rdlength = u16_at(at + 8)?;
        if rtype != usize::from(u16::from(RecordType::OPT)) {
            offsets.push(at + 4);
        }
        at += 10 + rdlength;
    }
    (at <= wire.len()).then_some(offsets)
}

/// The length of the question section of `wire` when it holds exactly one question.
pub fn question_len(wire: &[u8]) -> Option<usize> {
    if wire.get(4..6)? != [0, 1] {
        return None;
    }
    let end = skip_name(wire, 12)? + 4;
    (end <= wire.len()).then_some(end - 12)
}

/// The offset just past the (possibly compressed) name at `at`.
fn skip_name(wire: &[u8], mut at: usize) -> Option<usize> {
    loop {
        let len = *wire.get(at)?;
        match len & 0xC0 {
            0 if len == 0 => return Some(at + 1),
            0 => at += 1 + usize::from(len),
            0xC0 => return (at + 2 <= wire.len()).then_some(at + 2),
            _ => return None,
        }
    }
}

#[derive(Debug)]
struct Entry {
    wire: Vec<u8>,
    ttl_at: Vec<usize>,
    stored: Instant,
    expires: Instant,
    seq: u64,
}

/// A bounded TTL cache of replies.
#[derive(Debug)]
pub struct Cache {
    capacity: usize,
    entries: HashMap<Key, Entry>,
    by_expiry: BTreeMap<(Instant, u64), Key>,
    seq: u64,
}

impl Cache {
    /// A cache of at most `capacity` replies (0: nothing is kept).
    pub fn new(capacity: usize) -> Cache {
        Cache {
            capacity,
            entries: HashMap::new(),
            by_expiry: BTreeMap::new(),
            seq: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Forgets everything (the upstreams changed).
    pub fn clear(&mut self) {
        self.entries.clear();
        self.by_expiry.clear();
    }

    fn remove(&mut self, key: &[u8]) {
        if let Some(e) = self.entries.remove(key) {
            self.by_expiry.remove(&(e.expires, e.seq));
        }
    }

    /// The reply kept for `key` at `now`, in wire form, its TTLs lowered by the time it has
    /// been kept.
    pub fn get(&mut self, key: &Key, now: Instant) -> Option<Vec<u8>> {
        let mut out = Vec::new();
        self.get_into(&key.0, now, &mut out).then_some(out)
    }

    /// [`Cache::get`] into `out` (replacing what it held), with the key in wire form
    /// ([`WireQuery::key`]); whether there was an answer. The hot path: no allocation once
    /// `out` has grown to the answers' size.
    pub fn get_into(&mut self, key: &[u8], now: Instant, out: &mut Vec<u8>) -> bool {
        let Some(e) = self.entries.get(key) else {
            return false;
        };
        if now >= e.expires {
            self.remove(key);
            return false;
        }
        let age = u32::try_from(now.duration_since(e.stored).as_secs()).unwrap_or(u32::MAX);
        out.clear();
        out.extend_from_slice(&e.wire);
        if age > 0 {
            for &at in &e.ttl_at {
                let field = &mut out[at..at + 4];
                let ttl = u32::from_be_bytes([field[0], field[1], field[2], field[3]]);
                field.copy_from_slice(&ttl.saturating_sub(age).to_be_bytes());
            }
        }
        true
    }

    /// Keeps `reply` for `key` from `now` for as long as its TTL says (see [`ttl`]).
    pub fn put(&mut self, key: Key, reply: &Message, now: Instant) {
        let Some(ttl) = ttl(reply) else {
            return;
        };
        if self.capacity == 0 {
            return;
        }
        let Ok(wire) = reply.to_vec() else {
            return;
        };
        let Some(ttl_at) = ttl_offsets(&wire) else {
            return;
        };
        self.remove(&key.0);
        while self.entries.len() >= self.capacity {
            let Some((_, k)) = self.by_expiry.pop_first() else {
                break;
            };
            self.entries.remove(&k);
        }
        self.seq += 1;
        let expires = now + Duration::from_secs(u64::from(ttl));
        self.by_expiry.insert((expires, self.seq), key.clone());
        self.entries.insert(
            key,
            Entry {
                wire,
                ttl_at,
                stored: now,
                expires,
                seq: self.seq,
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::{MessageType, OpCode, Query};
    use hickory_proto::rr::rdata::{A, SOA};
    use hickory_proto::rr::{Name, Record};
    use std::net::Ipv4Addr;

    fn query(name: &str) -> Message {
        let mut q = Message::query();
        q.add_query(Query::query(Name::from_ascii(name).unwrap(), RecordType::A));
        q
    }

    fn reply(name: &str, code: ResponseCode, answer_ttls: &[u32]) -> Message {
        let q = query(name);
        let mut r = Message::new(q.metadata.id, MessageType::Response, OpCode::Query);
        r.metadata.response_code = code;
        r.add_query(q.queries[0].clone());
        for (i, t) in answer_ttls.iter().enumerate() {
            r.answers.push(Record::from_rdata(
                Name::from_ascii(name).unwrap(),
                *t,
                RData::A(A(Ipv4Addr::new(192, 0, 2, i as u8 + 1))),
            ));
        }
        r
    }

    fn with_soa(mut r: Message, ttl: u32, minimum: u32) -> Message {
        let zone = Name::from_ascii("example.").unwrap();
        let soa = SOA::new(
            zone.clone(),
            Name::from_ascii("admin.example.").unwrap(),
            1,
            3600,
            600,
            86400,
            minimum,
        );
        r.authorities
            .push(Record::from_rdata(zone, ttl, RData::SOA(soa)));
        r
    }

    fn key(name: &str) -> Key {
        Key::of(&query(name)).unwrap()
    }

    #[test]
    fn an_answer_lives_for_its_smallest_ttl_and_ages() {
        let mut c = Cache::new(10);
        let t0 = Instant::now();
        c.put(
            key("a.example."),
            &reply("a.example.", ResponseCode::NoError, &[300, 30]),
            t0,
        );
        let wire = c
            .get(&key("A.Example."), t0 + Duration::from_secs(10))
            .unwrap();
        let got = Message::from_vec(&wire).unwrap();
        let ttls: Vec<u32> = got.answers.iter().map(|r| r.ttl).collect();
        assert_eq!(ttls, vec![290, 20]);
        assert!(
            c.get(&key("a.example."), t0 + Duration::from_millis(29_999))
                .is_some()
        );
        assert!(
            c.get(&key("a.example."), t0 + Duration::from_secs(30))
                .is_none()
        );
        assert!(c.is_empty(), "an expired entry is dropped when seen");
    }

    #[test]
    fn keys_differ_by_type_and_dnssec_bits() {
        let mut c = Cache::new(10);
        let t0 = Instant::now();
        c.put(
            key("a.example."),
            &reply("a.example.", ResponseCode::NoError, &[60]),
            t0,
        );
        let mut aaaa = query("a.example.");
        aaaa.queries[0].set_query_type(RecordType::AAAA);
        assert!(c.get(&Key::of(&aaaa).unwrap(), t0).is_none());
        let mut cd = query("a.example.");
        cd.metadata.checking_disabled = true;
        assert!(c.get(&Key::of(&cd).unwrap(), t0).is_none());
        let mut dnssec = query("a.example.");
        let mut edns = hickory_proto::op::Edns::new();
        edns.set_dnssec_ok(true);
        dnssec.edns = Some(edns);
        assert!(c.get(&Key::of(&dnssec).unwrap(), t0).is_none());
        assert!(c.get(&key("a.example."), t0).is_some());
    }

    #[test]
    fn negative_answers_live_for_the_soa_minimum_and_need_an_soa() {
        let mut c = Cache::new(10);
        let t0 = Instant::now();
        // NXDOMAIN: min(SOA TTL 300, MINIMUM 60) = 60 s.
        let nx = with_soa(reply("nx.example.", ResponseCode::NXDomain, &[]), 300, 60);
        assert_eq!(ttl(&nx), Some(60));
        c.put(key("nx.example."), &nx, t0);
        let wire = c
            .get(&key("nx.example."), t0 + Duration::from_secs(59))
            .unwrap();
        let got = Message::from_vec(&wire).unwrap();
        assert_eq!(got.metadata.response_code, ResponseCode::NXDomain);
        assert_eq!(got.authorities[0].ttl, 300 - 59, "the SOA record ages too");
        assert!(
            c.get(&key("nx.example."), t0 + Duration::from_secs(60))
                .is_none()
        );
        // NODATA: the SOA's own TTL when it is the smaller.
        let nodata = with_soa(reply("nd.example.", ResponseCode::NoError, &[]), 20, 60);
        assert_eq!(ttl(&nodata), Some(20));
        // Without an SOA a negative answer is not kept; neither is SERVFAIL, nor a truncated
        // answer, nor a zero TTL.
        let bare = reply("bare.example.", ResponseCode::NXDomain, &[]);
        assert_eq!(ttl(&bare), None);
        c.put(key("bare.example."), &bare, t0);
        assert!(c.get(&key("bare.example."), t0).is_none());
        let fail = with_soa(reply("f.example.", ResponseCode::ServFail, &[]), 300, 60);
        assert_eq!(ttl(&fail), None);
        let mut tc = reply("tc.example.", ResponseCode::NoError, &[60]);
        tc.metadata.truncation = true;
        assert_eq!(ttl(&tc), None);
        assert_eq!(ttl(&reply("z.example.", ResponseCode::NoError, &[0])), None);
        // Huge TTLs are capped.
        assert_eq!(
            ttl(&with_soa(
                reply("nx.example.", ResponseCode::NXDomain, &[]),
                1 << 30,
                1 << 30
            )),
            Some(MAX_NEGATIVE_TTL)
        );
        assert_eq!(
            ttl(&reply("a.example.", ResponseCode::NoError, &[1 << 30])),
            Some(MAX_TTL)
        );
    }

    #[test]
    fn a_full_cache_drops_what_expires_first() {
        let mut c = Cache::new(3);
        let t0 = Instant::now();
        for (name, t) in [("a.example.", 100), ("b.example.", 10), ("c.example.", 50)] {
            c.put(key(name), &reply(name, ResponseCode::NoError, &[t]), t0);
        }
        assert_eq!(c.len(), 3);
        c.put(
            key("d.example."),
            &reply("d.example.", ResponseCode::NoError, &[70]),
            t0,
        );
        assert_eq!(c.len(), 3, "never more than the bound");
        assert!(c.get(&key("b.example."), t0).is_none(), "b expired first");
        for name in ["a.example.", "c.example.", "d.example."] {
            assert!(c.get(&key(name), t0).is_some(), "{name}");
        }
        // Replacing a key does not grow the cache.
        c.put(
            key("a.example."),
            &reply("a.example.", ResponseCode::NoError, &[5]),
            t0,
        );
        assert_eq!(c.len(), 3);
        // Many more names: still bounded.
        for i in 0..100 {
            let n = format!("n{i}.example.");
            c.put(key(&n), &reply(&n, ResponseCode::NoError, &[1000 + i]), t0);
        }
        assert_eq!(c.len(), 3);
        // A zero-capacity cache keeps nothing.
        let mut none = Cache::new(0);
        none.put(
            key("a.example."),
            &reply("a.example.", ResponseCode::NoError, &[60]),
            t0,
        );
        assert!(none.get(&key("a.example."), t0).is_none());
    }

    #[test]
    fn ttls_age_in_the_wire_form_and_edns_flags_stay() {
        let mut c = Cache::new(10);
        let t0 = Instant::now();
        let mut r = with_soa(
            reply("a.example.", ResponseCode::NoError, &[300, 60]),
            900,
            900,
        );
        let mut edns = hickory_proto::op::Edns::new();
        edns.set_dnssec_ok(true);
        r.edns = Some(edns);
        c.put(key("a.example."), &r, t0);
        let wire = c
            .get(&key("a.example."), t0 + Duration::from_secs(45))
            .unwrap();
        let got = Message::from_vec(&wire).unwrap();
        let ttls: Vec<u32> = got.answers.iter().map(|r| r.ttl).collect();
        assert_eq!(ttls, vec![255, 15]);
        assert_eq!(got.authorities[0].ttl, 855);
        let e = got.edns.expect("the OPT record is kept");
        assert!(e.flags().dnssec_ok, "the OPT record's flags are not aged");
        // Everything but the TTLs is as stored.
        let mut stored = Message::from_vec(&c.get(&key("a.example."), t0).unwrap()).unwrap();
        for rec in stored
            .answers
            .iter_mut()
            .chain(stored.authorities.iter_mut())
        {
            rec.ttl = 0;
        }
        let mut aged = Message::from_vec(&wire).unwrap();
        for rec in aged.answers.iter_mut().chain(aged.authorities.iter_mut()) {
            rec.ttl = 0;
        }
        assert_eq!(stored, aged);
    }

    #[test]
    fn a_malformed_message_has_no_ttl_offsets() {
        let wire = reply("a.example.", ResponseCode::NoError, &[60])
            .to_vec()
            .unwrap();
        assert_eq!(ttl_offsets(&wire).map(|o| o.len()), Some(1));
        for cut in [5, 12, 20, wire.len() - 1] {
            assert_eq!(ttl_offsets(&wire[..cut]), None, "cut at {cut}");
        }
        let mut bad_label = wire.clone();
        bad_label[12] = 0x80;
        assert_eq!(ttl_offsets(&bad_label), None);
    }
}
