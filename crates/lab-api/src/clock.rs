//! Wall-clock timestamps in the RFC 3339 form Kubernetes uses (`2024-05-01T12:00:00Z`), and the
//! short ages (`5s`, `3m`, `2d`) tables show.

use jiff::Timestamp;

pub fn unix_now() -> i64 {
    Timestamp::now().as_second()
}

/// RFC 3339 in UTC with whole seconds, as Kubernetes writes `metav1.Time`.
pub fn rfc3339(secs: i64) -> String {
    Timestamp::from_second(secs)
        .map(|t| t.to_string())
        .unwrap_or_default()
}

pub fn now() -> String {
    rfc3339(unix_now())
}

/// Seconds since the epoch of an RFC 3339 timestamp.
pub fn parse(ts: &str) -> Option<i64> {
    ts.parse::<Timestamp>().ok().map(|t| t.as_second())
}

/// `kubectl`'s short human duration.
pub fn age(since: &str) -> String {
    let Some(t) = parse(since) else {
        return "<unknown>".into();
    };
    let s = (unix_now() - t).max(0);
    match s {
        0..120 => format!("{s}s"),
        120..3600 => format!("{}m", s / 60),
        3600..172_800 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86_400),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn round_trips() {
        for t in [0, 951_782_400, 1_714_564_800, 4_102_444_799] {
            assert_eq!(super::parse(&super::rfc3339(t)), Some(t));
        }
        assert_eq!(super::rfc3339(1_714_564_800), "2024-05-01T12:00:00Z");
    }
}
