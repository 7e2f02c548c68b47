//! Reading the node's network state with the nmstate crate, in-process.
//!
//! nmstate's blocking calls build a runtime of their own (they panic inside a tokio runtime)
//! and its async futures are not `Send`; callers inside tokio use `spawn_blocking`.

use serde_json::Value;
use std::{
    sync::{
        Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};
use tracing::debug;

/// The nmstate crate version this handler is built with.
pub const NMSTATE_VERSION: &str = env!("NMSTATE_CRATE_VERSION");

#[derive(Debug, thiserror::Error)]
pub enum NodeStateError {
    #[error("cannot read the network state from NetworkManager: {0}")]
    Retrieve(#[from] nmstate::NmstateError),
    #[error("cannot serialize the network state: {0}")]
    Serialize(#[from] serde_json::Error),
}

impl NodeStateError {
    /// A bounded category, for logs and metrics.
    pub fn category(&self) -> &'static str {
        match self {
            NodeStateError::Retrieve(_) => "retrieve",
            NodeStateError::Serialize(_) => "serialize",
        }
    }
}

/// The node's current network state (secrets hidden), as nmstate reports it. Blocking.
pub fn retrieve() -> Result<Value, NodeStateError> {
    without_secrets(retrieve_state()?)
}

/// `state` as reported: secrets hidden, as JSON.
pub fn without_secrets(mut state: nmstate::NetworkState) -> Result<Value, NodeStateError> {
    state.hide_secrets();
    Ok(serde_json::to_value(&state)?)
}

/// The node's current network state as nmstate's type, secrets included, as nmstate's apply
/// reads it before a change. Blocking.
pub fn retrieve_state() -> Result<nmstate::NetworkState, nmstate::NmstateError> {
    let mut state = nmstate::NetworkState::new();
    state.set_include_secrets(true).retrieve()?;
    Ok(state)
}

/// The node's state as last read, kept while NetworkManager signals no change, so an apply
/// does not read the node again right after the node-state reporter did: neither the handler
/// ([`StateCache::current`]) nor nmstate's apply ([`StateCache::for_apply`]).
///
/// A read counts the changes signalled before it starts; it is current while no change was
/// signalled since. The reporter counts NetworkManager's D-Bus signals and the kernel's change
/// notifications as they arrive ([`StateCache::changed`]); what neither tells is bounded by
/// [`MAX_AGE`].
#[derive(Default)]
pub struct StateCache {
    changes: AtomicU64,
    last: Mutex<Option<Read>>,
}

/// Logged (at debug) when [`StateCache::current`] reads the node because no current read is
/// kept: the caller (an apply) waits for that read.
pub const READ_ON_THE_PATH: &str = "no current read of the node is kept: reading it";

/// How long a read is used at most, however quiet the node, unless a periodic check confirms
/// it (every minute by default): the bound on a change nothing signalled.
pub const MAX_AGE: Duration = Duration::from_secs(120);

struct Read {
    state: nmstate::NetworkState,
    /// The changes counted when the read started.
    changes: u64,
    at: Instant,
}

impl StateCache {
    /// NetworkManager or the kernel signalled a change: the last read is no longer current.
    pub fn changed(&self) {
        self.changes.fetch_add(1, Ordering::SeqCst);
    }

    /// The changes counted so far: a check that begins now passes this to [`Self::confirm`].
    pub fn changes(&self) -> u64 {
        self.changes.load(Ordering::SeqCst)
    }

    /// A check that began when [`Self::changes`] said `since` found nothing moved: the last
    /// read, if no change was signalled since, counts as read now (its age is what bounds a
    /// change nothing signalled; the check looked for those).
    pub fn confirm(&self, since: u64) {
        if since != self.changes() {
            return;
        }
        if let Ok(mut last) = self.last.lock()
            && let Some(read) = last.as_mut()
            && read.changes == since
        {
            read.at = Instant::now();
        }
    }

    /// Reads the node's state ([`retrieve_state`], secrets included) and keeps it. Blocking.
    pub fn read(&self) -> Result<nmstate::NetworkState, nmstate::NmstateError> {
        let changes = self.changes();
        let at = Instant::now();
        let state = retrieve_state()?;
        if let Ok(mut last) = self.last.lock() {
            *last = Some(Read {
                state: state.clone(),
                changes,
                at,
            });
        }
        Ok(state)
    }

    /// The node's state, secrets hidden: the last read while it is current, or a new read.
    /// Blocking.
    pub fn current(&self) -> Result<nmstate::NetworkState, nmstate::NmstateError> {
        let mut state = match self.kept() {
            Some(state) => state,
            None => {
                debug!("{READ_ON_THE_PATH}");
                self.read()?
            }
        };
        state.hide_secrets();
        Ok(state)
    }

    /// The last read while it is current, secrets included, for nmstate's apply to merge the
    /// desired state over instead of reading the node again. None: nmstate reads it.
    pub fn for_apply(&self) -> Option<nmstate::NetworkState> {
        self.kept()
    }

    /// The last read, if no change was signalled since it started and it is younger than
    /// [`MAX_AGE`].
    fn kept(&self) -> Option<nmstate::NetworkState> {
        let last = self.last.lock().ok()?;
        let read = last.as_ref()?;
        let current = read.changes == self.changes() && read.at.elapsed() < MAX_AGE;
        current.then(|| read.state.clone())
    }
}

/// What the kernel alone reports (links, addresses, routes; no NetworkManager profiles or
/// DNS), without secrets to hide. Blocking; a fraction of [`retrieve`]'s cost.
pub fn retrieve_kernel() -> Result<Value, NodeStateError> {
    let mut state = nmstate::NetworkState::new();
    state.set_kernel_only(true);
    state.retrieve()?;
    Ok(serde_json::to_value(&state)?)
}

/// Keeps only the named interfaces, and the routes through them, like `nmstatectl show IFACE`.
/// The nmstate features `desired` uses on top of `current` (as `nmstatectl statistic` reports
/// them, e.g. `static-dns`), for the enactment status and the `features_applied` metric.
pub fn features_used(desired: &Value, current: &nmstate::NetworkState) -> Option<Vec<String>> {
    let desired = nmstate::NetworkState::new_from_json(&desired.to_string()).ok()?;
    let statistic = desired.statistic(current).ok()?;
    let names: Vec<String> = statistic
        .features
        .iter()
        .filter_map(|feature| serde_json::to_value(feature).ok()?.as_str().map(str::to_string))
        .collect();
    (!names.is_empty()).then_some(names)
}

pub fn only_interfaces(mut state: Value, names: &[String]) -> Value {
    if names.is_empty() {
        return state;
    }
    let wanted = |value: &Value, key: &str| {
        value
            .get(key)
            .and_then(Value::as_str)
            .is_some_and(|name| names.iter().any(|n| n == name))
    };
    if let Some(interfaces) = state.get_mut("interfaces").and_then(Value::as_array_mut) {
        interfaces.retain(|interface| wanted(interface, "name"));
    }
    for table in ["running", "config"] {
        if let Some(routes) = state
            .pointer_mut(&format!("/routes/{table}"))
            .and_then(Value::as_array_mut)
        {
            routes.retain(|route| wanted(route, "next-hop-interface"));
        }
    }
    state
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn filtering_keeps_named_interfaces_and_their_routes() {
        let state = json!({
            "interfaces": [{"name": "lo"}, {"name": "eth0"}, {"name": "eth1"}],
            "routes": {"running": [{"next-hop-interface": "eth0"}, {"next-hop-interface": "eth1"}]},
            "dns-resolver": {},
        });
        let filtered = only_interfaces(state.clone(), &["eth1".to_string()]);
        assert_eq!(filtered["interfaces"], json!([{"name": "eth1"}]));
        assert_eq!(
            filtered["routes"]["running"],
            json!([{"next-hop-interface": "eth1"}])
        );
        assert_eq!(filtered["dns-resolver"], json!({}));
        assert_eq!(only_interfaces(state.clone(), &[]), state);
    }

    fn kept(cache: &StateCache, changes: u64, age: Duration) {
        keep(cache, nmstate::NetworkState::new(), changes, age);
    }

    fn keep(cache: &StateCache, state: nmstate::NetworkState, changes: u64, age: Duration) {
        *cache.last.lock().unwrap() = Some(Read {
            state,
            changes,
            at: Instant::now() - age,
        });
    }

    #[test]
    fn a_read_keeps_its_secrets_for_the_apply_alone() {
        let cache = StateCache::default();
        assert!(cache.for_apply().is_none(), "nothing read: nmstate reads");
        let read = nmstate::NetworkState::new_from_json(
            &json!({"interfaces": [{
                "name": "eth1", "type": "ethernet", "state": "up",
                "802.1x": {"identity": "node", "eap-methods": ["peap"], "password": "s3cret"},
            }]})
            .to_string(),
        )
        .unwrap();
        keep(&cache, read, 0, Duration::from_secs(1));
        let text = |state: nmstate::NetworkState| serde_json::to_string(&state).unwrap();
        let current = text(cache.current().unwrap());
        assert!(!current.contains("s3cret"), "for captures and reports: {current}");
        assert!(current.contains("<_password_hid_by_nmstate>"), "{current}");
        let for_apply = text(cache.for_apply().unwrap());
        assert!(
            for_apply.contains("s3cret"),
            "for nmstate to merge over: {for_apply}"
        );
        cache.changed();
        assert!(cache.for_apply().is_none(), "a change signalled since the read");
    }

    #[test]
    fn a_read_is_kept_until_a_change_is_signalled_or_it_is_too_old() {
        let cache = StateCache::default();
        assert!(cache.kept().is_none(), "nothing read yet");
        kept(&cache, 0, Duration::from_secs(1));
        assert!(cache.kept().is_some());
        cache.changed();
        assert!(
            cache.kept().is_none(),
            "a change signalled since the read started"
        );
        kept(&cache, 1, Duration::from_secs(1));
        assert!(cache.kept().is_some(), "read after the change");
        kept(&cache, 1, MAX_AGE);
        assert!(cache.kept().is_none(), "too old");
        cache.confirm(1);
        assert!(
            cache.kept().is_some(),
            "confirmed by a check that found nothing moved"
        );

        kept(&cache, 1, MAX_AGE);
        cache.changed();
        cache.confirm(1);
        assert!(
            cache.kept().is_none(),
            "a check that began before a change confirms nothing"
        );
        cache.confirm(2);
        assert!(
            cache.kept().is_none(),
            "nor a check after it: the read is older than the change"
        );
    }

    #[test]
    fn the_nmstate_version_comes_from_the_lock_file() {
        assert!(NMSTATE_VERSION.starts_with("2.2."), "{NMSTATE_VERSION}");
    }
}
