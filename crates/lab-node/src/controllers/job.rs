//! Job: runs pods until `completions` have succeeded, `parallelism` at a time; more than
//! `backoffLimit` failed pods fail the Job (its running pods are deleted). Conditions as 1.33
//! writes them: SuccessCriteriaMet then Complete, FailureTarget then Failed. Not done: the
//! exponential delay before a failed pod is replaced, Indexed completion, podFailurePolicy,
//! activeDeadlineSeconds, `suspend` resuming with a new start time.

use super::{Action, Kind, World, active, deleting, int, pod_from_template, ready, set_condition};
use crate::util::str_of;
use serde_json::{Value, json};

fn condition_true(j: &Value, ty: &str) -> bool {
    j["status"]["conditions"]
        .as_array()
        .is_some_and(|l| l.iter().any(|c| c["type"] == ty && c["status"] == "True"))
}

pub fn plan(world: &World, j: &Value) -> Vec<Action> {
    if deleting(j) {
        return Vec::new();
    }
    let ns = str_of(j, "/metadata/namespace");
    let name = str_of(j, "/metadata/name");
    let uid = str_of(j, "/metadata/uid");
    let spec = &j["spec"];
    let now = lab_api::clock::rfc3339(world.now);
    let pods: Vec<&Value> = world.owned(Kind::Pod, j).collect();
    let running: Vec<&&Value> = pods.iter().filter(|p| active(p)).collect();
    let succeeded = pods
        .iter()
        .filter(|p| str_of(p, "/status/phase") == "Succeeded")
        .count() as i64;
    let failed = pods
        .iter()
        .filter(|p| str_of(p, "/status/phase") == "Failed")
        .count() as i64;
    let completions = spec["completions"].as_i64();
    let parallelism = int(&spec["parallelism"], 1).max(0);
    let backoff = int(&spec["backoffLimit"], 6);
    let suspended = spec["suspend"] == true;
    let finished = condition_true(j, "Complete") || condition_true(j, "Failed");
    let mut out = Vec::new();
    let mut conds = j["status"]["conditions"].clone();
    let mut completion_time = j["status"]["completionTime"].clone();
    let del = |p: &Value| Action::Delete {
        kind: Kind::Pod,
        ns: ns.to_string(),
        name: str_of(p, "/metadata/name").to_string(),
        uid: str_of(p, "/metadata/uid").to_string(),
        propagation: None,
    };
    let done = match completions {
        Some(c) => succeeded >= c,
        // A work queue: done once one has succeeded and none is running.
        None => succeeded > 0 && running.is_empty(),
    };
    if finished {
        // Nothing runs any more.
    } else if failed > backoff {
        let msg = "Job has reached the specified backoff limit";
        conds = set_condition(
            &conds,
            "FailureTarget",
            "True",
            "BackoffLimitExceeded",
            msg,
            &now,
        );
        conds = set_condition(&conds, "Failed", "True", "BackoffLimitExceeded", msg, &now);
        out.extend(running.iter().filter(|p| !deleting(p)).map(|p| del(p)));
    } else if done {
        let msg = "Reached expected number of succeeded pods";
        conds = set_condition(
            &conds,
            "SuccessCriteriaMet",
            "True",
            "CompletionsReached",
            msg,
            &now,
        );
        conds = set_condition(&conds, "Complete", "True", "CompletionsReached", msg, &now);
        completion_time = json!(now);
        out.extend(running.iter().filter(|p| !deleting(p)).map(|p| del(p)));
    } else if suspended {
        conds = set_condition(
            &conds,
            "Suspended",
            "True",
            "JobSuspended",
            "Job suspended",
            &now,
        );
        out.extend(running.iter().filter(|p| !deleting(p)).map(|p| del(p)));
    } else {
        let remaining = completions.map_or(parallelism, |c| c - succeeded);
        let want = parallelism.min(remaining).max(0);
        for _ in (running.len() as i64)..want {
            out.push(Action::Create {
                kind: Kind::Pod,
                ns: ns.to_string(),
                obj: pod_from_template(
                    Kind::Job,
                    j,
                    &spec["template"],
                    None,
                    &[
                        ("batch.kubernetes.io/controller-uid", uid.to_string()),
                        ("batch.kubernetes.io/job-name", name.to_string()),
                        ("controller-uid", uid.to_string()),
                        ("job-name", name.to_string()),
                    ],
                ),
            });
        }
    }
    let mut status = json!({
        "active": running.len(),
        "succeeded": succeeded,
        "failed": failed,
        "ready": running.iter().filter(|p| ready(p)).count(),
        "terminating": pods.iter().filter(|p| deleting(p)).count(),
        "uncountedTerminatedPods": {},
        "startTime": if j["status"]["startTime"].is_string() { j["status"]["startTime"].clone() } else { json!(now) },
    });
    if !conds.is_null() {
        status["conditions"] = conds;
    }
    if completion_time.is_string() {
        status["completionTime"] = completion_time;
    }
    out.extend(super::status_if_changed(Kind::Job, j, status));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controllers::tests_support::*;

    fn job(completions: i64, parallelism: i64, backoff: i64) -> Value {
        obj(
            "Job",
            "batch",
            "j1",
            json!({"completions": completions, "parallelism": parallelism, "backoffLimit": backoff,
            "template": {"spec": {"restartPolicy": "Never", "containers": []}}}),
        )
    }

    fn finished(name: &str, phase: &str) -> Value {
        let mut p = pod(name, "j1", false, "t");
        p["status"]["phase"] = json!(phase);
        p
    }

    fn creates(acts: &[Action]) -> usize {
        acts.iter()
            .filter(|a| matches!(a, Action::Create { .. }))
            .count()
    }

    fn conditions(acts: &[Action]) -> Vec<String> {
        acts.iter()
            .filter_map(|a| match a {
                Action::Status { status, .. } => status["conditions"].as_array().cloned(),
                _ => None,
            })
            .flatten()
            .map(|c| c["type"].as_str().unwrap().to_string())
            .collect()
    }

    #[test]
    fn parallelism_bounds_running_pods_until_completions() {
        let j = job(3, 2, 6);
        let mut w = world(vec![(Kind::Job, vec![j.clone()])]);
        assert_eq!(creates(&plan(&w, &j)), 2);
        w.objects.insert(
            Kind::Pod,
            vec![
                finished("a", "Succeeded"),
                finished("b", "Succeeded"),
                pod("c", "j1", true, "t"),
            ],
        );
        assert_eq!(creates(&plan(&w, &j)), 0);
        w.objects.insert(
            Kind::Pod,
            vec![
                finished("a", "Succeeded"),
                finished("b", "Succeeded"),
                finished("c", "Succeeded"),
            ],
        );
        assert_eq!(
            conditions(&plan(&w, &j)),
            ["SuccessCriteriaMet", "Complete"]
        );
    }

    #[test]
    fn more_failures_than_the_backoff_limit_fail_it() {
        let j = job(1, 1, 1);
        let w = world(vec![
            (Kind::Job, vec![j.clone()]),
            (
                Kind::Pod,
                vec![finished("a", "Failed"), finished("b", "Failed")],
            ),
        ]);
        let acts = plan(&w, &j);
        assert_eq!(creates(&acts), 0);
        assert_eq!(conditions(&acts), ["FailureTarget", "Failed"]);
        let w = world(vec![
            (Kind::Job, vec![j.clone()]),
            (Kind::Pod, vec![finished("a", "Failed")]),
        ]);
        assert_eq!(
            creates(&plan(&w, &j)),
            1,
            "one failure within the limit is replaced"
        );
    }
}
