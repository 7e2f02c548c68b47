//! Applying a desired state without losing the node: the change is applied under a
//! NetworkManager checkpoint that is not committed, the probes check that the node still works,
//! and the checkpoint is then committed, or rolled back when a probe fails. If the handler dies
//! in between, NetworkManager rolls the change back by itself when the checkpoint times out.
//!
//! [`prepare`], then [`change`] (the change in, its probes passed), then
//! [`Uncommitted::commit`] or [`Uncommitted::roll_back`]: the caller may wait in between (an
//! enactment commits only once its status says Progressing).
//!
//! nmstate's blocking calls run on tokio's blocking pool (they build a runtime of their own and
//! their futures are not `Send`).

/// Probes that look outside the node: ping and DNS.
pub mod external_probes;
/// The checks a change must pass before it is committed.
pub mod probes;

use crate::network::{
    network_manager::{self, GlobalDns},
    state::{self as node_state, NodeStateError},
};
use crate::phases::{self, names};
use k8s_openapi::jiff::Timestamp;
use nmstate::{ErrorKind, NetworkState, NmstateError};
use nmstate_api::probes::ProbeReport;
use probes::{ProbeFailure, Probes};
use serde_json::Value;
use std::time::Duration;
use tracing::{debug, info, warn};

/// How long NetworkManager keeps an uncommitted checkpoint before rolling it back on its own
/// (e.g. when the handler dies mid-apply): upstream's formula, long enough for the external
/// probes to use their full timeout twice: 480 s with the default 120 s probe timeout.
pub fn checkpoint_timeout(probe_timeout: Duration) -> Duration {
    probe_timeout.saturating_mul(4)
}

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// The desired state is not a valid nmstate state: nothing on the node was touched.
    #[error("{0}")]
    InvalidState(NmstateError),
    /// nmstate could not apply it (and rolled its checkpoint back).
    #[error("{0}")]
    Apply(NmstateError),
    /// A probe failed after the change; the change was rolled back.
    #[error(
        "rolling back desired state configuration: failed running probe '{probe}' after network \
         changes: {reason} -> currentState: {state_after}"
    )]
    ProbeFailed {
        probe: String,
        reason: String,
        state_after: String,
    },
    /// The handler lost its slot in the policy's rollout before it could commit (it stalled
    /// longer than its lease, or could not renew it, and another node may be applying now):
    /// rolled back.
    #[error(
        "lost the slot in the policy's rollout before committing (the handler stalled, or could \
         not reach the API server, longer than its lease allows): rolled back, to be applied \
         again once a slot is free"
    )]
    LostSlot,
    #[error("the change worked but could not be committed: {0}")]
    Commit(NmstateError),
    #[error("the change failed and could not be rolled back: {0}")]
    Rollback(NmstateError),
    #[error(transparent)]
    NodeState(#[from] NodeStateError),
    #[error("internal error: {0}")]
    Join(#[from] tokio::task::JoinError),
}

impl ApplyError {
    /// Errors that retrying cannot heal: the input is not a state at all, or the kernel or host
    /// lacks the feature (nmstate already spends about two minutes on each such attempt). A
    /// missing interface is retried, as upstream: it may yet appear.
    /// A bounded category, for logs and metrics.
    pub fn category(&self) -> &'static str {
        match self {
            ApplyError::InvalidState(_) => "invalid-state",
            ApplyError::Apply(_) => "apply",
            ApplyError::ProbeFailed { .. } => "probe-failed",
            ApplyError::LostSlot => "lost-slot",
            ApplyError::Commit(_) => "commit",
            ApplyError::Rollback(_) => "rollback",
            ApplyError::NodeState(_) => "node-state",
            ApplyError::Join(_) => "internal",
        }
    }

    pub fn is_permanent(&self) -> bool {
        match self {
            ApplyError::InvalidState(_) => true,
            ApplyError::Apply(error) => {
                matches!(
                    error.kind(),
                    ErrorKind::NotSupportedError | ErrorKind::NotImplementedError
                ) || error.msg().contains("Operation not supported")
            }
            _ => false,
        }
    }
}

/// What an apply needs from the rollout it is part of; `apply FILE` is part of none
/// ([`NoRollout`]).
pub trait Slot {
    /// Whether the change may still be committed: the slot is still held.
    fn may_commit(&self) -> impl Future<Output = bool> + Send;
    /// Completes once the slot can no longer be counted on (it could not be renewed).
    fn lapsing(&self) -> impl Future<Output = ()> + Send;
    /// Whether the slot was renewed after `since`, once that is known.
    fn renewed_after(&self, since: Timestamp) -> impl Future<Output = bool> + Send;
}

/// An apply outside any rollout: it may always commit, and nothing lapses.
pub struct NoRollout;

impl Slot for NoRollout {
    async fn may_commit(&self) -> bool {
        true
    }
    async fn lapsing(&self) {
        std::future::pending().await
    }
    async fn renewed_after(&self, _since: Timestamp) -> bool {
        false
    }
}

/// Ready for a change: its probes chosen, a checkpoint an earlier apply left rolled back, and
/// NetworkManager's global DNS saved (checkpoints do not cover it).
pub struct Prepared {
    probes: Probes,
    dns_before: Option<GlobalDns>,
}

/// Prepares a change with the probes `chosen` picks, all at once.
pub async fn prepare(chosen: impl Future<Output = Probes>) -> Result<Prepared, ApplyError> {
    let chosen = phases::timed(names::PROBES_BEFORE, chosen);
    let stale = phases::timed(names::STALE_CHECKPOINT, rollback_stale_checkpoint());
    let dns = phases::timed(names::SAVE_DNS, network_manager::global_dns(None));
    let (probes, stale, dns) = tokio::join!(chosen, stale, dns);
    if stale? {
        warn!("rolled back a checkpoint left uncommitted by an earlier apply");
    }
    let dns_before = match dns {
        Ok(dns) => Some(dns),
        Err(error) => {
            warn!("cannot save the global DNS configuration; a rollback may not restore DNS: {error}");
            None
        }
    };
    Ok(Prepared { probes, dns_before })
}

/// A change in, its probes passed, under a checkpoint not yet committed: it is committed or
/// rolled back next (dropped, NetworkManager rolls it back when the checkpoint times out).
#[must_use = "an uncommitted change is rolled back when its checkpoint times out"]
pub struct Uncommitted {
    dns_before: Option<GlobalDns>,
}

/// Applies `desired` under a checkpoint that outlasts the probes and runs them; rolls back when
/// one fails. `over` is the node's state read just before, secrets included
/// ([`crate::network::state::StateCache::for_apply`]): nmstate merges over it instead of reading
/// the node first (None: it reads). `changed` is called once the change is in, before the
/// probes (what it starts overlaps them), with the state nmstate's verification read after it.
/// Once the slot is lapsing, the probes stop and the change is rolled back; if the slot is then
/// renewed after the rollback, the change is what cut the node off and the apply failed.
/// `reports` receives a report of each probe, whatever the outcome (none when the change itself
/// failed).
pub async fn change(
    desired: &Value,
    prepared: Prepared,
    slot: &impl Slot,
    over: Option<NetworkState>,
    changed: impl FnOnce(Option<NetworkState>),
    reports: &mut Vec<ProbeReport>,
) -> Result<Uncommitted, ApplyError> {
    let Prepared { probes, dns_before } = prepared;
    let json = desired.to_string();
    let state = blocking(move || NetworkState::new_from_json(&json))
        .await?
        .map_err(ApplyError::InvalidState)?;
    let checkpoint = checkpoint_timeout(probes.timeout());
    let timeout = u32::try_from(checkpoint.as_secs()).unwrap_or(u32::MAX).max(1);
    let applied = blocking(move || {
        let mut state = state;
        state.set_commit(false).set_timeout(timeout);
        state.apply_over(over)
    });
    let verified = match phases::timed(names::NMSTATE_APPLY, applied).await? {
        Ok(verified) => verified,
        Err(error) => {
            restore_global_dns(dns_before).await;
            return Err(ApplyError::Apply(error));
        }
    };
    changed(verified);

    debug!("applied without commit; running the probes");
    let (run, failure) = tokio::select! {
        outcome = phases::timed(names::PROBES_AFTER, probes.run()) => outcome,
        () = slot.lapsing() => {
            warn!("the rollout slot could not be renewed and is about to lapse; rolling back");
            let rolled_back = Timestamp::now();
            roll_back(dns_before).await?;
            // Renewed once the change is gone: the change was what cut the node off, a failed
            // attempt like any failed probe, reported while the node still holds its place.
            // Not renewed: an outage, not the policy's doing; applied again once a slot is free.
            if slot.renewed_after(rolled_back).await {
                let reason = "the API server was out of reach until the change was rolled back \
                              (the rollout slot could not be renewed meanwhile)";
                return Err(probe_failed(&probes, "api-server".into(), reason.into()).await?);
            }
            return Err(ApplyError::LostSlot);
        }
    };
    *reports = run;
    if let Some(ProbeFailure { probe, reason }) = failure {
        warn!(%probe, %reason, "probe failed after the change; rolling back");
        roll_back(dns_before).await?;
        return Err(probe_failed(&probes, probe, reason).await?);
    }
    Ok(Uncommitted { dns_before })
}

impl Uncommitted {
    /// Commits the change while `slot` is still held; otherwise rolls it back.
    pub async fn commit(self, slot: &impl Slot) -> Result<(), ApplyError> {
        if !slot.may_commit().await {
            warn!("may no longer commit; rolling back");
            roll_back(self.dns_before).await?;
            return Err(ApplyError::LostSlot);
        }
        phases::timed(names::COMMIT, blocking(|| NetworkState::checkpoint_commit("")))
            .await?
            .map_err(ApplyError::Commit)?;
        info!("desired state applied and committed");
        Ok(())
    }

    /// Rolls the change back, DNS included.
    pub async fn roll_back(self) -> Result<(), ApplyError> {
        roll_back(self.dns_before).await
    }
}

/// The failure of `probe` after the change was rolled back, with the state the node is left in
/// (once it settled, as upstream reports it).
async fn probe_failed(probes: &Probes, probe: String, reason: String) -> Result<ApplyError, ApplyError> {
    probes.settle().await;
    let state_after = blocking(node_state::retrieve).await??;
    Ok(ApplyError::ProbeFailed {
        probe,
        reason,
        state_after: serde_json::to_string(&state_after).unwrap_or_default(),
    })
}

/// Rolls the uncommitted change back, DNS included.
async fn roll_back(dns_before: Option<GlobalDns>) -> Result<(), ApplyError> {
    blocking(|| NetworkState::checkpoint_rollback(""))
        .await?
        .map_err(ApplyError::Rollback)?;
    restore_global_dns(dns_before).await;
    Ok(())
}

/// Puts NetworkManager's global DNS configuration back as it was before the change.
async fn restore_global_dns(before: Option<GlobalDns>) {
    let Some(before) = before else { return };
    if network_manager::global_dns(None)
        .await
        .is_ok_and(|now| now == before)
    {
        return;
    }
    match network_manager::set_global_dns(None, before).await {
        Ok(()) => info!("restored the global DNS configuration"),
        Err(error) => warn!("cannot restore the global DNS configuration: {error}"),
    }
}

/// Rolls back a checkpoint an earlier apply left (e.g. a handler killed mid-apply); returns
/// whether there was one. NetworkManager's list of checkpoints is read first: one property,
/// where nmstate's rollback sets up its own connection and runtime to find there is none.
pub async fn rollback_stale_checkpoint() -> Result<bool, ApplyError> {
    if network_manager::checkpoints(None)
        .await
        .is_ok_and(|held| held.is_empty())
    {
        return Ok(false);
    }
    let rolled_back = blocking(|| match NetworkState::checkpoint_rollback("") {
        Ok(()) => Ok(true),
        Err(error)
            if error.msg().contains("Not active checkpoint") || error.msg().contains("No checkpoint") =>
        {
            Ok(false)
        }
        Err(error) => Err(error),
    });
    rolled_back.await?.map_err(ApplyError::Rollback)
}

async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, tokio::task::JoinError> {
    tokio::task::spawn_blocking(work).await
}
