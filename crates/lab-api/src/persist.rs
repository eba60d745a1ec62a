//! The `--data-dir` store: a snapshot plus an append-only log of changes, each fsynced before the
//! change is acknowledged. A crash can only tear the log's last line, which loading drops; a
//! snapshot is replaced by rename, so it is always whole.

use crate::store::Key;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum PersistError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path}: not a lab-api snapshot: {source}")]
    Corrupt {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

/// One change: the object after it, or `None` for a deletion.
#[derive(Serialize, Deserialize)]
pub struct Record {
    pub rv: u64,
    pub key: Key,
    pub object: Option<Value>,
}

#[derive(Serialize, Deserialize)]
struct Snapshot {
    rv: u64,
    objects: Vec<(Key, Value)>,
}

/// Log length after which the log is folded into a new snapshot.
const COMPACT_AFTER: usize = 5_000;

pub struct Persist {
    dir: PathBuf,
    log: File,
    entries: usize,
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> PersistError + '_ {
    move |source| PersistError::Io {
        path: path.to_path_buf(),
        source,
    }
}

type Loaded = (Persist, Vec<(Key, Value)>, u64);

impl Persist {
    /// Loads the directory's state and opens its log for appending.
    pub fn open(dir: &Path) -> Result<Loaded, PersistError> {
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        let snap_path = dir.join("snapshot.json");
        let mut rv = 0;
        let mut objects = std::collections::BTreeMap::new();
        match fs::read(&snap_path) {
            Ok(bytes) => {
                let snap: Snapshot =
                    serde_json::from_slice(&bytes).map_err(|source| PersistError::Corrupt {
                        path: snap_path.clone(),
                        source,
                    })?;
                rv = snap.rv;
                objects.extend(snap.objects);
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(&snap_path)(e)),
        }
        let snap_rv = rv;
        let log_path = dir.join("changes.log");
        let mut good_len = 0u64;
        let mut entries = 0;
        if let Ok(f) = File::open(&log_path) {
            let mut reader = BufReader::new(f);
            let mut line = String::new();
            loop {
                line.clear();
                let n = reader.read_line(&mut line).map_err(io_err(&log_path))?;
                if n == 0 || !line.ends_with('\n') {
                    break;
                }
                let Ok(rec) = serde_json::from_str::<Record>(&line) else {
                    tracing::warn!(path = %log_path.display(), "dropping a torn record at the end of the log");
                    break;
                };
                good_len += n as u64;
                entries += 1;
                // Already folded into the snapshot (a crash between rename and truncate).
                if rec.rv <= snap_rv {
                    continue;
                }
                rv = rv.max(rec.rv);
                match rec.object {
                    Some(o) => objects.insert(rec.key, o),
                    None => objects.remove(&rec.key),
                };
            }
        }
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&log_path)
            .map_err(io_err(&log_path))?;
        log.set_len(good_len).map_err(io_err(&log_path))?;
        Ok((
            Persist {
                dir: dir.to_path_buf(),
                log,
                entries,
            },
            objects.into_iter().collect(),
            rv,
        ))
    }

    pub fn append(&mut self, rec: &Record) -> Result<(), PersistError> {
        let path = self.dir.join("changes.log");
        let mut line = serde_json::to_vec(rec).expect("JSON values always serialize");
        line.push(b'\n');
        self.log.write_all(&line).map_err(io_err(&path))?;
        self.log.sync_data().map_err(io_err(&path))?;
        self.entries += 1;
        Ok(())
    }

    pub fn wants_compaction(&self) -> bool {
        self.entries >= COMPACT_AFTER
    }

    /// Writes a new snapshot whole (see [`atomic_file`]), then empties the log.
    pub fn compact(&mut self, rv: u64, objects: &[(Key, Value)]) -> Result<(), PersistError> {
        let dst = self.dir.join("snapshot.json");
        let bytes = serde_json::to_vec(&Snapshot {
            rv,
            objects: objects.to_vec(),
        })
        .expect("JSON values always serialize");
        // Secrets are among the objects: readable by root alone.
        atomic_file::write(&dst, bytes, 0o600).map_err(io_err(&dst))?;
        self.log.set_len(0).map_err(io_err(&dst))?;
        self.log.sync_all().map_err(io_err(&dst))?;
        self.entries = 0;
        Ok(())
    }
}
