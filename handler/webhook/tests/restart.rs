//! The webhook restarted during a burst of `kubectl apply`, once stopped (SIGTERM, as a pod's
//! deletion does) and once killed (SIGKILL, a crash or a node lost): with `failurePolicy: Fail`
//! every apply either succeeds or fails naming the webhook, no invalid policy is ever
//! admitted, and every policy kubectl reported as applied is in the API.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: failing loudly is the point

#[path = "webhook/fixture.rs"]
mod fixture;

use fixture::Fixture;
use serde_json::{Value, json};
use std::{
    collections::BTreeMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

/// Applies at once, each in a loop.
const WORKERS: usize = 3;
/// How long the burst goes on before, between and after the restarts.
const BETWEEN: Duration = Duration::from_millis(1500);
/// How long the webhook stays down, as a pod being replaced does (at least).
const DOWN_FOR: Duration = Duration::from_millis(700);

/// One `kubectl apply` and what it said.
struct Outcome {
    name: String,
    valid: bool,
    result: Result<String, String>,
}

fn spec(valid: bool, name: &str) -> Value {
    if valid {
        json!({"desiredState": {"interfaces": [{"name": name, "type": "linux-bridge", "state": "up"}]}})
    } else {
        // An unknown key in desiredState: the CRD keeps desiredState open, so only the
        // webhook refuses it.
        json!({"desiredState": {"interface": []}})
    }
}

#[tokio::test]
async fn a_restart_during_a_burst_admits_nothing_invalid() {
    let mut fixture = Fixture::start(&[]).await;
    let outcomes = Arc::new(Mutex::new(Vec::<Outcome>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let policies: Vec<(String, Value)> = (0..WORKERS * 400)
        .map(|index| {
            let valid = index % 2 == 0;
            let suffix = format!("{}{index}", if valid { "ok" } else { "bad" });
            (
                suffix.clone(),
                fixture.policy(&suffix, spec(valid, &format!("br{index}"))),
            )
        })
        .collect();
    let policies = Arc::new(policies);
    let env = fixture.env.clone();
    let workers: Vec<_> = (0..WORKERS)
        .map(|worker| {
            let (outcomes, stop, policies, env) =
                (outcomes.clone(), stop.clone(), policies.clone(), env.clone());
            std::thread::spawn(move || {
                for (suffix, policy) in policies.iter().skip(worker).step_by(WORKERS) {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let result = nmstate_localenv::testing::kubectl_apply(&env, policy);
                    let valid = suffix.starts_with("ok");
                    outcomes.lock().unwrap().push(Outcome {
                        name: policy["metadata"]["name"].as_str().unwrap().to_string(),
                        valid,
                        result,
                    });
                }
            })
        })
        .collect();

    let mut outages = Vec::new();
    for how in ["SIGTERM", "SIGKILL"] {
        tokio::time::sleep(BETWEEN).await;
        let down = Instant::now();
        let mut webhook = fixture.webhook.take().unwrap();
        match how {
            "SIGTERM" => drop(webhook.terminate(Duration::from_secs(15))),
            _ => webhook.kill(),
        }
        tokio::time::sleep(DOWN_FOR).await;
        fixture.start_webhook();
        fixture.wait_until_admitting().await;
        outages.push((how, down.elapsed()));
    }
    tokio::time::sleep(BETWEEN).await;
    stop.store(true, Ordering::Relaxed);
    for worker in workers {
        worker.join().unwrap();
    }

    let outcomes = std::mem::take(&mut *outcomes.lock().unwrap());
    let mut counts = BTreeMap::<&str, usize>::new();
    let mut example = None;
    for outcome in &outcomes {
        let what = match (&outcome.result, outcome.valid) {
            (Ok(_), true) => "valid, applied",
            (Ok(output), false) => panic!("{} is invalid and was admitted: {output}", outcome.name),
            (Err(error), _) if error.contains(fixture::UNREACHABLE) => {
                example.get_or_insert(error);
                "failed naming the webhook"
            }
            (Err(error), false)
                if error.contains("denied the request: invalid spec.desiredState.interface") =>
            {
                "invalid, refused"
            }
            (Err(error), _) => panic!(
                "{}: neither applied nor refused by the webhook: {error}",
                outcome.name
            ),
        };
        *counts.entry(what).or_default() += 1;
    }
    println!(
        "{} applies: {counts:?}; stopped, then admitting again after: {outages:?}; for example: {example:?}",
        outcomes.len()
    );
    assert!(
        counts
            .get("failed naming the webhook")
            .is_some_and(|failed| *failed > 0),
        "no apply met a restart: {counts:?}"
    );
    assert!(
        counts.get("valid, applied").is_some_and(|applied| *applied > 10)
            && counts
                .get("invalid, refused")
                .is_some_and(|refused| *refused > 10),
        "too few applies went through the webhook: {counts:?}"
    );

    // What the API holds: every policy kubectl said it applied, and nothing invalid.
    let stored: Vec<String> = fixture
        .policies()
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|policy| policy.metadata.name)
        .filter(|name| name.starts_with(&format!("{}-", fixture.id)))
        .collect();
    for outcome in &outcomes {
        let is_stored = stored.contains(&outcome.name);
        match (&outcome.result, outcome.valid) {
            (Ok(_), _) => assert!(is_stored, "{} was applied but is not stored", outcome.name),
            (Err(_), false) => assert!(!is_stored, "{} is invalid and is stored", outcome.name),
            (Err(_), true) => {}
        }
    }
    assert!(
        fixture.webhook.as_ref().unwrap().log().find("panicked").is_none(),
        "{}",
        fixture.log()
    );
}
