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

/// Parses the labels file a downward-API volume writes for `metadata.labels`:
/// one `key="value"` line per label, the value quoted as Go's `%q` does.
/// An error names the line and what is wrong with it.
pub fn parse_downward_labels(text: &str) -> Result<BTreeMap<String, String>, String> {
    let mut out = BTreeMap::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let bad = |why: &str| format!("line {}: {why}: {line:?}", i + 1);
        let (key, quoted) = line
            .split_once('=')
            .ok_or_else(|| bad("expected key=\"value\""))?;
        let inner = quoted
            .strip_prefix('"')
            .and_then(|q| q.strip_suffix('"'))
            .filter(|_| quoted.len() >= 2)
            .ok_or_else(|| bad("the value is not in double quotes"))?;
        let mut value = String::new();
        let mut chars = inner.chars();
        while let Some(c) = chars.next() {
            if c != '\\' {
                value.push(c);
                continue;
            }
            match chars.next() {
                Some('"') => value.push('"'),
                Some('\\') => value.push('\\'),
                Some('n') => value.push('\n'),
                Some('t') => value.push('\t'),
                other => {
                    return Err(bad(&format!(
                        "unsupported escape \\{}",
                        other.unwrap_or(' ')
                    )));
                }
            }
        }
        if key.is_empty() {
            return Err(bad("empty label key"));
        }
        out.insert(key.to_string(), value);
    }
    Ok(out)
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
    fn downward_labels_files_parse() {
        let l = parse_downward_labels(
            "app=\"shop\"\nrole=\"preview\"\npod-template-hash=\"7d9f\"\nodd=\"a\\\"b\\\\c\"\n",
        )
        .unwrap();
        assert_eq!(l["role"], "preview");
        assert_eq!(l["app"], "shop");
        assert_eq!(l["pod-template-hash"], "7d9f");
        assert_eq!(l["odd"], "a\"b\\c");
        assert_eq!(parse_downward_labels("").unwrap().len(), 0);
        for (bad, why) in [
            ("role", "line 1: expected key=\"value\""),
            ("role=preview", "line 1: the value is not in double quotes"),
            (
                "a=\"x\"\nrole=\"",
                "line 2: the value is not in double quotes",
            ),
            ("=\"x\"", "line 1: empty label key"),
        ] {
            let e = parse_downward_labels(bad).unwrap_err();
            assert!(e.starts_with(why), "{bad:?}: {e}");
        }
    }

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
