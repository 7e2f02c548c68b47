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

use super::filter::without_volatile_values;

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

/// The node's state as last read, kept while nothing signals a change, so an apply does not
/// read the node again right after the node-state reporter did: neither the handler
/// ([`StateCache::current`]) nor nmstate's apply ([`StateCache::for_apply`]).
///
/// A read counts the changes signalled before it starts; it is current while no change was
/// signalled since. The reporter counts NetworkManager's D-Bus signals and the kernel's change
/// notifications as they arrive ([`StateCache::signalled`], [`StateCache::notified`]); what
/// neither tells is bounded by [`MAX_AGE`].
///
/// Kernel notifications also come for what leaves the state as it was: a router advertisement
/// renews an address's lifetimes, a container's veth comes and goes. So the reporter's reads
/// keep what the kernel alone reported beside them ([`StateCache::read_with_kernel`]), and a
/// periodic check that finds the kernel as it was then, with nothing signalled by
/// NetworkManager since, keeps the read current ([`StateCache::confirm_kernel`]).
#[derive(Default)]
pub struct StateCache {
    signalled: AtomicU64,
    notified: AtomicU64,
    last: Mutex<Option<Read>>,
}

/// The changes counted so far: NetworkManager's signals and the kernel's notifications.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Changes {
    pub signalled: u64,
    pub notified: u64,
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
    changes: Changes,
    /// What the kernel alone reported just before, volatile values left out
    /// ([`without_volatile_values`]); None when a notification came during either read.
    kernel: Option<Value>,
    at: Instant,
}

impl StateCache {
    /// NetworkManager signalled a change: the last read is no longer current.
    pub fn signalled(&self) {
        self.signalled.fetch_add(1, Ordering::SeqCst);
    }

    /// The kernel notified a change: the last read is no longer current, unless a check finds
    /// the kernel as it was ([`Self::confirm_kernel`]).
    pub fn notified(&self) {
        self.notified.fetch_add(1, Ordering::SeqCst);
    }

    /// The changes counted so far: a check that begins now passes this to [`Self::confirm`].
    pub fn changes(&self) -> Changes {
        Changes {
            signalled: self.signalled.load(Ordering::SeqCst),
            notified: self.notified.load(Ordering::SeqCst),
        }
    }

    /// A check that began when [`Self::changes`] said `since` found nothing moved: the last
    /// read, if no change was signalled since, counts as read now (its age is what bounds a
    /// change nothing signalled; the check looked for those).
    pub fn confirm(&self, since: Changes) {
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

    /// A check that began when [`Self::changes`] said `since` read the kernel alone
    /// ([`retrieve_kernel`]) and found `kernel`. When that is what the kernel reported beside
    /// the last read, what it notified since changed nothing that stayed changed; if
    /// NetworkManager signalled nothing either, the read counts as read at `since`. Returns
    /// whether it does.
    pub fn confirm_kernel(&self, since: Changes, kernel: Value) -> bool {
        let kernel = without_volatile_values(kernel);
        let Ok(mut last) = self.last.lock() else {
            return false;
        };
        let Some(read) = last.as_mut() else {
            return false;
        };
        let unchanged = read.changes.signalled == since.signalled
            && read.changes.notified <= since.notified
            && read.kernel.as_ref() == Some(&kernel);
        if unchanged {
            read.changes = since;
            read.at = Instant::now();
        }
        unchanged
    }

    /// Reads the node's state ([`retrieve_state`], secrets included) and keeps it. Blocking.
    pub fn read(&self) -> Result<nmstate::NetworkState, nmstate::NmstateError> {
        let changes = self.changes();
        let at = Instant::now();
        let state = retrieve_state()?;
        self.keep(state.clone(), changes, None, at);
        Ok(state)
    }

    /// [`Self::read`], and the kernel alone just before it, kept beside it for
    /// [`Self::confirm_kernel`] (a few milliseconds more). Blocking.
    ///
    /// The kernel is read first: a change between the two reads whose notification is counted
    /// only after both outdates the full read when it is counted, and the kernel read kept,
    /// which predates the change, does not match a later check's.
    pub fn read_with_kernel(&self) -> Result<nmstate::NetworkState, nmstate::NmstateError> {
        let changes = self.changes();
        let at = Instant::now();
        let kernel = retrieve_kernel().ok().map(without_volatile_values);
        let state = retrieve_state()?;
        // Both reads saw the same kernel only if nothing was notified during them.
        let kernel = kernel.filter(|_| self.changes().notified == changes.notified);
        self.keep(state.clone(), changes, kernel, at);
        Ok(state)
    }

    fn keep(&self, state: nmstate::NetworkState, changes: Changes, kernel: Option<Value>, at: Instant) {
        if let Ok(mut last) = self.last.lock() {
            *last = Some(Read {
                state,
                changes,
                kernel,
                at,
            });
        }
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

    fn kept(cache: &StateCache, signalled: u64, age: Duration) {
        let changes = Changes {
            signalled,
            notified: 0,
        };
        keep(cache, nmstate::NetworkState::new(), changes, None, age);
    }

    fn keep(
        cache: &StateCache,
        state: nmstate::NetworkState,
        changes: Changes,
        kernel: Option<Value>,
        age: Duration,
    ) {
        cache.keep(state, changes, kernel, Instant::now() - age);
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
        keep(&cache, read, Changes::default(), None, Duration::from_secs(1));
        let text = |state: nmstate::NetworkState| serde_json::to_string(&state).unwrap();
        let current = text(cache.current().unwrap());
        assert!(!current.contains("s3cret"), "for captures and reports: {current}");
        assert!(current.contains("<_password_hid_by_nmstate>"), "{current}");
        let for_apply = text(cache.for_apply().unwrap());
        assert!(
            for_apply.contains("s3cret"),
            "for nmstate to merge over: {for_apply}"
        );
        cache.signalled();
        assert!(cache.for_apply().is_none(), "a change signalled since the read");
    }

    #[test]
    fn a_read_is_kept_until_a_change_is_signalled_or_it_is_too_old() {
        let cache = StateCache::default();
        let signalled = |signalled| Changes {
            signalled,
            notified: 0,
        };
        assert!(cache.kept().is_none(), "nothing read yet");
        kept(&cache, 0, Duration::from_secs(1));
        assert!(cache.kept().is_some());
        cache.signalled();
        assert!(
            cache.kept().is_none(),
            "a change signalled since the read started"
        );
        kept(&cache, 1, Duration::from_secs(1));
        assert!(cache.kept().is_some(), "read after the change");
        cache.notified();
        assert!(cache.kept().is_none(), "a change notified since the read started");
        kept(&cache, 1, MAX_AGE);
        let notified_once = Changes {
            signalled: 1,
            notified: 1,
        };
        keep(&cache, nmstate::NetworkState::new(), notified_once, None, MAX_AGE);
        assert!(cache.kept().is_none(), "too old");
        cache.confirm(notified_once);
        assert!(
            cache.kept().is_some(),
            "confirmed by a check that found nothing moved"
        );

        kept(&cache, 1, MAX_AGE);
        cache.signalled();
        cache.confirm(signalled(1));
        assert!(
            cache.kept().is_none(),
            "a check that began before a change confirms nothing"
        );
        cache.confirm(cache.changes());
        assert!(
            cache.kept().is_none(),
            "nor a check after it: the read is older than the change"
        );
    }

    /// What the kernel alone reported beside a read, with an address and its lifetimes.
    fn kernel(addresses: &[&str], valid_life_time: &str) -> Value {
        let address: Vec<Value> = addresses
            .iter()
            .map(|ip| json!({"ip": ip, "prefix-length": 64, "valid-life-time": valid_life_time}))
            .collect();
        json!({"interfaces": [{"name": "eth1", "type": "ethernet", "state": "up",
            "ipv6": {"enabled": true, "address": address}}]})
    }

    #[test]
    fn a_check_that_finds_the_kernel_as_it_was_at_the_read_keeps_it_current() {
        let at_the_read = kernel(&["2001:db8::1"], "3600sec");
        let renewed = kernel(&["2001:db8::1"], "3599sec");
        let read = Changes {
            signalled: 2,
            notified: 5,
        };
        let notified_since = Changes {
            signalled: 2,
            notified: 7,
        };
        // (what, the read's kernel, the check's changes, the check's kernel, kept current)
        let cases = [
            (
                "lifetimes renewed",
                Some(&at_the_read),
                notified_since,
                &renewed,
                true,
            ),
            (
                "an address added",
                Some(&at_the_read),
                notified_since,
                &kernel(&["2001:db8::1", "2001:db8::2"], "3600sec"),
                false,
            ),
            (
                "NetworkManager signalled since the read",
                Some(&at_the_read),
                Changes {
                    signalled: 3,
                    ..notified_since
                },
                &renewed,
                false,
            ),
            (
                "no kernel read beside the read",
                None,
                notified_since,
                &renewed,
                false,
            ),
            (
                "the check began before the read",
                Some(&at_the_read),
                Changes {
                    signalled: 2,
                    notified: 4,
                },
                &renewed,
                false,
            ),
        ];
        for (what, beside, check, found, current) in cases {
            let cache = StateCache::default();
            (0..check.signalled).for_each(|_| cache.signalled());
            (0..check.notified).for_each(|_| cache.notified());
            let kernel = beside.cloned().map(without_volatile_values);
            keep(
                &cache,
                nmstate::NetworkState::new(),
                read,
                kernel,
                Duration::from_secs(1),
            );
            let confirmed = cache.confirm_kernel(check, found.clone());
            assert_eq!(confirmed, current, "{what}");
            assert_eq!(cache.kept().is_some(), current, "{what}");
        }

        let cache = StateCache::default();
        let kernel = Some(without_volatile_values(at_the_read.clone()));
        keep(
            &cache,
            nmstate::NetworkState::new(),
            Changes::default(),
            kernel,
            MAX_AGE,
        );
        cache.notified();
        let check = cache.changes();
        cache.notified();
        assert!(cache.confirm_kernel(check, renewed.clone()));
        assert!(
            cache.kept().is_none(),
            "notified during the check: what the check read may be outdated"
        );
        assert!(cache.confirm_kernel(cache.changes(), renewed));
        assert!(
            cache.kept().is_some(),
            "and confirmed by the next: too old no more"
        );
    }

    #[test]
    fn the_nmstate_version_comes_from_the_lock_file() {
        assert!(NMSTATE_VERSION.starts_with("2.2."), "{NMSTATE_VERSION}");
    }
}
