//! Small helpers: shell quoting, JSON field access. (Time stamps: `lab_api::clock`.)

pub use lab_api::clock::now;
use serde_json::Value;

/// Quotes a word for `sh` (single quotes; `'` as `'\''`).
pub fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// A string field, "" when absent.
pub fn str_of<'a>(v: &'a Value, pointer: &str) -> &'a str {
    v.pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or_default()
}

/// The elements of an array field (none when absent).
pub fn arr<'a>(v: &'a Value, pointer: &str) -> &'a [Value] {
    v.pointer(pointer)
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default()
}

/// The absolute path of a host program (`ip`, `nsenter`, …) found on the node's own `PATH`,
/// looked up once; the bare name when it is not found (the spawn then fails as before).
///
/// Why: a command whose environment sets `PATH` (a container's does) and whose program is a
/// bare name is started by std with `fork` + `exec` instead of `posix_spawn` (which must not
/// search a `PATH` other than the parent's). `fork` copies the page tables of the node's whole
/// process on a runtime thread; with a hundred Pods, each starting containers and running exec
/// probes every second, those copies were the node's largest single cost. With an absolute
/// path std uses `posix_spawn` (`clone(CLONE_VM | CLONE_VFORK)`), which copies nothing.
pub fn host_program(name: &str) -> std::path::PathBuf {
    use std::collections::HashMap;
    use std::path::PathBuf;
    use std::sync::{Mutex, OnceLock};
    static FOUND: OnceLock<Mutex<HashMap<String, PathBuf>>> = OnceLock::new();
    let found = FOUND.get_or_init(Default::default);
    if let Some(p) = crate::lock(found).get(name) {
        return p.clone();
    }
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/sbin:/usr/bin:/sbin:/bin".into());
    let hit = std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_absolute() && is_executable(p));
    match hit {
        Some(p) => {
            crate::lock(found).insert(name.to_string(), p.clone());
            p
        }
        None => PathBuf::from(name),
    }
}

fn is_executable(p: &std::path::Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sh_quote_survives_quotes() {
        assert_eq!(sh_quote("a b"), "'a b'");
        assert_eq!(sh_quote("it's"), "'it'\\''s'");
    }

    #[test]
    fn host_programs_are_absolute_paths() {
        let ip = host_program("ip");
        assert!(ip.is_absolute() && ip.ends_with("ip"), "{ip:?}");
        assert_eq!(host_program("ip"), ip);
        let missing = host_program("no-such-program-here");
        assert_eq!(missing, std::path::PathBuf::from("no-such-program-here"));
    }
}
