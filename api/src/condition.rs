//! The condition shape shared by every nmstate.io kind, and the wire strings of condition
//! types and reasons.
//!
//! Upstream kubernetes-nmstate uses its own condition struct (with `lastHeartbeatTime`) rather
//! than `metav1.Condition`; tools such as `kubectl wait --for condition=Available` and dashboards
//! read it, so the shape is kept. `observedGeneration` is an additive, optional field.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Declares a closed set of wire strings as an enum with `as_str`, `Display` and `ALL`.
macro_rules! wire_strings {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident = $wire:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum $name { $($(#[$vmeta])* $variant),+ }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The string written to the API.
            pub const fn as_str(self) -> &'static str {
                match self { $($name::$variant => $wire),+ }
            }

            /// Parses a wire string; `None` for a value this version does not know.
            pub fn from_wire(value: &str) -> Option<Self> {
                Self::ALL.iter().copied().find(|known| known.as_str() == value)
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}
pub(crate) use wire_strings;

/// `True`, `False` or `Unknown`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum ConditionStatus {
    True,
    False,
    #[default]
    Unknown,
}

impl From<bool> for ConditionStatus {
    fn from(value: bool) -> Self {
        if value {
            ConditionStatus::True
        } else {
            ConditionStatus::False
        }
    }
}

/// One condition of an nmstate.io object.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// The condition type, e.g. `Available`.
    #[serde(rename = "type")]
    pub type_: String,
    pub status: ConditionStatus,
    /// A CamelCase reason, e.g. `SuccessfullyConfigured`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    /// Bumped every time the condition is written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_heartbeat_time: Option<Time>,
    /// Bumped only when `status` changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<Time>,
    /// The object generation this condition was computed for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

impl Condition {
    /// A condition with no times set; [`set_condition`] stamps them.
    pub fn new(
        type_: impl Into<String>,
        status: ConditionStatus,
        reason: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Condition {
            type_: type_.into(),
            status,
            reason: reason.into(),
            message: message.into(),
            ..Condition::default()
        }
    }

    pub fn is_true(&self) -> bool {
        self.status == ConditionStatus::True
    }
}

/// The condition of `type_`, if present.
pub fn find_condition<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|condition| condition.type_ == type_)
}

/// `current` updated to `wanted` ([`set_condition`] each), or `None` when nothing but the times
/// would change (so an object whose state stays put is not rewritten).
pub fn updated_conditions(
    current: &[Condition],
    wanted: Vec<Condition>,
    now: &Time,
) -> Option<Vec<Condition>> {
    let same = |want: &Condition| {
        find_condition(current, &want.type_).is_some_and(|have| {
            have.status == want.status
                && have.reason == want.reason
                && have.message == want.message
                && have.observed_generation == want.observed_generation
        })
    };
    if wanted.iter().all(same) {
        return None;
    }
    let mut conditions = current.to_vec();
    for condition in wanted {
        set_condition(&mut conditions, condition, now);
    }
    Some(conditions)
}

/// Writes `update` into `conditions` as upstream does: a missing type is appended; an existing
/// one takes the new status, reason, message and generation, keeps its `lastTransitionTime`
/// unless the status changed, and always gets `lastHeartbeatTime = now`.
pub fn set_condition(conditions: &mut Vec<Condition>, update: Condition, now: &Time) {
    match conditions
        .iter_mut()
        .find(|existing| existing.type_ == update.type_)
    {
        Some(existing) => {
            if existing.status != update.status || existing.last_transition_time.is_none() {
                existing.last_transition_time = Some(now.clone());
            }
            existing.status = update.status;
            existing.reason = update.reason;
            existing.message = update.message;
            existing.observed_generation = update.observed_generation;
            existing.last_heartbeat_time = Some(now.clone());
        }
        None => conditions.push(Condition {
            last_heartbeat_time: Some(now.clone()),
            last_transition_time: Some(now.clone()),
            ..update
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: i64) -> Time {
        Time(k8s_openapi::jiff::Timestamp::from_second(seconds).unwrap())
    }

    #[test]
    fn set_appends_a_missing_type_with_both_times() {
        let mut conditions = Vec::new();
        set_condition(
            &mut conditions,
            Condition::new("Available", ConditionStatus::True, "SuccessfullyConfigured", "ok"),
            &at(10),
        );
        assert_eq!(conditions.len(), 1);
        assert_eq!(conditions[0].last_heartbeat_time, Some(at(10)));
        assert_eq!(conditions[0].last_transition_time, Some(at(10)));
    }

    #[test]
    fn transition_time_moves_only_when_status_changes() {
        let mut conditions = Vec::new();
        let available = |status| Condition::new("Available", status, "R", "m");
        set_condition(&mut conditions, available(ConditionStatus::True), &at(10));
        set_condition(&mut conditions, available(ConditionStatus::True), &at(20));
        assert_eq!(conditions[0].last_transition_time, Some(at(10)));
        assert_eq!(conditions[0].last_heartbeat_time, Some(at(20)));

        set_condition(&mut conditions, available(ConditionStatus::False), &at(30));
        assert_eq!(conditions.len(), 1);
        assert_eq!(conditions[0].status, ConditionStatus::False);
        assert_eq!(conditions[0].last_transition_time, Some(at(30)));
    }

    #[test]
    fn optional_fields_are_omitted_on_the_wire() {
        let json = serde_json::to_value(Condition::new("Ignored", ConditionStatus::Unknown, "", "")).unwrap();
        assert_eq!(json, serde_json::json!({"type": "Ignored", "status": "Unknown"}));
    }
}
