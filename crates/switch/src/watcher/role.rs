//! The pod's role, read from its labels: a pure function.

use crate::config::Settings;
use std::collections::BTreeMap;
use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    Active,
    Preview,
    /// The label has a value that is neither the active nor the preview value.
    Other(String),
    /// The label is not there.
    Missing,
}

impl Role {
    pub fn of(labels: Option<&BTreeMap<String, String>>, s: &Settings) -> Role {
        match labels.and_then(|l| l.get(&s.role_label_key)) {
            None => Role::Missing,
            Some(v) if *v == s.role_preview => Role::Preview,
            Some(v) if *v == s.role_active => Role::Active,
            Some(v) => Role::Other(v.clone()),
        }
    }

    /// Only a preview pod gets the jump; anything else falls back to active.
    pub fn jump(&self) -> bool {
        matches!(self, Role::Preview)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Role::Active => f.write_str("active"),
            Role::Preview => f.write_str("preview"),
            Role::Other(v) => write!(f, "other({v})"),
            Role::Missing => f.write_str("missing"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Sources;

    #[test]
    fn only_preview_jumps() {
        let s = Settings::resolve(&Sources {
            cli: [("GW_ROLE_LABEL_KEY".to_string(), "track".to_string())].into(),
            ..Default::default()
        })
        .unwrap();
        let labels = |v: &str| BTreeMap::from([("track".to_string(), v.to_string())]);
        assert_eq!(Role::of(Some(&labels("preview")), &s), Role::Preview);
        assert!(Role::of(Some(&labels("preview")), &s).jump());
        assert_eq!(Role::of(Some(&labels("active")), &s), Role::Active);
        assert_eq!(
            Role::of(Some(&labels("canary")), &s),
            Role::Other("canary".into())
        );
        assert_eq!(Role::of(None, &s), Role::Missing);
        let wrong_key = BTreeMap::from([("role".to_string(), "preview".to_string())]);
        assert_eq!(Role::of(Some(&wrong_key), &s), Role::Missing);
        for r in [Role::Active, Role::Other("x".into()), Role::Missing] {
            assert!(!r.jump(), "{r}");
        }
    }
}
