//! One table of knobs per capability. Each capability declares its [`Knob`]s once with
//! [`knobs!`]; the CLI flags, the `GW_*` environment names, the injector's annotations and the
//! tables in docs/configuration.md all derive from that table.
//!
//! Values resolve with the precedence flag > env > defaults file > built-in default; a
//! [`Resolver`] does the lookup and turns a parse failure into a [`ConfigError`] that names the
//! knob, the flag and the value.

use std::collections::BTreeMap;
use std::time::Duration;

/// One configuration knob.
#[derive(Debug, Clone, Copy)]
pub struct Knob {
    pub env: &'static str,
    pub flag: &'static str,
    pub default: &'static str,
    pub help: &'static str,
    /// The `ghostwire.dev/*` workload annotation the injector maps to this env, if any.
    pub annotation: Option<&'static str>,
}

/// Declares `pub const ID: &str = "GW_…"` for every knob and `pub const KNOBS: &[Knob]`.
#[macro_export]
macro_rules! knobs {
    ($($id:ident = $env:literal, $flag:literal, $default:literal, $help:literal $(, @$ann:literal)?;)*) => {
        $(pub const $id: &str = $env;)*
        pub const KNOBS: &[$crate::Knob] = &[$($crate::Knob {
            env: $env,
            flag: $flag,
            default: $default,
            help: $help,
            annotation: $crate::knobs!(@ann $($ann)?),
        }),*];
    };
    (@ann) => { None };
    (@ann $a:literal) => { Some(concat!("ghostwire.dev/", $a)) };
}

/// A bad knob value: names the variable, the flag, the value and what was expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{knob}={value:?} is invalid: {reason} (flag --{flag})")]
pub struct ConfigError {
    pub knob: &'static str,
    pub flag: &'static str,
    pub value: String,
    pub reason: String,
}

/// Looks knobs up in one table: given values (flags or env, merged by clap) over a defaults
/// file over the built-in default.
pub struct Resolver<'a> {
    pub table: &'static [Knob],
    pub given: &'a BTreeMap<String, String>,
    pub file: &'a BTreeMap<String, String>,
}

impl Resolver<'_> {
    fn knob(&self, env: &str) -> &'static Knob {
        self.table
            .iter()
            .find(|k| k.env == env)
            .unwrap_or_else(|| panic!("knob {env} is not in the table"))
    }

    /// The raw value of a knob.
    pub fn raw(&self, env: &str) -> String {
        let knob = self.knob(env);
        self.given
            .get(env)
            .or_else(|| self.file.get(env))
            .cloned()
            .unwrap_or_else(|| knob.default.to_string())
    }

    /// The value of a knob, parsed by `f`; a failure names the knob.
    pub fn parse<T>(
        &self,
        env: &str,
        f: impl FnOnce(&str) -> Result<T, String>,
    ) -> Result<T, ConfigError> {
        let knob = self.knob(env);
        let value = self.raw(env);
        f(&value).map_err(|reason| ConfigError {
            knob: knob.env,
            flag: knob.flag,
            value,
            reason,
        })
    }
}

/// Parses `500ms`, `2s`, `15m`, `1h`, `1m30s`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if s.is_empty() {
        return Err("empty duration".into());
    }
    let mut total = Duration::ZERO;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits == 0 {
            return Err(format!(
                "expected a number at {rest:?} (e.g. 2s, 500ms, 15m)"
            ));
        }
        let n: u64 = rest[..digits].parse().map_err(|_| "number too large")?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let d = match &rest[..unit_len] {
            "ms" => Duration::from_millis(n),
            "s" => Duration::from_secs(n),
            "m" => Duration::from_secs(n.saturating_mul(60)),
            "h" => Duration::from_secs(n.saturating_mul(3600)),
            "" => return Err(format!("missing unit after {n} (use ms, s, m or h)")),
            u => return Err(format!("unknown unit {u:?} (use ms, s, m or h)")),
        };
        total = total.saturating_add(d);
        rest = &rest[unit_len..];
    }
    Ok(total)
}

/// Parses true/false (also 1/0, yes/no, on/off; empty is false).
pub fn parse_bool(s: &str) -> Result<bool, String> {
    match s.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" | "" => Ok(false),
        _ => Err("expected true or false".into()),
    }
}

/// Parses a comma-separated list of ports (`22, 4191`); empty is none.
pub fn parse_ports(s: &str) -> Result<Vec<u16>, String> {
    s.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| match p.parse::<u16>() {
            Ok(0) | Err(_) => Err(format!("{p:?} is not a port (1-65535)")),
            Ok(n) => Ok(n),
        })
        .collect()
}

/// Renders a knob table as Markdown, for docs/configuration.md.
pub fn markdown(table: &[Knob]) -> String {
    let mut s = String::from(
        "| env | flag | workload annotation | default | what it does |\n|---|---|---|---|---|\n",
    );
    for k in table {
        let default = if k.default.is_empty() {
            "(empty)"
        } else {
            k.default
        };
        let ann = k.annotation.map_or("-".to_string(), |a| format!("`{a}`"));
        s.push_str(&format!(
            "| `{}` | `--{}` | {ann} | `{}` | {} |\n",
            k.env, k.flag, default, k.help
        ));
    }
    s
}

/// Checks (or with `GW_UPDATE_DOCS` set, rewrites) the table between `<!-- knobs:NAME:begin -->`
/// and `<!-- knobs:NAME:end -->` in a Markdown file; returns the difference as an error.
pub fn check_doc_table(path: &str, name: &str, table: &[Knob]) -> Result<(), String> {
    let doc = std::fs::read_to_string(path).map_err(|e| format!("{path}: {e}"))?;
    let (begin, end) = (
        format!("<!-- knobs:{name}:begin -->\n"),
        format!("<!-- knobs:{name}:end -->"),
    );
    let start = doc
        .find(&begin)
        .ok_or_else(|| format!("{path}: no {begin:?} marker"))?
        + begin.len();
    let stop = doc
        .find(&end)
        .ok_or_else(|| format!("{path}: no {end:?} marker"))?;
    let want = markdown(table);
    if std::env::var_os("GW_UPDATE_DOCS").is_some() {
        let new = format!("{}{want}{}", &doc[..start], &doc[stop..]);
        return std::fs::write(path, new).map_err(|e| format!("{path}: {e}"));
    }
    if doc[start..stop] != want {
        return Err(format!(
            "{path}: the {name} knob table is stale; run with GW_UPDATE_DOCS=1 to rewrite it"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    knobs! {
        A = "GW_A", "a", "1s", "A duration.", @"a";
        B = "GW_B", "b", "", "A flag.";
    }

    #[test]
    fn precedence_and_errors_name_the_knob() {
        let given = BTreeMap::from([("GW_A".to_string(), "2s".to_string())]);
        let file = BTreeMap::from([
            ("GW_A".to_string(), "3s".to_string()),
            ("GW_B".to_string(), "maybe".to_string()),
        ]);
        let r = Resolver {
            table: KNOBS,
            given: &given,
            file: &file,
        };
        assert_eq!(r.parse(A, parse_duration), Ok(Duration::from_secs(2)));
        let e = r.parse(B, parse_bool).unwrap_err().to_string();
        assert_eq!(
            e,
            "GW_B=\"maybe\" is invalid: expected true or false (flag --b)"
        );
        assert_eq!(KNOBS[0].annotation, Some("ghostwire.dev/a"));
        assert_eq!(KNOBS[1].annotation, None);
    }

    #[test]
    fn parsers() {
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert!(parse_duration("5").is_err());
        assert_eq!(parse_ports("22, 4191,"), Ok(vec![22, 4191]));
        assert!(parse_ports("0").is_err());
        assert!(parse_ports("http").unwrap_err().contains("http"));
    }
}
