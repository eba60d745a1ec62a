//! CoreDNS's `rewrite` plugin, the part the lab needs: the `name regex` rules (and their
//! `answer name` counterparts) of a Corefile, as kubeadm keeps it in the `coredns` ConfigMap of
//! `kube-system`. A query under a server block's zone whose name matches a rule is answered
//! from the rewritten name, and the answer's owner names are rewritten back, so the lab DNS
//! serves whatever the Corefile's rewrite blocks say (e.g. what `ghostwire mirror
//! coredns-config` prints) without a second copy of them.
//!
//! Every other plugin of the Corefile is ignored (the lab's server is always `kubernetes
//! cluster.local` plus its upstream). Rewrite forms other than `name regex` / `name exact` /
//! `answer name` are refused with the line they are on.

use regex::Regex;
use std::fmt;

/// A Corefile the lab cannot take.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("Corefile line {line}: {message}")]
pub struct CorefileError {
    pub line: usize,
    pub message: String,
}

/// One `rewrite` rule of a server block.
#[derive(Clone)]
pub struct Rewrite {
    /// The server block's zone (without trailing dot, lower case); `.` for the root.
    pub zone: String,
    /// The question's name: a regex (with `{N}` groups in the replacement) or an exact name.
    pub name: Matcher,
    pub to: String,
    /// The answer's owner names back to the question's form.
    pub answer: Option<(Regex, String)>,
}

#[derive(Clone)]
pub enum Matcher {
    Regex(Regex),
    Exact(String),
}

impl fmt::Debug for Rewrite {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match &self.name {
            Matcher::Regex(r) => format!("regex {r}"),
            Matcher::Exact(e) => format!("exact {e}"),
        };
        f.debug_struct("Rewrite")
            .field("zone", &self.zone)
            .field("name", &name)
            .field("to", &self.to)
            .field(
                "answer",
                &self.answer.as_ref().map(|(r, t)| (r.as_str(), t)),
            )
            .finish()
    }
}

impl PartialEq for Rewrite {
    fn eq(&self, other: &Self) -> bool {
        format!("{self:?}") == format!("{other:?}")
    }
}

impl Eq for Rewrite {}

/// `{0}`, `{1}`, … in `template` replaced by the groups of `re` in `name` (an unmatched group
/// is empty, as in CoreDNS); `None` when `re` does not match.
fn substitute(re: &Regex, name: &str, template: &str) -> Option<String> {
    let caps = re.captures(name)?;
    let mut out = template.to_string();
    // Highest index first, so `{1}` does not eat the start of `{10}`.
    for i in (0..caps.len()).rev() {
        out = out.replace(&format!("{{{i}}}"), caps.get(i).map_or("", |m| m.as_str()));
    }
    Some(out)
}

fn in_zone(name: &str, zone: &str) -> bool {
    zone == "." || name == zone || name.ends_with(&format!(".{zone}"))
}

impl Rewrite {
    /// The name to answer `name` (lower case, no trailing dot) from, if this rule applies.
    pub fn question(&self, name: &str) -> Option<String> {
        if !in_zone(name, &self.zone) {
            return None;
        }
        let to = match &self.name {
            Matcher::Regex(re) => substitute(re, name, &self.to)?,
            Matcher::Exact(e) => (e == name).then(|| self.to.clone())?,
        };
        Some(to.trim_end_matches('.').to_lowercase())
    }

    /// An answer's owner name as the client asked for it (unchanged when no answer rule
    /// matches it).
    pub fn answer(&self, owner: &str) -> String {
        self.answer
            .as_ref()
            .and_then(|(re, t)| substitute(re, owner, t))
            .map_or_else(
                || owner.to_string(),
                |n| n.trim_end_matches('.').to_lowercase(),
            )
    }
}

/// The first rule that applies to `name`, and the name to look up instead.
pub fn apply<'a>(rules: &'a [Rewrite], name: &str) -> Option<(&'a Rewrite, String)> {
    rules
        .iter()
        .find_map(|r| r.question(name).map(|to| (r, to)))
}

fn err(line: usize, message: impl Into<String>) -> CorefileError {
    CorefileError {
        line,
        message: message.into(),
    }
}

fn regex(line: usize, pattern: &str) -> Result<Regex, CorefileError> {
    Regex::new(pattern).map_err(|e| err(line, format!("bad regex {pattern:?}: {e}")))
}

/// A server block's key (`cluster.west`, `cluster.west:53`, `dns://cluster.west.`) → its zone.
fn zone_of(key: &str) -> String {
    let key = key.strip_prefix("dns://").unwrap_or(key);
    let key = key.rsplit_once(':').map_or(key, |(z, _)| z);
    if key == "." {
        return ".".into();
    }
    key.trim_end_matches('.').to_lowercase()
}

/// One `name …` or `answer name …` line of a rewrite (the tokens after `rewrite [continue|stop]`).
fn rule_line(
    line: usize,
    tokens: &[&str],
    zones: &[String],
    rules: &mut Vec<Rewrite>,
    open: &mut Vec<usize>,
) -> Result<(), CorefileError> {
    match tokens {
        ["name", "regex", pattern, to, rest @ ..] => {
            let re = regex(line, pattern)?;
            open.clear();
            for z in zones {
                open.push(rules.len());
                rules.push(Rewrite {
                    zone: z.clone(),
                    name: Matcher::Regex(re.clone()),
                    to: to.to_string(),
                    answer: None,
                });
            }
            if !rest.is_empty() {
                rule_line(line, rest, zones, rules, open)?;
            }
            Ok(())
        }
        ["name", "exact", from, to] | ["name", from, to] => {
            open.clear();
            for z in zones {
                open.push(rules.len());
                rules.push(Rewrite {
                    zone: z.clone(),
                    name: Matcher::Exact(from.trim_end_matches('.').to_lowercase()),
                    to: to.to_string(),
                    answer: None,
                });
            }
            Ok(())
        }
        ["answer", "name", pattern, to] => {
            if open.is_empty() {
                return Err(err(line, "`answer name` before any `name` rule"));
            }
            let re = regex(line, pattern)?;
            for &i in open.iter() {
                rules[i].answer = Some((re.clone(), to.to_string()));
            }
            Ok(())
        }
        ["answer", "auto"] => Ok(()),
        _ => Err(err(
            line,
            format!(
                "rewrite {:?}: the lab supports `name regex P R`, `name [exact] A B` and `answer name P R`",
                tokens.join(" ")
            ),
        )),
    }
}

/// The rewrite rules of a Corefile, in order, each scoped to its server block's zones.
pub fn parse_corefile(text: &str) -> Result<Vec<Rewrite>, CorefileError> {
    let mut rules = Vec::new();
    // The zones of the server block we are in; `None` outside one.
    let mut zones: Option<Vec<String>> = None;
    // Depth of braces inside the server block; inside a `rewrite { }` block when `in_rewrite`.
    let mut depth = 0usize;
    let mut in_rewrite = false;
    let mut open: Vec<usize> = Vec::new();
    let mut last = 0;
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        last = line;
        let text = raw.split('#').next().unwrap_or_default().trim();
        if text.is_empty() {
            continue;
        }
        let tokens: Vec<&str> = text.split_whitespace().collect();
        let opens = tokens.last() == Some(&"{");
        let body: &[&str] = if opens {
            &tokens[..tokens.len() - 1]
        } else {
            &tokens
        };
        if tokens == ["}"] {
            if in_rewrite {
                in_rewrite = false;
                open.clear();
            } else if depth > 0 {
                depth -= 1;
            } else if zones.take().is_none() {
                return Err(err(line, "`}` without a block to close"));
            }
            continue;
        }
        let Some(block_zones) = zones.as_ref() else {
            if !opens || body.is_empty() {
                return Err(err(line, format!("expected `ZONE {{`, got {text:?}")));
            }
            zones = Some(body.iter().map(|k| zone_of(k)).collect());
            continue;
        };
        if in_rewrite {
            if opens {
                return Err(err(line, "a block inside a rewrite block"));
            }
            rule_line(line, body, block_zones, &mut rules, &mut open)?;
            continue;
        }
        if depth == 0 && body.first() == Some(&"rewrite") {
            let mut args = &body[1..];
            if matches!(args.first(), Some(&"continue" | &"stop")) {
                args = &args[1..];
            }
            if opens {
                if !args.is_empty() {
                    return Err(err(line, "`rewrite … {` takes only continue/stop"));
                }
                in_rewrite = true;
                open.clear();
            } else {
                let zs = block_zones.clone();
                rule_line(line, args, &zs, &mut rules, &mut open)?;
                open.clear();
            }
            continue;
        }
        if opens {
            depth += 1;
        }
    }
    if zones.is_some() || in_rewrite || depth > 0 {
        return Err(err(last, "a block is not closed"));
    }
    Ok(rules)
}

#[cfg(test)]
mod tests {
    use super::*;

    const COREFILE: &str = r#"
.:53 {
    errors
    kubernetes cluster.local in-addr.arpa ip6.arpa {
       pods insecure
    }
    forward . /etc/resolv.conf
}
cluster.west {
    rewrite continue {
        name regex ([a-zA-Z0-9-_]*\.)?([a-zA-Z0-9-_]*)\.([a-zA-Z0-9-_]*)\.svc\.cluster\.west {1}west-{3}-73736d-{2}.mirror.svc.cluster.local
        answer name ([a-zA-Z0-9-_]*\.)?west-([a-zA-Z0-9-_]*)-73736d-([a-zA-Z0-9-_]*)\.mirror\.svc\.cluster\.local {1}{3}.{2}.svc.cluster.west
    }
    kubernetes cluster.local
}
"#;

    #[test]
    fn name_regex_rules_rewrite_the_question_and_the_answer_back() {
        let rules = parse_corefile(COREFILE).unwrap();
        assert_eq!(rules.len(), 1);
        let (rule, to) = apply(&rules, "orders.shop.svc.cluster.west").unwrap();
        assert_eq!(to, "west-shop-73736d-orders.mirror.svc.cluster.local");
        assert_eq!(rule.answer(&to), "orders.shop.svc.cluster.west");
        // Unanchored, as in CoreDNS (Go's leftmost-first match): the optional group takes one
        // label, so an SRV name keeps only the label next to the Service's.
        let (_, to) = apply(&rules, "_http._tcp.orders.shop.svc.cluster.west").unwrap();
        assert_eq!(to, "_tcp.west-shop-73736d-orders.mirror.svc.cluster.local");
        // Outside the block's zone, or not matching: untouched.
        assert!(apply(&rules, "orders.shop.svc.cluster.local").is_none());
        assert!(apply(&rules, "cluster.west").is_none());
    }

    #[test]
    fn bad_corefiles_name_the_line() {
        let bad = "cluster.west {\n  rewrite name regex (unclosed x\n}\n";
        let e = parse_corefile(bad).unwrap_err();
        assert_eq!(e.line, 2);
        assert!(e.message.contains("(unclosed"), "{e}");
        let e = parse_corefile("cluster.west {\n  rewrite name suffix .a .b\n}\n").unwrap_err();
        assert_eq!(e.line, 2);
        let e = parse_corefile("cluster.west {\n  errors\n").unwrap_err();
        assert!(e.message.contains("not closed"), "{e}");
        let e = parse_corefile("}\n").unwrap_err();
        assert_eq!(e.line, 1);
        let e = parse_corefile("x {\n rewrite {\n answer name a b\n }\n}\n").unwrap_err();
        assert_eq!(e.line, 3);
    }

    #[test]
    fn exact_and_single_line_rules_and_zone_keys() {
        let rules = parse_corefile(
            "dns://Example.Org.:53 {\n rewrite name exact db.example.org db.shop.svc.cluster.local\n}\n",
        )
        .unwrap();
        assert_eq!(rules[0].zone, "example.org");
        assert_eq!(
            apply(&rules, "db.example.org").unwrap().1,
            "db.shop.svc.cluster.local"
        );
        assert!(apply(&rules, "x.example.org").is_none());
    }
}
