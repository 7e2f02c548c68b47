//! The NodeNetworkState's own conditions (pure): an unsupported NetworkManager, a trimmed
//! report.

use k8s_openapi::{apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};
use nmstate_api::{
    Condition, ConditionStatus,
    condition::{find_condition, set_condition},
    state::{NodeStateConditionReason, NodeStateConditionType, StateTrimming},
};

/// The node state's conditions: `Failing` and `Available` when no policy is applied on the node
/// (`unsupported` says why; upstream writes none otherwise), and `Trimmed` while the report is
/// trimmed. `None` when `current` already says all that.
pub fn report_conditions(
    unsupported: Option<&str>,
    trimming: Option<&StateTrimming>,
    current: &[Condition],
) -> Option<Vec<Condition>> {
    let unsupported_reason = NodeStateConditionReason::UnsupportedNetworkManager.as_str();
    let mut wanted = Vec::new();
    if let Some(reason) = unsupported {
        wanted.push(Condition::new(
            NodeStateConditionType::Failing.as_str(),
            ConditionStatus::True,
            unsupported_reason,
            reason,
        ));
        wanted.push(Condition::new(
            NodeStateConditionType::Available.as_str(),
            ConditionStatus::False,
            unsupported_reason,
            "",
        ));
    }
    if let Some(trimming) = trimming {
        wanted.push(Condition::new(
            NodeStateConditionType::Trimmed.as_str(),
            ConditionStatus::True,
            NodeStateConditionReason::StateAboveSizeCap.as_str(),
            trimmed_message(trimming),
        ));
    }
    let trimmed = NodeStateConditionType::Trimmed.as_str();
    let stale_trimmed = trimming.is_none() && find_condition(current, trimmed).is_some();
    let already = wanted.iter().all(|wanted| {
        find_condition(current, &wanted.type_).is_some_and(|c| {
            c.status == wanted.status && c.reason == wanted.reason && c.message == wanted.message
        })
    });
    if already && !stale_trimmed {
        return None;
    }
    let mut conditions = current.to_vec();
    if stale_trimmed {
        conditions.retain(|condition| condition.type_ != trimmed);
    }
    let now = Time(Timestamp::now());
    for condition in wanted {
        set_condition(&mut conditions, condition, &now);
    }
    Some(conditions)
}

/// What the `Trimmed` condition and the handler's log say: what was left out, and what to do.
pub fn trimmed_message(trimming: &StateTrimming) -> String {
    format!(
        "the node's network state takes {} bytes, above the cap of {} (NMState \
         spec.stateReporting.maxBytes), so {} bytes are reported: {} interfaces without details, \
         {} by name, type and state only, {} left out, and {} running routes left out; leave out \
         interfaces you do not need (spec.stateReporting.excludeInterfaces, excludeTypes) or \
         raise the cap",
        trimming.state_bytes,
        trimming.max_bytes,
        trimming.reported_bytes,
        trimming.interfaces_without_details,
        trimming.interfaces_summarized,
        trimming.interfaces_omitted,
        trimming.running_routes_omitted,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unsupported_network_manager_is_reported_once_as_conditions() {
        let reason =
            "NetworkManager 1.20.0 is older than 1.22.0, the oldest version kubernetes-nmstate supports";
        let conditions = report_conditions(Some(reason), None, &[]).unwrap();
        let failing = find_condition(&conditions, "Failing").unwrap();
        assert!(failing.is_true());
        assert_eq!(
            (failing.reason.as_str(), failing.message.as_str()),
            ("UnsupportedNetworkManager", reason)
        );
        assert_eq!(
            find_condition(&conditions, "Available").unwrap().status,
            ConditionStatus::False
        );
        assert_eq!(
            report_conditions(Some(reason), None, &conditions),
            None,
            "no rewrite when already reported"
        );
        assert_eq!(
            report_conditions(None, None, &[]),
            None,
            "nothing when policies are applied"
        );
    }

    #[test]
    fn a_trimmed_report_says_so_until_it_fits_again() {
        let trimming = StateTrimming {
            max_bytes: 131_072,
            state_bytes: 277_174,
            reported_bytes: 130_001,
            interfaces_without_details: 600,
            interfaces_summarized: 80,
            ..StateTrimming::default()
        };
        let conditions = report_conditions(None, Some(&trimming), &[]).unwrap();
        let trimmed = find_condition(&conditions, "Trimmed").unwrap();
        assert!(trimmed.is_true());
        assert_eq!(trimmed.reason, "StateAboveSizeCap");
        assert!(
            trimmed.message.starts_with(
                "the node's network state takes 277174 bytes, above the cap of 131072 (NMState \
                 spec.stateReporting.maxBytes), so 130001 bytes are reported: 600 interfaces without \
                 details, 80 by name, type and state only, 0 left out"
            ),
            "{}",
            trimmed.message
        );
        assert_eq!(report_conditions(None, Some(&trimming), &conditions), None);
        let grown = StateTrimming {
            state_bytes: 300_000,
            ..trimming.clone()
        };
        assert!(
            report_conditions(None, Some(&grown), &conditions).is_some(),
            "the message follows the state"
        );

        let reason = "NetworkManager 1.20.0 is older than 1.22.0";
        let both = report_conditions(Some(reason), None, &conditions).unwrap();
        let types: Vec<&str> = both.iter().map(|c| c.type_.as_str()).collect();
        assert_eq!(
            types,
            ["Failing", "Available"],
            "Trimmed goes once the state fits"
        );
        assert_eq!(report_conditions(Some(reason), None, &both), None);
    }
}
