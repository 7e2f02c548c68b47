//! What Leases (`coordination.k8s.io/v1`) held by hand share (the node agent's heartbeats and
//! rollout slots, which the cluster controller reads): names that fit the API's limits, expiry,
//! and keeping a held lease renewed. A holder that dies stops renewing, so whatever it
//! held frees itself once the lease expires: nothing needs cleaning up by hand.

use crate::kube_errors::{is_conflict, is_not_found};
use k8s_openapi::{
    api::coordination::v1::{Lease, LeaseSpec},
    apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta},
    jiff::{SignedDuration, Timestamp},
};
use kube::{Api, ResourceExt, api::PostParams};
use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::Duration,
};
use tracing::{debug, warn};

/// Longest object name the API accepts (a DNS subdomain).
const MAX_NAME: usize = 253;

/// Leases written through here are the node agent's.
const FIELD_MANAGER: &str = nmstate_api::names::HANDLER_FIELD_MANAGER;

/// `<base><suffix>`, or, when that is too long for an object name, `base` cut short with a
/// stable hash of it, so every node derives the same name.
pub fn object_name(base: &str, suffix: &str) -> String {
    let name = format!("{base}{suffix}");
    if name.len() <= MAX_NAME {
        return name;
    }
    let hash = stable_hash(base);
    let keep = MAX_NAME - suffix.len() - 17;
    let cut = base
        .char_indices()
        .map(|(index, _)| index)
        .take_while(|index| *index <= keep)
        .last()
        .unwrap_or(0);
    let stem = base[..cut].trim_end_matches(['.', '-']);
    format!("{stem}-{hash:016x}{suffix}")
}

/// A hash every node computes alike, whatever its build (FNV-1a).
pub fn stable_hash(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// When the lease stops being valid: its last renewal plus its duration. `None` when it has
/// no holder.
pub fn expiry(lease: &Lease) -> Option<Timestamp> {
    let spec = lease.spec.as_ref()?;
    spec.holder_identity
        .as_deref()
        .filter(|holder| !holder.is_empty())?;
    let renewed = spec.renew_time.as_ref().or(spec.acquire_time.as_ref())?.0;
    let duration = SignedDuration::from_secs(i64::from(spec.lease_duration_seconds.unwrap_or(0)));
    renewed.checked_add(duration).ok()
}

/// The holder of a lease that has not expired at `now`.
pub fn live_holder(lease: &Lease, now: Timestamp) -> Option<&str> {
    let valid_until = expiry(lease)?;
    (valid_until > now).then(|| lease.spec.as_ref()?.holder_identity.as_deref())?
}

pub fn holder(lease: &Lease) -> Option<&str> {
    lease.spec.as_ref()?.holder_identity.as_deref()
}

/// A lease held by `holder` from now on, for `duration`.
pub fn held_by(
    name: &str,
    labels: BTreeMap<String, String>,
    holder: &str,
    duration: Duration,
    now: Timestamp,
) -> Lease {
    Lease {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            labels: Some(labels),
            ..ObjectMeta::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some(holder.to_string()),
            lease_duration_seconds: Some(seconds(duration)),
            acquire_time: Some(MicroTime(now)),
            renew_time: Some(MicroTime(now)),
            lease_transitions: Some(0),
            ..LeaseSpec::default()
        }),
    }
}

/// Makes `lease` held by `holder` from `now`, counting a transition when the holder changes.
pub fn take_over(lease: &mut Lease, holder: &str, duration: Duration, now: Timestamp) {
    let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
    if spec.holder_identity.as_deref() != Some(holder) {
        spec.holder_identity = Some(holder.to_string());
        spec.acquire_time = Some(MicroTime(now));
        spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0).saturating_add(1));
    }
    spec.lease_duration_seconds = Some(seconds(duration));
    spec.renew_time = Some(MicroTime(now));
}

fn seconds(duration: Duration) -> i32 {
    i32::try_from(duration.as_secs()).unwrap_or(i32::MAX).max(1)
}

/// How often a holder renews: three times per lease duration, so one lost renewal does not
/// lose the lease.
pub fn renew_interval(duration: Duration) -> Duration {
    (duration / 3).max(Duration::from_millis(500))
}

/// Writes `lease` over the stored one, which must still be at `lease`'s resourceVersion.
pub async fn replace(leases: &Api<Lease>, lease: &Lease) -> Result<Lease, kube::Error> {
    let params = PostParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..PostParams::default()
    };
    leases.replace(&lease.name_any(), &params, lease).await
}

pub async fn create(leases: &Api<Lease>, lease: &Lease) -> Result<Lease, kube::Error> {
    let params = PostParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..PostParams::default()
    };
    leases.create(&params, lease).await
}

/// How many times a holder's write is retried on a fresh copy after a conflict.
const CONFLICT_ATTEMPTS: usize = 5;

/// Runs `write` on `held`, the holder's copy of a lease, and again on a fresh copy after each
/// conflict as long as `holder` still holds the lease. The holder's copy can be one version
/// behind through no one else's doing: a renewal cut off mid-flight (its task aborted after the
/// API server stored it) never updated it. `Ok(None)`: the lease is gone or someone else holds
/// it.
pub async fn write_while_held<T, Written>(
    leases: &Api<Lease>,
    held: Lease,
    holder: &str,
    write: impl Fn(Lease) -> Written,
) -> Result<Option<T>, kube::Error>
where
    Written: Future<Output = Result<T, kube::Error>>,
{
    let name = held.name_any();
    let mut current = held;
    let mut attempt = 1;
    loop {
        match write(current.clone()).await {
            Ok(written) => return Ok(Some(written)),
            Err(error) if is_not_found(&error) => return Ok(None),
            Err(error) if is_conflict(&error) && attempt < CONFLICT_ATTEMPTS => {
                debug!(lease = %name, attempt, "conflict: writing again on a fresh copy");
            }
            Err(error) => return Err(error),
        }
        attempt += 1;
        match leases.get_opt(&name).await? {
            Some(fresh) if self::holder(&fresh) == Some(holder) => current = fresh,
            _ => return Ok(None),
        }
    }
}

/// Renews the lease in `held` until it is lost (someone else wrote it) or the task is aborted,
/// keeping `held` at the stored version so the holder can release or update it.
/// This process's own writes, judged by its Lease renewals: a renewal that goes through more
/// than one lease after the previous one ends an outage of writes (etcd or the API server away,
/// requests failing or hanging). Other holders could not renew during it either: a Lease they
/// let expire then is not theirs to lose until they have had a full lease to renew, seen from
/// here (see [`crate::heartbeat::live_until`]).
struct WriteSight {
    last_write: Timestamp,
    since: Timestamp,
    lease: Duration,
}

static WRITES: std::sync::LazyLock<Mutex<WriteSight>> = std::sync::LazyLock::new(|| {
    Mutex::new(WriteSight {
        last_write: Timestamp::now(),
        since: Timestamp::now(),
        lease: Duration::from_secs(30),
    })
});

fn silent(writes: &WriteSight, now: Timestamp) -> bool {
    now.duration_since(writes.last_write).unsigned_abs() > writes.lease
}

fn note_write(now: Timestamp, lease: Duration) {
    let Ok(mut writes) = WRITES.lock() else { return };
    writes.lease = lease;
    if silent(&writes, now) {
        writes.since = now;
    }
    writes.last_write = now;
}

/// How much this process has seen of other holders' renewals, judged by its own: blind while
/// none of its renewals has gone through for a lease, seeing again from the first that does.
pub fn write_sight(now: Timestamp) -> crate::heartbeat::Sight {
    match WRITES.lock() {
        Ok(writes) if !silent(&writes, now) => crate::heartbeat::Sight::Since(writes.since),
        _ => crate::heartbeat::Sight::Lost,
    }
}

/// Renews `held` every [`renew_interval`] until another writer changes or removes it. A renewal
/// that gets no answer within the interval is given up (a request to an unreachable API server
/// can hang far longer than the lease), and after a failed one the next comes four times
/// sooner: once the API server is within reach again, the lease is renewed before it lapses.
pub async fn keep_renewed(leases: Api<Lease>, held: Arc<Mutex<Lease>>, duration: Duration) {
    let interval = renew_interval(duration);
    let mut wait = interval;
    loop {
        tokio::time::sleep(wait).await;
        let Ok(mut lease) = held.lock().map(|lease| lease.clone()) else {
            return;
        };
        if let Some(spec) = lease.spec.as_mut() {
            spec.renew_time = Some(MicroTime(Timestamp::now()));
        }
        let renewal = match tokio::time::timeout(interval, replace(&leases, &lease)).await {
            Ok(renewal) => renewal,
            Err(_) => {
                warn!(lease = %lease.name_any(), "no answer to the lease renewal within {interval:?}, retrying");
                wait = interval / 4;
                continue;
            }
        };
        // A conflict went through to the API too: someone else wrote the Lease.
        if renewal.as_ref().is_ok() || renewal.as_ref().is_err_and(is_conflict) {
            note_write(Timestamp::now(), duration);
        }
        match renewal {
            Ok(renewed) => {
                debug!(lease = %renewed.name_any(), "renewed");
                if let Ok(mut held) = held.lock() {
                    *held = renewed;
                }
                wait = interval;
            }
            Err(error) if is_conflict(&error) || is_not_found(&error) => {
                // A renewal given up above may have gone through after all: then the stored
                // Lease is still this holder's, at a newer resourceVersion.
                if let Ok(Some(stored)) = leases.get_opt(&lease.name_any()).await
                    && still_ours(&stored, &lease)
                {
                    if let Ok(mut held) = held.lock() {
                        *held = stored;
                    }
                    wait = Duration::ZERO;
                    continue;
                }
                warn!(lease = %lease.name_any(), "lost the lease (changed or removed by another writer)");
                return;
            }
            Err(error) => {
                warn!(lease = %lease.name_any(), "cannot renew the lease, retrying: {error}");
                wait = interval / 4;
            }
        }
    }
}

/// Whether `stored` is still the lease `ours` holds: same holder, no transition since.
fn still_ours(stored: &Lease, ours: &Lease) -> bool {
    let key = |lease: &Lease| {
        lease
            .spec
            .as_ref()
            .map(|spec| (spec.holder_identity.clone(), spec.lease_transitions))
    };
    holder(stored).is_some_and(|holder| !holder.is_empty()) && key(stored) == key(ours)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: i64) -> Timestamp {
        Timestamp::from_second(seconds).unwrap()
    }

    #[test]
    fn short_names_are_kept_and_long_ones_are_cut_with_a_stable_hash() {
        assert_eq!(object_name("web", ".rollout-0"), "web.rollout-0");
        let long = format!("{}.{}", "a".repeat(200), "b".repeat(100));
        let name = object_name(&long, ".rollout-12");
        assert!(name.len() <= MAX_NAME, "{}", name.len());
        assert!(name.ends_with(".rollout-12"));
        assert_eq!(name, object_name(&long, ".rollout-12"));
        assert_ne!(name, object_name(&format!("{long}c"), ".rollout-12"));
    }

    #[test]
    fn a_lease_is_live_until_its_renewal_plus_duration() {
        let lease = held_by("n", BTreeMap::new(), "node01", Duration::from_secs(10), at(100));
        assert_eq!(expiry(&lease), Some(at(110)));
        assert_eq!(live_holder(&lease, at(109)), Some("node01"));
        assert_eq!(live_holder(&lease, at(110)), None);
    }

    #[test]
    fn taking_over_counts_transitions_only_when_the_holder_changes() {
        let mut lease = held_by("n", BTreeMap::new(), "node01", Duration::from_secs(10), at(100));
        take_over(&mut lease, "node01", Duration::from_secs(10), at(105));
        assert_eq!(lease.spec.as_ref().unwrap().lease_transitions, Some(0));
        take_over(&mut lease, "node02", Duration::from_secs(10), at(200));
        let spec = lease.spec.as_ref().unwrap();
        assert_eq!(spec.lease_transitions, Some(1));
        assert_eq!(spec.acquire_time, Some(MicroTime(at(200))));
        assert_eq!(live_holder(&lease, at(205)), Some("node02"));
    }

    #[test]
    fn a_lease_without_holder_is_never_live() {
        let mut lease = held_by("n", BTreeMap::new(), "node01", Duration::from_secs(10), at(100));
        lease.spec.as_mut().unwrap().holder_identity = None;
        assert_eq!(live_holder(&lease, at(101)), None);
    }
}
