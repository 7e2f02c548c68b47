use super::*;
use crate::enactment::conditions::{EnactmentSituation, status_in as status};

fn failed() -> EnactmentSituation {
    EnactmentSituation::Failed {
        message: "broken".into(),
    }
}

fn retrying() -> EnactmentSituation {
    EnactmentSituation::Retrying {
        node: "node01".into(),
        attempt: 1,
        max: 3,
    }
}

#[test]
fn entry_decides_from_the_selector_the_generation_and_the_conditions() {
    let enact = |fresh, enacted| Entry::Enact { fresh, enacted };
    let available = || Some(EnactmentSituation::Succeeded { note: None });
    let previewed = || {
        Some(EnactmentSituation::Previewed {
            reason: nmstate_api::enactment::EnactmentConditionReason::NoChange,
            message: "the node already is in the desired state".into(),
        })
    };
    let aborted = || {
        Some(EnactmentSituation::Aborted {
            enactment: "node01.p".into(),
        })
    };
    // (selected, status, known applied by this process, expected)
    let cases = [
        (false, status(2, available()), true, Entry::Remove),
        (false, status(1, None), false, Entry::Remove),
        (
            true,
            NodeNetworkConfigurationEnactmentStatus::default(),
            false,
            enact(true, false),
        ),
        (true, status(1, available()), true, enact(true, false)),
        (true, status(2, None), false, enact(false, false)),
        (true, status(2, available()), true, Entry::Done),
        (true, status(2, available()), false, enact(false, true)),
        (true, status(2, Some(failed())), false, Entry::Done),
        (true, status(2, Some(retrying())), false, enact(false, false)),
        (true, status(2, aborted()), false, Entry::Done),
        (true, status(2, previewed()), false, Entry::Done),
        (true, status(1, previewed()), false, enact(true, false)),
        (
            true,
            status(2, Some(EnactmentSituation::Pending)),
            false,
            enact(false, false),
        ),
        (
            true,
            status(2, Some(EnactmentSituation::Progressing)),
            false,
            enact(false, false),
        ),
    ];
    for (index, (selected, status, known, expected)) in cases.into_iter().enumerate() {
        assert_eq!(entry(selected, 2, &status, known), expected, "case {index}");
    }
}

#[test]
fn before_apply_refuses_first_then_ignores_empty_then_follows_the_drift() {
    let findings = |refusal: Option<&str>, empty, drift, enacted| Findings {
        refusal: refusal.map(str::to_string),
        empty,
        drift,
        enacted,
        note: Some("note"),
        preview: false,
    };
    let pending = || Drift::Pending(serde_json::json!({"interfaces": [{"name": "br1"}]}));
    let cases = [
        (
            findings(Some("no bond"), true, Drift::InDesiredState, true),
            BeforeApply::Refuse {
                reason: "no bond".into(),
            },
        ),
        (findings(None, true, pending(), false), BeforeApply::IgnoreEmpty),
        (
            findings(None, false, Drift::InDesiredState, true),
            BeforeApply::StillApplied,
        ),
        (
            findings(None, false, Drift::InDesiredState, false),
            BeforeApply::AlreadyApplied { note: Some("note") },
        ),
        (
            findings(None, false, pending(), false),
            BeforeApply::Apply { drifted: false },
        ),
        (
            findings(None, false, pending(), true),
            BeforeApply::Apply { drifted: true },
        ),
        (
            findings(None, false, Drift::Unknown, true),
            BeforeApply::Apply { drifted: false },
        ),
    ];
    for (index, (findings, expected)) in cases.into_iter().enumerate() {
        assert_eq!(before_apply(&findings), expected, "case {index}");
    }
}

#[test]
fn a_preview_reports_the_refusal_or_the_drift_and_never_applies() {
    let diff = serde_json::json!({"interfaces": [{"name": "br1"}]});
    let preview = |refusal: Option<&str>, empty, drift, enacted| Findings {
        refusal: refusal.map(str::to_string),
        empty,
        drift,
        enacted,
        note: None,
        preview: true,
    };
    let cases = [
        (
            preview(Some("no bond"), false, Drift::Pending(diff.clone()), false),
            Preview::WouldFail {
                reason: "no bond".into(),
            },
        ),
        (
            preview(None, true, Drift::Pending(diff.clone()), false),
            Preview::NoChange,
        ),
        (
            preview(None, false, Drift::InDesiredState, true),
            Preview::NoChange,
        ),
        (
            preview(None, false, Drift::InDesiredState, false),
            Preview::NoChange,
        ),
        (
            preview(None, false, Drift::Pending(diff.clone()), true),
            Preview::WouldChange { diff: Some(diff) },
        ),
        (
            preview(None, false, Drift::Unknown, false),
            Preview::WouldChange { diff: None },
        ),
    ];
    for (index, (findings, expected)) in cases.into_iter().enumerate() {
        assert_eq!(
            before_apply(&findings),
            BeforeApply::Preview(expected),
            "case {index}"
        );
    }
}

#[test]
fn a_preview_says_what_it_would_change_by_interface_and_section() {
    use nmstate_api::enactment::EnactmentConditionReason as Reason;
    let diff = serde_json::json!({
        "interfaces": [{"name": "br1"}, {"name": "eth1"}],
        "routes": {"config": [{"destination": "0.0.0.0/0"}]},
        "dns-resolver": {},
        "route-rules": {"config": []},
    });
    assert_eq!(
        Preview::WouldChange { diff: Some(diff) }.condition(),
        (
            Reason::WouldChange,
            "would change interface br1, interface eth1, routes".into()
        )
    );
    assert_eq!(Preview::NoChange.condition().0, Reason::NoChange);
    let (reason, message) = Preview::WouldFail {
        reason: "no bond".into(),
    }
    .condition();
    assert_eq!(
        (reason, message.as_str()),
        (Reason::WouldFail, "would not be applied: no bond")
    );
}

#[test]
fn a_wait_is_reported_once_and_an_abort_is_final() {
    let wait = Admission::Wait {
        retry_after: Duration::from_secs(3),
    };
    let cases = [
        (Admission::Granted, false, OnAdmission::Apply),
        (
            wait.clone(),
            false,
            OnAdmission::Wait {
                retry_after: Duration::from_secs(3),
                report: true,
            },
        ),
        (
            wait,
            true,
            OnAdmission::Wait {
                retry_after: Duration::from_secs(3),
                report: false,
            },
        ),
        (Admission::Abort, true, OnAdmission::Abort),
    ];
    for (index, (admission, pending, expected)) in cases.into_iter().enumerate() {
        assert_eq!(on_admission(&admission, pending), expected, "case {index}");
    }
}

#[test]
fn after_apply_retries_with_backoff_until_the_retries_are_used_up() {
    let retries = Retries {
        max: 3,
        initial_backoff: Duration::from_secs(1),
        max_backoff: Duration::from_secs(30),
    };
    let failed = |permanent| Outcome::Failed { permanent };
    let cases = [
        (Outcome::Applied, 1, AfterApply::Succeeded { note: Some("note") }),
        (
            Outcome::LostSlot,
            2,
            AfterApply::Pending {
                retry_after: Duration::from_secs(1),
            },
        ),
        (
            failed(false),
            1,
            AfterApply::Retry {
                attempt: 1,
                after: Duration::from_secs(1),
            },
        ),
        (
            failed(false),
            2,
            AfterApply::Retry {
                attempt: 2,
                after: Duration::from_secs(2),
            },
        ),
        (
            failed(false),
            3,
            AfterApply::FailForGood {
                event: "reconciliation of enactment \"node01.p\" has failed after 3 retries".into(),
            },
        ),
        (
            failed(true),
            1,
            AfterApply::FailForGood {
                event: "reconciliation of enactment \"node01.p\" has failed with an error that retrying cannot heal"
                    .into(),
            },
        ),
    ];
    for (index, (outcome, attempt, expected)) in cases.into_iter().enumerate() {
        assert_eq!(
            after_apply(&outcome, attempt, &retries, "node01.p", Some("note")),
            expected,
            "case {index}"
        );
    }
}

#[test]
fn backoff_doubles_up_to_the_maximum() {
    let delays: Vec<u64> = (1..=7)
        .map(|attempt| backoff(attempt, Duration::from_secs(1), Duration::from_secs(30)).as_secs())
        .collect();
    assert_eq!(delays, [1, 2, 4, 8, 16, 30, 30]);
}
