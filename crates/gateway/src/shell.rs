//! A reader for the subset of POSIX shell that pod-gateway's `settings.sh` is written in.
//! The file is parsed, never executed. Accepted, one per line:
//!
//! - blank lines and `#` comments (whole line, or after the value and a blank);
//! - `NAME=VALUE` and `export NAME=VALUE`, and a bare `export NAME` (no effect);
//! - VALUE as any mix of bare words, `'single quoted'` (literal) and `"double quoted"` text
//!   (where `\"`, `\\`, `\$` and `` \` `` are escapes);
//! - in bare and double-quoted text: `$NAME`, `${NAME}`, `${NAME:-word}` and `${NAME-word}`,
//!   looked up first among the names the file has set so far, then in the environment.
//!
//! Everything else — commands, `;`, `&&`, pipes, redirections, `$(…)`, backticks, other
//! parameter expansions, a quote left open — is an error naming the line, the column and the
//! text, so a file that relies on shell behaviour is refused rather than half understood.

use std::collections::BTreeMap;

/// Why a line was refused. `line` and `column` count from 1.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{file}:{line}:{column}: {reason} (in `{text}`); settings.sh is read, not run: only comments, `[export] NAME=value` lines, quotes and $NAME, ${{NAME}}, ${{NAME:-default}} are understood"
)]
pub struct ShellError {
    pub file: String,
    pub line: usize,
    pub column: usize,
    pub text: String,
    pub reason: String,
}

/// One assignment as read, with its expanded value and where it was.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assignment {
    pub value: String,
    pub line: usize,
}

/// Parses `text` (named `file` in errors). `env` answers for names the file did not set.
pub fn parse(
    file: &str,
    text: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<BTreeMap<String, Assignment>, ShellError> {
    let mut vars: BTreeMap<String, Assignment> = BTreeMap::new();
    for (i, raw) in text.lines().enumerate() {
        let fail = |column: usize, reason: String| ShellError {
            file: file.to_string(),
            line: i + 1,
            column: column + 1,
            text: raw.trim().to_string(),
            reason,
        };
        let lookup = |name: &str| match vars.get(name) {
            Some(a) => Some(a.value.clone()),
            None => env(name),
        };
        let mut p = Cursor {
            s: raw.as_bytes(),
            at: 0,
        };
        p.skip_blanks();
        if p.done() || p.peek() == Some(b'#') {
            continue;
        }
        let start = p.at;
        let mut name = p.name();
        if name == "export" && p.peek().is_some_and(is_blank) {
            p.skip_blanks();
            let at = p.at;
            name = p.name();
            if name.is_empty() {
                return Err(fail(at, "expected a variable name after `export`".into()));
            }
            if p.done() || p.peek().is_some_and(is_blank) {
                p.skip_blanks();
                p.expect_end().map_err(|(c, r)| fail(c, r))?;
                continue;
            }
        }
        if name.is_empty() || p.peek() != Some(b'=') {
            return Err(fail(
                start,
                "expected `NAME=value`; commands and other shell statements are not run".into(),
            ));
        }
        p.at += 1;
        let value = p.word(&lookup).map_err(|(c, r)| fail(c, r))?;
        p.skip_blanks();
        p.expect_end().map_err(|(c, r)| fail(c, r))?;
        vars.insert(name, Assignment { value, line: i + 1 });
    }
    Ok(vars)
}

/// Expands one value as if it were in double quotes (used for the built-in defaults, which are
/// written like the seed's: `$gateway`).
pub fn expand(text: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let quoted = format!("\"{}\"", text.replace('"', "\\\""));
    let mut p = Cursor {
        s: quoted.as_bytes(),
        at: 0,
    };
    let v = p.word(env).map_err(|(_, r)| r)?;
    p.expect_end().map_err(|(_, r)| r)?;
    Ok(v)
}

fn is_blank(b: u8) -> bool {
    b == b' ' || b == b'\t' || b == b'\r'
}

fn is_name(b: u8, first: bool) -> bool {
    b == b'_' || b.is_ascii_alphabetic() || (!first && b.is_ascii_digit())
}

type Fail = (usize, String);

struct Cursor<'a> {
    s: &'a [u8],
    at: usize,
}

impl Cursor<'_> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.at).copied()
    }

    fn done(&self) -> bool {
        self.at >= self.s.len()
    }

    fn skip_blanks(&mut self) {
        while self.peek().is_some_and(is_blank) {
            self.at += 1;
        }
    }

    fn name(&mut self) -> String {
        let start = self.at;
        while self.peek().is_some_and(|b| is_name(b, self.at == start)) {
            self.at += 1;
        }
        String::from_utf8_lossy(&self.s[start..self.at]).into_owned()
    }

    fn expect_end(&mut self) -> Result<(), Fail> {
        match self.peek() {
            None | Some(b'#') => Ok(()),
            Some(_) => Err((
                self.at,
                "unexpected text after the value (one assignment per line; quote values with blanks)"
                    .into(),
            )),
        }
    }

    /// Reads one shell word: bare text, quotes and expansions, up to an unquoted blank.
    fn word(&mut self, env: &dyn Fn(&str) -> Option<String>) -> Result<String, Fail> {
        let mut out = Vec::<u8>::new();
        while let Some(b) = self.peek() {
            match b {
                b if is_blank(b) => break,
                b'\'' => {
                    let open = self.at;
                    self.at += 1;
                    let Some(len) = self.s[self.at..].iter().position(|&c| c == b'\'') else {
                        return Err((open, "single quote is never closed".into()));
                    };
                    out.extend_from_slice(&self.s[self.at..self.at + len]);
                    self.at += len + 1;
                }
                b'"' => {
                    let open = self.at;
                    self.at += 1;
                    loop {
                        match self.peek() {
                            None => return Err((open, "double quote is never closed".into())),
                            Some(b'"') => {
                                self.at += 1;
                                break;
                            }
                            Some(b'\\') => {
                                let next = self.s.get(self.at + 1).copied();
                                match next {
                                    Some(c @ (b'"' | b'\\' | b'$' | b'`')) => {
                                        out.push(c);
                                        self.at += 2;
                                    }
                                    _ => {
                                        out.push(b'\\');
                                        self.at += 1;
                                    }
                                }
                            }
                            Some(b'$') => out.extend(self.dollar(env)?.into_bytes()),
                            Some(b'`') => {
                                return Err((self.at, "command substitution is not run".into()));
                            }
                            Some(c) => {
                                out.push(c);
                                self.at += 1;
                            }
                        }
                    }
                }
                b'\\' => match self.s.get(self.at + 1) {
                    Some(&c) => {
                        out.push(c);
                        self.at += 2;
                    }
                    None => return Err((self.at, "line continuation is not supported".into())),
                },
                b'$' => out.extend(self.dollar(env)?.into_bytes()),
                b'`' => return Err((self.at, "command substitution is not run".into())),
                b';' | b'&' | b'|' | b'<' | b'>' | b'(' | b')' => {
                    return Err((
                        self.at,
                        format!("`{}` is shell syntax that is not run", b as char),
                    ));
                }
                b'#' if out.is_empty() => break,
                c => {
                    out.push(c);
                    self.at += 1;
                }
            }
        }
        String::from_utf8(out).map_err(|_| (self.at, "the value is not UTF-8".into()))
    }

    /// Expands `$NAME`, `${NAME}`, `${NAME:-word}`, `${NAME-word}` at the cursor (on the `$`).
    fn dollar(&mut self, env: &dyn Fn(&str) -> Option<String>) -> Result<String, Fail> {
        let at = self.at;
        self.at += 1;
        match self.peek() {
            Some(b'{') => {
                self.at += 1;
                let name = self.name();
                if name.is_empty() {
                    return Err((at, "expected a variable name after `${`".into()));
                }
                let value = env(&name);
                match self.peek() {
                    Some(b'}') => {
                        self.at += 1;
                        Ok(value.unwrap_or_default())
                    }
                    Some(b':' | b'-') => {
                        let colon = self.peek() == Some(b':');
                        if colon {
                            self.at += 1;
                            if self.peek() != Some(b'-') {
                                return Err((
                                    at,
                                    "only ${NAME:-default} and ${NAME-default} are understood"
                                        .into(),
                                ));
                            }
                        }
                        self.at += 1;
                        let word = self.default_word(env, at)?;
                        Ok(match value {
                            Some(v) if !(colon && v.is_empty()) => v,
                            _ => word,
                        })
                    }
                    _ => Err((
                        at,
                        "only ${NAME}, ${NAME:-default} and ${NAME-default} are understood".into(),
                    )),
                }
            }
            Some(b'(') => Err((at, "command substitution `$(…)` is not run".into())),
            Some(b) if is_name(b, true) => {
                let name = self.name();
                Ok(env(&name).unwrap_or_default())
            }
            _ => Err((
                at,
                "a lone `$` or a special parameter ($1, $@, $$, …) is not understood; write \\$ for a dollar sign"
                    .into(),
            )),
        }
    }

    /// The `word` of `${NAME:-word}`, up to the matching `}`: text, quotes and `$NAME`s.
    fn default_word(
        &mut self,
        env: &dyn Fn(&str) -> Option<String>,
        open: usize,
    ) -> Result<String, Fail> {
        let mut out = String::new();
        loop {
            match self.peek() {
                None => return Err((open, "`${` is never closed".into())),
                Some(b'}') => {
                    self.at += 1;
                    return Ok(out);
                }
                Some(b'$') => out.push_str(&self.dollar(env)?),
                Some(q @ (b'"' | b'\'')) => {
                    let start = self.at;
                    self.at += 1;
                    let Some(len) = self.s[self.at..].iter().position(|&c| c == q) else {
                        return Err((start, "quote is never closed".into()));
                    };
                    out.push_str(&String::from_utf8_lossy(&self.s[self.at..self.at + len]));
                    self.at += len + 1;
                }
                Some(b'`') => return Err((self.at, "command substitution is not run".into())),
                Some(_) => {
                    let start = self.at;
                    while self
                        .peek()
                        .is_some_and(|c| !matches!(c, b'}' | b'$' | b'"' | b'\'' | b'`'))
                    {
                        self.at += 1;
                    }
                    out.push_str(&String::from_utf8_lossy(&self.s[start..self.at]));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "gateway" => Some("vpn-gateway".into()),
            "EMPTY" => Some(String::new()),
            "VXLAN_ID" => Some("50".into()),
            _ => None,
        }
    }

    fn ok(text: &str) -> BTreeMap<String, String> {
        parse("settings.sh", text, &env)
            .unwrap()
            .into_iter()
            .map(|(k, v)| (k, v.value))
            .collect()
    }

    fn err(text: &str) -> ShellError {
        parse("settings.sh", text, &env).unwrap_err()
    }

    #[test]
    fn the_forms_settings_files_use() {
        let v = ok(r#"#!/bin/sh
# comment
GATEWAY_NAME="$gateway"
export K8S_DNS_IPS="${K8S_DNS_IPS:-172.16.0.1 172.16.0.2}"
  VXLAN_ID="${VXLAN_ID:-42}"   # env wins through the default
VXLAN_PORT=4789
VPN_LOCAL_CIDRS='10.0.0.0/8 192.168.0.0/16'
DNS_LOCAL_CIDRS="local ${GATEWAY_NAME}.svc"
SNAT_IP=
A="x"'y'z\ w
B="${EMPTY:-dflt}"
"#);
        assert_eq!(v["GATEWAY_NAME"], "vpn-gateway");
        assert_eq!(v["K8S_DNS_IPS"], "172.16.0.1 172.16.0.2");
        assert_eq!(v["VXLAN_ID"], "50");
        assert_eq!(v["VXLAN_PORT"], "4789");
        assert_eq!(v["VPN_LOCAL_CIDRS"], "10.0.0.0/8 192.168.0.0/16");
        assert_eq!(v["DNS_LOCAL_CIDRS"], "local vpn-gateway.svc");
        assert_eq!(v["SNAT_IP"], "");
        assert_eq!(v["A"], "xyz w");
        assert_eq!(v["B"], "dflt");
    }

    #[test]
    fn default_forms_differ_on_empty() {
        let v = ok("X=\"${EMPTY-set}\"\nY=\"${EMPTY:-set}\"\nZ=${NOPE-\"a b\"}\n");
        assert_eq!(v["X"], "");
        assert_eq!(v["Y"], "set");
        assert_eq!(v["Z"], "a b");
    }

    #[test]
    fn escapes_in_double_quotes() {
        let v = ok(r#"X="a\"b\\c\$d\e""#);
        assert_eq!(v["X"], r#"a"b\c$d\e"#);
    }

    #[test]
    fn shell_that_would_run_something_is_refused_with_its_place() {
        for (text, col, what) in [
            ("X=$(curl evil)", 3, "command substitution"),
            ("X=`id`", 3, "command substitution"),
            ("X=\"a `id`\"", 6, "command substitution"),
            ("X=1; rm -rf /", 4, "`;`"),
            ("X=1 && y", 5, "unexpected text"),
            ("echo hi", 1, "expected `NAME=value`"),
            ("if true; then", 1, "expected `NAME=value`"),
            ("X=\"open", 3, "never closed"),
            ("X=${Y:=z}", 3, "only ${NAME:-default}"),
            ("X=$1", 3, "special parameter"),
            ("X=a|b", 4, "`|`"),
            ("source /etc/x", 1, "expected `NAME=value`"),
        ] {
            let e = err(&format!("A=1\n{text}\n"));
            assert_eq!((e.line, e.column), (2, col), "{text}: {e}");
            assert!(e.reason.contains(what), "{text}: {e}");
            assert!(e.to_string().starts_with("settings.sh:2:"), "{e}");
        }
    }

    #[test]
    fn later_lines_see_earlier_ones() {
        let v = ok("NET=172.20.0\nGW=\"$NET.1\"\nexport NET\n");
        assert_eq!(v["GW"], "172.20.0.1");
    }

    #[test]
    fn expand_is_double_quoted() {
        assert_eq!(expand("$gateway", &env).unwrap(), "vpn-gateway");
        assert_eq!(expand("", &env).unwrap(), "");
        assert_eq!(expand("a \"b\" $VXLAN_ID", &env).unwrap(), "a \"b\" 50");
        assert!(expand("$(id)", &env).is_err());
    }
}
