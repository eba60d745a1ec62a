//! The per-Pod policy: the seed's ConfigMap JSON (key `config` of `<pod>-ghostwire-ai`, or the
//! seed's `<pod>-kube-gateway`), read strictly so that a typo is an error naming the field rather
//! than a rule silently ignored.

use serde::Deserialize;

/// Why a policy was refused; the message names the field and the value.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("AI policy is not valid JSON for the seed's format: {0}")]
    Json(#[from] serde_json::Error),
    #[error("AI policy field `{field}`: {problem} (value {value:?})")]
    Field {
        field: String,
        value: String,
        problem: &'static str,
    },
}

/// One search-and-replace rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replace {
    pub orig: String,
    pub new: String,
    pub case_sensitive: bool,
}

/// The policy, validated.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policy {
    /// Answer every request with a canned "blocked" completion instead of forwarding it.
    pub block: bool,
    /// Upper bound on the tokens a request may ask for (the API's own field is lowered or set).
    pub max_tokens: Option<u64>,
    /// Exact-match model renames, first match wins.
    pub model_replace: Vec<(String, String)>,
    /// Applied to the user's prompt text.
    pub user_prompt_replace: Vec<Replace>,
    /// Applied to system/developer prompts and instructions.
    pub dev_prompt_replace: Vec<Replace>,
    /// Masked with `*` in responses, case-insensitively, streamed or not.
    pub banned_words: Vec<String>,
    /// Log each rewrite (the seed's two debug flags, either one).
    pub debug: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    #[serde(default)]
    request: RawRequest,
    #[serde(default)]
    response: RawResponse,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawRequest {
    #[serde(default)]
    max_tokens: Option<serde_json::Value>,
    #[serde(default)]
    debug: bool,
    #[serde(default)]
    block: bool,
    #[serde(default)]
    model_replace: Vec<RawModel>,
    #[serde(default)]
    user_prompt_replace: Vec<RawReplace>,
    #[serde(default)]
    dev_prompt_replace: Vec<RawReplace>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawResponse {
    #[serde(default)]
    debug: bool,
    #[serde(default)]
    banned_words: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawModel {
    orig: String,
    new: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawReplace {
    orig: String,
    new: String,
    #[serde(default)]
    case_sensitive: bool,
}

impl Policy {
    /// Parses the ConfigMap's `config` value. An empty document is the empty policy.
    pub fn parse(text: &str) -> Result<Policy, ConfigError> {
        if text.trim().is_empty() {
            return Ok(Policy::default());
        }
        let raw: Raw = serde_json::from_str(text)?;
        let max_tokens = match raw.request.max_tokens {
            None | Some(serde_json::Value::Null) => None,
            Some(serde_json::Value::String(s)) if s.trim().is_empty() => None,
            Some(v) => Some(parse_max_tokens(&v)?),
        };
        let model_replace = raw
            .request
            .model_replace
            .into_iter()
            .enumerate()
            .map(|(i, m)| {
                non_empty(&format!("request.modelReplace[{i}].orig"), &m.orig)?;
                Ok((m.orig, m.new))
            })
            .collect::<Result<_, ConfigError>>()?;
        let replaces = |list: Vec<RawReplace>, name: &str| {
            list.into_iter()
                .enumerate()
                .map(|(i, r)| {
                    non_empty(&format!("request.{name}[{i}].orig"), &r.orig)?;
                    Ok(Replace {
                        orig: r.orig,
                        new: r.new,
                        case_sensitive: r.case_sensitive,
                    })
                })
                .collect::<Result<Vec<_>, ConfigError>>()
        };
        let user_prompt_replace = replaces(raw.request.user_prompt_replace, "userPromptReplace")?;
        let dev_prompt_replace = replaces(raw.request.dev_prompt_replace, "devPromptReplace")?;
        for (i, w) in raw.response.banned_words.iter().enumerate() {
            non_empty(&format!("response.bannedWords[{i}]"), w)?;
        }
        Ok(Policy {
            block: raw.request.block,
            max_tokens,
            model_replace,
            user_prompt_replace,
            dev_prompt_replace,
            banned_words: raw.response.banned_words,
            debug: raw.request.debug || raw.response.debug,
        })
    }
}

/// The seed writes `"maxTokens":"50"`; a JSON number is accepted too.
fn parse_max_tokens(v: &serde_json::Value) -> Result<u64, ConfigError> {
    let bad = |problem| ConfigError::Field {
        field: "request.maxTokens".into(),
        value: v.to_string(),
        problem,
    };
    let n = match v {
        serde_json::Value::String(s) => s
            .trim()
            .parse::<u64>()
            .map_err(|_| bad("must be a positive whole number"))?,
        serde_json::Value::Number(n) => n
            .as_u64()
            .ok_or_else(|| bad("must be a positive whole number"))?,
        _ => return Err(bad("must be a number or a string holding one")),
    };
    if n == 0 {
        return Err(bad("must be at least 1"));
    }
    Ok(n)
}

fn non_empty(field: &str, value: &str) -> Result<(), ConfigError> {
    if value.is_empty() {
        return Err(ConfigError::Field {
            field: field.into(),
            value: value.into(),
            problem: "must not be empty",
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_seeds_example_parses() {
        let p = Policy::parse(
            r#"{"request":{"maxTokens":"50","debug":false,"block":false,
                "modelReplace":[{"orig":"a","new":"b"}],
                "userPromptReplace":[{"orig":"joke","new":"fact","caseSensitive":false}],
                "devPromptReplace":[]},
              "response":{"debug":false,"bannedWords":["rabbit"]}}"#,
        )
        .unwrap();
        assert_eq!(p.max_tokens, Some(50));
        assert_eq!(p.model_replace, [("a".to_string(), "b".to_string())]);
        assert!(!p.user_prompt_replace[0].case_sensitive);
        assert_eq!(p.banned_words, ["rabbit"]);
        assert!(!p.block && !p.debug);
    }

    #[test]
    fn empty_and_partial_documents_are_fine() {
        assert_eq!(Policy::parse("").unwrap(), Policy::default());
        assert_eq!(Policy::parse("{}").unwrap(), Policy::default());
        let p = Policy::parse(r#"{"request":{"maxTokens":12}}"#).unwrap();
        assert_eq!(p.max_tokens, Some(12));
        assert_eq!(
            Policy::parse(r#"{"request":{"maxTokens":""}}"#)
                .unwrap()
                .max_tokens,
            None
        );
    }

    #[test]
    fn bad_values_name_the_field_and_value() {
        for (doc, field, value) in [
            (
                r#"{"request":{"maxTokens":"fifty"}}"#,
                "request.maxTokens",
                "fifty",
            ),
            (r#"{"request":{"maxTokens":0}}"#, "request.maxTokens", "0"),
            (r#"{"request":{"maxTokens":-3}}"#, "request.maxTokens", "-3"),
            (
                r#"{"request":{"userPromptReplace":[{"orig":"","new":"x"}]}}"#,
                "request.userPromptReplace[0].orig",
                "",
            ),
            (
                r#"{"request":{"modelReplace":[{"orig":"a","new":"b"},{"orig":"","new":"c"}]}}"#,
                "request.modelReplace[1].orig",
                "",
            ),
            (
                r#"{"response":{"bannedWords":["ok",""]}}"#,
                "response.bannedWords[1]",
                "",
            ),
        ] {
            let e = Policy::parse(doc).unwrap_err().to_string();
            assert!(e.contains(&format!("`{field}`")), "{doc}: {e}");
            assert!(e.contains(value), "{doc}: {e}");
        }
    }

    #[test]
    fn typos_are_refused_not_ignored() {
        let e = Policy::parse(r#"{"request":{"bannedWords":["x"]}}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown field `bannedWords`"), "{e}");
        let e = Policy::parse(
            r#"{"request":{"userPromptReplace":[{"orig":"a","new":"b","casesensitive":true}]}}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("casesensitive"), "{e}");
    }
}
