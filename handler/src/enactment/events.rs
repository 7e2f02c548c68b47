//! What the handler's Warning events on a policy say, as upstream words them: reason
//! `ReconcileFailed` when its enactment on this node gives up, reported by
//! `<node>.nmstate-handler`. [`crate::events`] records them.

/// Upstream's reporting component of a node's handler.
pub fn component(node: &str) -> String {
    format!("{node}.nmstate-handler")
}

/// The event's `action` while applying a policy, and while waiting for a slot in its rollout.
pub const APPLY: &str = "Apply";
pub const ROLLOUT: &str = "Rollout";

/// The policy's enactment on this node gave up.
pub const RECONCILE_FAILED: &str = "ReconcileFailed";
/// A Normal event: the policy waits on this node for a policy it depends on.
pub const WAITING_FOR_DEPENDENCY: &str = "WaitingForDependency";
/// A policy's `maxUnavailable` cannot be read; the default is used.
pub const INVALID_MAX_UNAVAILABLE: &str = "InvalidMaxUnavailable";

/// Upstream's message when the retries are used up.
pub fn failed_after_retries(enactment: &str, retries: u32) -> String {
    format!("reconciliation of enactment \"{enactment}\" has failed after {retries} retries")
}

/// Our message for an error that retrying cannot heal, so none was made.
pub fn failed_without_retries(enactment: &str) -> String {
    format!("reconciliation of enactment \"{enactment}\" has failed with an error that retrying cannot heal")
}

/// Upstream's message when too many nodes failed the policy for this one to try.
pub fn aborted(enactment: &str) -> String {
    format!("reconciliation of enactment \"{enactment}\" has aborted")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_messages_name_the_enactment_as_upstream_does() {
        assert_eq!(
            failed_after_retries("node01.br1-eth1", 5),
            "reconciliation of enactment \"node01.br1-eth1\" has failed after 5 retries"
        );
        assert_eq!(
            aborted("node01.br1-eth1"),
            "reconciliation of enactment \"node01.br1-eth1\" has aborted"
        );
        assert_eq!(component("node01"), "node01.nmstate-handler");
    }
}
