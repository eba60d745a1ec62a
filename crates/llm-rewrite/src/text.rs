//! Search and replace on prompt and response text. Case-insensitive matching folds each
//! character to its first lowercase form (enough for words; no locale rules).

use crate::config::Replace;

fn fold(c: char) -> char {
    c.to_lowercase().next().unwrap_or(c)
}

/// Char positions where `needle` starts in `hay`, non-overlapping, left to right.
fn find_all(hay: &[char], needle: &[char], case_sensitive: bool) -> Vec<usize> {
    let eq = |a: char, b: char| {
        if case_sensitive {
            a == b
        } else {
            fold(a) == fold(b)
        }
    };
    let mut at = Vec::new();
    let mut i = 0;
    while !needle.is_empty() && i + needle.len() <= hay.len() {
        if hay[i..i + needle.len()]
            .iter()
            .zip(needle)
            .all(|(a, b)| eq(*a, *b))
        {
            at.push(i);
            i += needle.len();
        } else {
            i += 1;
        }
    }
    at
}

/// Applies every rule in order; returns `None` when nothing matched.
pub fn replace_all(text: &str, rules: &[Replace]) -> Option<String> {
    let mut out = text.to_string();
    let mut changed = false;
    for r in rules {
        let hay: Vec<char> = out.chars().collect();
        let needle: Vec<char> = r.orig.chars().collect();
        let hits = find_all(&hay, &needle, r.case_sensitive);
        if hits.is_empty() {
            continue;
        }
        changed = true;
        let mut next = String::with_capacity(out.len());
        let mut pos = 0;
        for h in hits {
            next.extend(&hay[pos..h]);
            next.push_str(&r.new);
            pos = h + needle.len();
        }
        next.extend(&hay[pos..]);
        out = next;
    }
    changed.then_some(out)
}

/// Masks every banned word with one `*` per character, case-insensitively.
pub fn mask(text: &str, banned: &[String]) -> Option<String> {
    let mut chars: Vec<char> = text.chars().collect();
    let mut changed = false;
    for w in banned {
        let needle: Vec<char> = w.chars().collect();
        for h in find_all(&chars, &needle, false) {
            chars[h..h + needle.len()].fill('*');
            changed = true;
        }
    }
    changed.then(|| chars.into_iter().collect())
}

/// The longest banned word in characters: a streamed response holds back one less than this,
/// so a word split across chunks is still seen whole.
pub fn longest(banned: &[String]) -> usize {
    banned.iter().map(|w| w.chars().count()).max().unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(orig: &str, new: &str, cs: bool) -> Replace {
        Replace {
            orig: orig.into(),
            new: new.into(),
            case_sensitive: cs,
        }
    }

    #[test]
    fn case_sensitivity_is_honoured() {
        let r = [rule("joke", "fact", false)];
        assert_eq!(
            replace_all("Tell a JOKE, a joke", &r).unwrap(),
            "Tell a fact, a fact"
        );
        let r = [rule("joke", "fact", true)];
        assert_eq!(
            replace_all("Tell a JOKE, a joke", &r).unwrap(),
            "Tell a JOKE, a fact"
        );
        assert_eq!(replace_all("nothing here", &r), None);
    }

    #[test]
    fn rules_apply_in_order_and_multibyte_text_survives() {
        let r = [rule("ä", "ae", false), rule("AE", "[x]", true)];
        assert_eq!(replace_all("Ä ä é", &r).unwrap(), "ae ae é");
        assert_eq!(
            mask("Der Hase, der HASE. 🐇hase", &["hase".into()]).unwrap(),
            "Der ****, der ****. 🐇****"
        );
    }
}
