//! Files replaced whole.
//!
//! Every file ghostwire hands to someone else (a kubeconfig, a CA key, a Pod's
//! `/etc/resolv.conf`, the switch's DNAT map, the lab API's snapshot) is written beside its
//! destination, flushed to disk, and renamed over it. A reader sees the old content or the new
//! one, a crash leaves the old one, and a secret is never readable by others, not even for the
//! moment between creating and `chmod`: the mode is set when the file is created.

use std::fs::{File, OpenOptions, Permissions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Writes `bytes` to `dest` with permission bits `mode`, replacing any file there in one step.
/// The parent directory must exist: a missing one is usually a missing mount, and creating it
/// would hide that.
pub fn write(dest: &Path, bytes: impl AsRef<[u8]>, mode: u32) -> io::Result<()> {
    Staged::write(dest, bytes, mode)?.commit()
}

/// A file written and flushed beside its destination, not yet in place. [`Staged::commit`]
/// renames it over the destination; dropped without a commit, it is removed. Staging several
/// files before committing any lets a caller fail before changing anything.
#[derive(Debug)]
pub struct Staged {
    tmp: PathBuf,
    dest: PathBuf,
    committed: bool,
}

impl Staged {
    /// Writes and flushes the staged copy of `dest`.
    pub fn write(dest: &Path, bytes: impl AsRef<[u8]>, mode: u32) -> io::Result<Staged> {
        let (tmp, mut file) = create_staging(dest, mode)?;
        let staged = Staged {
            tmp,
            dest: dest.to_path_buf(),
            committed: false,
        };
        // Created with `mode` less the umask, never more open than asked; now exactly `mode`,
        // as a volume's `defaultMode` means.
        file.set_permissions(Permissions::from_mode(mode))?;
        file.write_all(bytes.as_ref())?;
        file.sync_all()?;
        Ok(staged)
    }

    /// Renames the staged copy over the destination, and makes the rename durable.
    pub fn commit(mut self) -> io::Result<()> {
        std::fs::rename(&self.tmp, &self.dest)?;
        self.committed = true;
        File::open(parent(&self.dest))?.sync_all()
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        if !self.committed {
            // Nothing to report to: the caller has its error already, or chose not to commit.
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

fn parent(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Creates a new file under a hidden name beside `dest`, unique to this process and call, so
/// that two writers (threads or processes) never share one. A name already taken (left by a
/// crashed process of the same pid, or planted) is passed over, never opened: a link there is
/// not followed.
fn create_staging(dest: &Path, mode: u32) -> io::Result<(PathBuf, File)> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let name = dest.file_name().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} names no file", dest.display()),
        )
    })?;
    let mut tries = 0;
    loop {
        let tmp = dest.with_file_name(format!(
            ".{}.{}.{}.tmp",
            name.to_string_lossy(),
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)
        {
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && tries < 16 => tries += 1,
            other => return other.map(|f| (tmp, f)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("gw-atomic-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn a_write_replaces_the_file_whole_with_its_mode_and_leaves_nothing_beside_it() {
        let dir = scratch("replace");
        let dest = dir.join("ca.key");
        std::fs::write(&dest, "old\n").unwrap();
        write(&dest, "new\n", 0o600).unwrap();
        assert_eq!(std::fs::read_to_string(&dest).unwrap(), "new\n");
        let mode = std::fs::metadata(&dest).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "mode {mode:o}");
        assert_eq!(names(&dir), ["ca.key"]);
        // Exactly the mode asked for, whatever the umask takes away (022 here, usually).
        write(&dest, "shared\n", 0o666).unwrap();
        let mode = std::fs::metadata(&dest).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o666, "mode {mode:o}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_staged_file_changes_nothing_until_committed_and_is_removed_when_dropped() {
        let dir = scratch("staged");
        let dest = dir.join("dnat.map");
        std::fs::write(&dest, "old\n").unwrap();
        let staged = Staged::write(&dest, "new\n", 0o644).unwrap();
        assert_eq!(std::fs::read_to_string(&dest).unwrap(), "old\n");
        assert_eq!(names(&dir).len(), 2, "the staged copy sits beside it");
        drop(staged);
        assert_eq!(std::fs::read_to_string(&dest).unwrap(), "old\n");
        assert_eq!(names(&dir), ["dnat.map"]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_failed_write_leaves_the_old_file_and_no_staging_file() {
        let dir = scratch("fail");
        // The destination is a non-empty directory: the rename fails after the copy is written.
        let dest = dir.join("busy");
        std::fs::create_dir_all(dest.join("inside")).unwrap();
        assert!(write(&dest, "x", 0o644).is_err());
        assert_eq!(names(&dir), ["busy"]);
        assert!(write(&dir.join("missing/file"), "x", 0o644).is_err());
        assert!(write(Path::new("/"), "x", 0o644).is_err(), "no file name");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_link_at_a_staging_name_is_not_followed() {
        let dir = scratch("link");
        let victim = dir.join("victim");
        std::fs::write(&victim, "keep\n").unwrap();
        let dest = dir.join("out");
        // Links at every name this process may stage under next (the other tests of this
        // process take a few): each is passed over, and the write gives up rather than follow.
        for n in 0..64 {
            let at = dir.join(format!(".out.{}.{n}.tmp", std::process::id()));
            std::os::unix::fs::symlink(&victim, at).unwrap();
        }
        let err = write(&dest, "x", 0o644).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep\n");
        assert!(!dest.exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
