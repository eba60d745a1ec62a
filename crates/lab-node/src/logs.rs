//! Container logs: each instance of a container writes stdout and stderr to
//! `<pod dir>/logs/<container>/<instance>.log`; the API's `pods/{name}/log` reaches them through
//! [`NodeLogs`] (current or `--previous` instance, `tailLines`, `limitBytes`, `follow`).

use crate::PodTable;
use crate::state::CState;
use crate::util::{arr, str_of};
use bytes::Bytes;
use futures::future::BoxFuture;
use lab_api::{LogRequest, PodLogError, PodLogs};
use serde_json::Value;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::sync::mpsc;

pub fn log_path(pod_dir: &Path, container: &str, instance: u32) -> PathBuf {
    pod_dir
        .join("logs")
        .join(container)
        .join(format!("{instance}.log"))
}

/// The node's side of `kubectl logs`.
#[derive(Clone)]
pub struct NodeLogs(pub(crate) PodTable);

fn tail(bytes: &[u8], lines: u64) -> &[u8] {
    let mut count = 0;
    let body = bytes.strip_suffix(b"\n").unwrap_or(bytes);
    for (i, b) in body.iter().enumerate().rev() {
        if *b == b'\n' {
            count += 1;
            if count == lines {
                return &bytes[i + 1..];
            }
        }
    }
    if lines == 0 { &[] } else { bytes }
}

impl PodLogs for NodeLogs {
    fn logs(
        &self,
        pod: Value,
        req: LogRequest,
    ) -> BoxFuture<'static, Result<mpsc::Receiver<Bytes>, PodLogError>> {
        let table = self.0.clone();
        Box::pin(async move {
            let name = str_of(&pod, "/metadata/name").to_string();
            let names = |list: &str| -> Vec<String> {
                arr(&pod, list)
                    .iter()
                    .filter_map(|c| c["name"].as_str().map(str::to_string))
                    .collect()
            };
            let (containers, inits, ephemeral) = (
                names("/spec/containers"),
                names("/spec/initContainers"),
                names("/spec/ephemeralContainers"),
            );
            let container = match (&req.container, containers.as_slice()) {
                (Some(c), _) => c.clone(),
                (None, [one]) => one.clone(),
                (None, _) => {
                    return Err(PodLogError::BadRequest(format!(
                        "a container name must be specified for pod {name}, choose one of: [{}] or one of the init containers: [{}]",
                        containers.join(" "),
                        inits.join(" ")
                    )));
                }
            };
            if ![&containers, &inits, &ephemeral]
                .iter()
                .any(|l| l.contains(&container))
            {
                return Err(PodLogError::BadRequest(format!(
                    "container {container} is not valid for pod {name}"
                )));
            }
            let uid = str_of(&pod, "/metadata/uid");
            let rt = crate::lock(&table.0).get(uid).cloned();
            let waiting = |reason: &str| {
                PodLogError::BadRequest(format!(
                    "container \"{container}\" in pod \"{name}\" is waiting to start: {reason}"
                ))
            };
            let Some(rt) = rt else {
                return Err(waiting("ContainerCreating"));
            };
            let (instance, running, state) = {
                let st = rt.lock();
                match st.find(&container) {
                    Some((_, c)) => (c.instance, c.running(), c.state.clone()),
                    None => return Err(waiting("ContainerCreating")),
                }
            };
            let instance = match (instance, req.previous) {
                (None, _) => {
                    let reason = match state {
                        CState::Waiting { reason, .. } => reason,
                        _ => "ContainerCreating".to_string(),
                    };
                    return Err(waiting(&reason));
                }
                (Some(0), true) => {
                    return Err(PodLogError::BadRequest(format!(
                        "previous terminated container \"{container}\" in pod \"{name}\" not found"
                    )));
                }
                (Some(n), true) => n - 1,
                (Some(n), false) => n,
            };
            let path = log_path(&rt.dir, &container, instance);
            let mut file = std::fs::File::open(&path)
                .map_err(|e| PodLogError::Internal(format!("{}: {e}", path.display())))?;
            let mut first = Vec::new();
            file.read_to_end(&mut first)
                .map_err(|e| PodLogError::Internal(e.to_string()))?;
            let mut offset = first.len() as u64;
            let mut chunk = match req.tail_lines {
                Some(n) => tail(&first, n).to_vec(),
                None => first,
            };
            let mut budget = req.limit_bytes.unwrap_or(u64::MAX);
            chunk.truncate(budget.min(chunk.len() as u64) as usize);
            budget -= chunk.len() as u64;
            let (tx, rx) = mpsc::channel(16);
            let follow = req.follow && !req.previous && running;
            let mut ticks = rt.ticks.subscribe();
            tokio::spawn(async move {
                if !chunk.is_empty() && tx.send(Bytes::from(chunk)).await.is_err() {
                    return;
                }
                if !follow {
                    return;
                }
                loop {
                    let still_running = {
                        let st = rt.lock();
                        st.find(&container)
                            .is_some_and(|(_, c)| c.running() && c.instance == Some(instance))
                    };
                    let mut more = Vec::new();
                    if file.seek(SeekFrom::Start(offset)).is_ok() {
                        let _ = (&mut file).take(budget).read_to_end(&mut more);
                    }
                    offset += more.len() as u64;
                    budget -= more.len() as u64;
                    if !more.is_empty() && tx.send(Bytes::from(more)).await.is_err() {
                        return;
                    }
                    if !still_running || budget == 0 {
                        return;
                    }
                    // New output is polled; a state change (the container ending) wakes at once.
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                        _ = ticks.changed() => {}
                        _ = tx.closed() => return,
                    }
                }
            });
            Ok(rx)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::tail;

    #[test]
    fn tail_lines() {
        assert_eq!(tail(b"a\nb\nc\n", 2), b"b\nc\n");
        assert_eq!(tail(b"a\nb\nc", 1), b"c");
        assert_eq!(tail(b"a\n", 5), b"a\n");
        assert_eq!(tail(b"a\nb\n", 0), b"");
    }
}
