//! How long each phase of an apply takes: one line per phase at debug level under the target
//! [`TARGET`], with its name and milliseconds, so `make bench` can say where the time goes
//! (`RUST_LOG=warn,nmstate_handler::phases=debug`). The line's timestamp is the phase's end.

use std::time::Instant;
use tracing::debug;

pub const TARGET: &str = "nmstate_handler::phases";

/// The phases; each line's `phase` is one of these.
pub mod names {
    /// The reconcile that applies starts (0 ms): the watch event's delivery is before it.
    pub const RECONCILE: &str = "reconcile";
    /// The reconcile's objects: this Node and the policy's enactment read; for a policy new to
    /// the node, its enactment created and the policy read again (it may have gone meanwhile).
    pub const DEREFERENCE: &str = "dereference";
    /// The node's current state read through nmstate.
    pub const READ_NODE: &str = "read node";
    /// A place in the policy's rollout taken.
    pub const TAKE_SLOT: &str = "take slot";
    /// The three after [`STATUS_PROGRESSING`], side by side.
    pub const PREPARE: &str = "prepare";
    /// The enactment's Progressing status written, beside the preparation and the change (the
    /// commit waits for it).
    pub const STATUS_PROGRESSING: &str = "status progressing";
    /// The probes chosen: those that pass before the change.
    pub const PROBES_BEFORE: &str = "probes before";
    /// A checkpoint left by a handler that died mid-apply looked for.
    pub const STALE_CHECKPOINT: &str = "stale checkpoint";
    /// NetworkManager's global DNS saved (checkpoints do not cover it).
    pub const SAVE_DNS: &str = "save dns";
    /// nmstate's apply under the checkpoint, its verification included.
    pub const NMSTATE_APPLY: &str = "nmstate apply";
    /// The probes after the change.
    pub const PROBES_AFTER: &str = "probes after";
    /// The checkpoint committed.
    pub const COMMIT: &str = "commit";
    /// The NodeNetworkState reported before Available, from the change on: beside the probes
    /// and the commit.
    pub const REPORT: &str = "report node state";
    /// Of [`REPORT`]: the node read.
    pub const REPORT_READ: &str = "report: read";
    /// Of [`REPORT`]: the NodeNetworkState written.
    pub const REPORT_WRITE: &str = "report: write";
    /// What is left of [`REPORT`] after the commit.
    pub const REPORT_WAIT: &str = "report wait";
    /// The enactment's Available status written.
    pub const STATUS_AVAILABLE: &str = "status available";

    /// The phases after [`RECONCILE`] one after the other, in the order of an apply: their
    /// times add up to the apply's, with what comes between them.
    pub const IN_ORDER: [&str; 9] = [
        DEREFERENCE,
        READ_NODE,
        TAKE_SLOT,
        PREPARE,
        NMSTATE_APPLY,
        PROBES_AFTER,
        COMMIT,
        REPORT_WAIT,
        STATUS_AVAILABLE,
    ];
    /// The phases that run beside those, and how long each took.
    pub const BESIDE: [&str; 7] = [
        STATUS_PROGRESSING,
        PROBES_BEFORE,
        STALE_CHECKPOINT,
        SAVE_DNS,
        REPORT,
        REPORT_READ,
        REPORT_WRITE,
    ];
}

/// Logs that `phase` starts now, taking no time.
pub fn start(phase: &'static str) {
    debug!(target: TARGET, phase, ms = 0.0, "phase");
}

/// Runs `work`, then logs how long it took as `phase`.
pub async fn timed<T>(phase: &'static str, work: impl Future<Output = T>) -> T {
    let started = Instant::now();
    let output = work.await;
    ended(phase, started);
    output
}

/// Logs that `phase`, begun at `started`, ends now.
pub fn ended(phase: &'static str, started: Instant) {
    debug!(target: TARGET, phase, ms = started.elapsed().as_secs_f64() * 1000.0, "phase");
}
