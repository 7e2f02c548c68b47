//! Looking at the product's pods as a user would, for `make demo` and the tests that install
//! it on real nodes: `kubectl rollout status`, the pods that are not ready or do not stop with
//! their last log lines, and `NMState` Available.

use crate::{LocalEnv, LocalEnvError, Result, daemon::run, testing::kubectl};
use k8s_openapi::api::core::v1::Pod;
use kube::{Api, Client};
use nmstate_api::NMState;
use std::{collections::BTreeMap, time::Duration};

/// Waits for `workload` (`deployment/NAME`, `daemonset/NAME`) in `namespace` to roll out, its
/// pods ready as the kubelet probes them; when it does not, the error says what its pods say.
pub fn rollout_status(env: &LocalEnv, namespace: &str, workload: &str, timeout: Duration) -> Result<()> {
    let timeout = format!("--timeout={}s", timeout.as_secs());
    run(kubectl(env).args(["rollout", "status", "-n", namespace, workload, &timeout]))
        .map(|_| ())
        .map_err(|error| LocalEnvError::Pods(format!("{error}\n{}", report(env, namespace))))
}

/// The pods of `namespace`, and for each one not ready why its container waits (an image it
/// cannot pull, a crash loop), and for each one stopping since when: each with its last log
/// lines, what a user would look at first.
pub fn report(env: &LocalEnv, namespace: &str) -> String {
    let mut report =
        run(kubectl(env).args(["get", "pods", "-n", namespace, "-o", "wide"])).unwrap_or_default();
    let pods_where = |template: &str| {
        run(kubectl(env).args([
            "get",
            "pods",
            "-n",
            namespace,
            "-o",
            &format!("jsonpath={template}"),
        ]))
        .unwrap_or_default()
    };
    // One line per pod not ready: its name, then why its first container waits, if it does.
    let not_ready = pods_where(
        r#"{range .items[?(@.status.containerStatuses[0].ready==false)]}{.metadata.name}{"\t"}{.status.containerStatuses[0].state.waiting.reason}{" "}{.status.containerStatuses[0].state.waiting.message}{"\n"}{end}"#,
    );
    // One line per pod being deleted: a container that does not stop holds it there.
    let stopping = pods_where(
        r#"{range .items[?(@.metadata.deletionTimestamp)]}{.metadata.name}{"\t"}stopping since {.metadata.deletionTimestamp}{"\n"}{end}"#,
    );
    // By pod, what is wrong with it: waiting, stopping, or both.
    let mut troubled: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for (lines, label) in [(&not_ready, "waiting: "), (&stopping, "")] {
        for line in lines.lines() {
            let (pod, why) = line.split_once('\t').unwrap_or((line, ""));
            let reasons = troubled.entry(pod).or_default();
            if !why.trim().is_empty() {
                reasons.push(format!("{label}{}", why.trim()));
            }
        }
    }
    for (pod, reasons) in troubled.into_iter().filter(|(pod, _)| !pod.is_empty()) {
        report.push_str(&format!("\n{pod}:"));
        if !reasons.is_empty() {
            report.push_str(&format!(" {}", reasons.join("; ")));
        }
        let logs = run(kubectl(env).args(["logs", "-n", namespace, pod, "--all-containers", "--tail=10"]))
            .or_else(|_| run(kubectl(env).args(["logs", "-n", namespace, pod, "--previous", "--tail=10"])));
        if let Ok(logs) = logs
            && !logs.trim().is_empty()
        {
            report.push_str(&format!("\nlast lines:\n{logs}"));
        }
    }
    report
}

/// True when the kubelet reports `pod` Ready (its readiness probes pass).
pub fn is_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|status| status.conditions.as_ref())
        .is_some_and(|conditions| {
            conditions
                .iter()
                .any(|condition| condition.type_ == "Ready" && condition.status == "True")
        })
}

/// `Some` once `NMState/nmstate` is Available: the operator's verdict on its operands' pods.
pub async fn nmstate_available(client: &Client) -> Option<()> {
    let nmstate = Api::<NMState>::all(client.clone())
        .get_opt("nmstate")
        .await
        .ok()??;
    let conditions = nmstate.status?.conditions;
    nmstate_api::condition::find_condition(&conditions, "Available")
        .is_some_and(nmstate_api::Condition::is_true)
        .then_some(())
}
