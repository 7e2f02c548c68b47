//! Leader election for the cluster-level writers (policy statuses, webhook certificates):
//! every replica runs, only the holder of a Lease (kube-lease-manager) writes.

use crate::watch;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::coordination::v1::Lease;
use kube::{Api, runtime::watcher};
use std::{future::Future, time::Duration};
use tracing::{debug, info, warn};

/// The command-line settings of a leader-elected binary's replicas.
#[derive(clap::Args, Clone, Debug)]
pub struct ReplicaArgs {
    /// kubeconfig to use [default: KUBECONFIG, ~/.kube/config, else the in-cluster service account]
    #[arg(long, env = "KUBECONFIG")]
    pub kubeconfig: Option<std::path::PathBuf>,
    /// Namespace of the election Lease and of what the binary keeps there
    #[arg(long, env = "POD_NAMESPACE", default_value = nmstate_api::names::DEFAULT_NAMESPACE)]
    pub namespace: String,
    /// This replica's name in the leader election [default: <hostname>-<pid>]
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,
    /// How long the leader's lease lasts without renewal (a dead leader is replaced after it)
    #[arg(long, env = "LEASE_DURATION_SECONDS", default_value_t = 30)]
    pub lease_duration_seconds: u64,
}

impl ReplicaArgs {
    /// The election for `lease`, doing `role`, with this replica's settings.
    pub fn election(&self, lease: &str, role: &'static str) -> Election {
        Election {
            lease: lease.into(),
            namespace: self.namespace.clone(),
            identity: self.identity.clone().unwrap_or_else(|| default_identity(lease)),
            duration: Duration::from_secs(self.lease_duration_seconds),
            field_manager: format!("{lease}-election"),
            role,
        }
    }
}

/// Who takes part in an election, and for what.
#[derive(Clone, Debug)]
pub struct Election {
    /// The Lease's name and namespace.
    pub lease: String,
    pub namespace: String,
    /// This replica's name.
    pub identity: String,
    /// How long the lease lasts without renewal (a dead leader is replaced after it).
    pub duration: Duration,
    /// The field manager of the Lease writes.
    pub field_manager: String,
    /// What the leader does, for the logs.
    pub role: &'static str,
}

/// This replica's default identity: `<hostname>-<pid>`.
pub fn default_identity(fallback: &str) -> String {
    let host = nix::unistd::gethostname()
        .ok()
        .and_then(|name| name.into_string().ok())
        .unwrap_or_else(|| fallback.to_string());
    format!("{host}-{}", std::process::id())
}

/// Runs `lead()` whenever this replica leads, until `shutdown` completes; starts it again when
/// it returns while still leading. On shutdown the Lease is released, so another replica takes
/// over at once rather than after the lease expires. `on_lost` runs each time leading stops.
///
/// A replica standing by watches the Lease: kube-lease-manager only looks again when the
/// holder's lease would expire, so a released Lease (the leader's pod replaced in a rollout or
/// an upgrade) would otherwise stay free for up to its whole duration, with nobody installing
/// or writing status. Seeing it released, the replica starts its manager again, which takes it.
pub async fn run_while_leading<Lead, LeadFuture>(
    client: kube::Client,
    election: &Election,
    shutdown: impl Future<Output = ()>,
    mut lead: Lead,
    mut on_lost: impl FnMut(),
) -> Result<(), kube_lease_manager::LeaseManagerError>
where
    Lead: FnMut() -> LeadFuture,
    LeadFuture: Future<Output = ()>,
{
    let mut shutdown = std::pin::pin!(shutdown);
    let mut released = released(client.clone(), election);
    'manager: loop {
        let (mut leading, task) = manager(client.clone(), election).await?.watch().await;
        loop {
            // Biased: a replica that leads already is not told the Lease is free by a stale event.
            let standing_by = tokio::select! {
                biased;
                () = &mut shutdown => StandingBy::Stop,
                changed = leading.wait_for(|leader| *leader) => match changed {
                    Ok(_) => StandingBy::Lead,
                    Err(_) => StandingBy::Stop,
                },
                Some(()) = released.next() => StandingBy::Released,
            };
            match standing_by {
                StandingBy::Lead => {}
                StandingBy::Stop => break 'manager stop(leading, task, election).await,
                StandingBy::Released => {
                    debug!(lease = %election.lease, "the lease was released; taking it");
                    stop(leading, task, election).await;
                    continue 'manager;
                }
            }
            info!(identity = %election.identity, lease = %election.lease, "leading: {}", election.role);
            let stop_now = tokio::select! {
                () = &mut shutdown => true,
                () = lead() => {
                    warn!(lease = %election.lease, "{} stopped; starting again", election.role);
                    false
                }
                _ = leading.wait_for(|leader| !*leader) => {
                    warn!(lease = %election.lease, "lost the lead: another replica does {} now", election.role);
                    false
                }
            };
            on_lost();
            if stop_now {
                break 'manager stop(leading, task, election).await;
            }
        }
    }
    Ok(())
}

/// How standing by ended.
enum StandingBy {
    Lead,
    Stop,
    /// The Lease is free: a new manager takes it now rather than at its expiry.
    Released,
}

async fn manager(
    client: kube::Client,
    election: &Election,
) -> Result<kube_lease_manager::LeaseManager, kube_lease_manager::LeaseManagerError> {
    let seconds = election.duration.as_secs().max(2);
    kube_lease_manager::LeaseManagerBuilder::new(client, &election.lease)
        .with_namespace(&election.namespace)
        .with_identity(&election.identity)
        .with_duration(seconds)
        .with_grace((seconds / 3).max(1))
        .with_field_manager(&election.field_manager)
        .build()
        .await
}

/// Yields each time the election's Lease is seen free (no holder) or deleted, after the first
/// listing. Watch errors are logged and retried.
fn released(client: kube::Client, election: &Election) -> futures::stream::BoxStream<'static, ()> {
    let leases: Api<Lease> = Api::namespaced(client, &election.namespace);
    let config = watcher::Config::default().fields(&format!("metadata.name={}", election.lease));
    let lease = election.lease.clone();
    watch::retried(watcher(leases, config))
        .try_filter_map(|event| async move {
            Ok(match event {
                watcher::Event::Apply(lease) => is_free(&lease).then_some(()),
                watcher::Event::Delete(_) => Some(()),
                _ => None,
            })
        })
        .filter_map(move |event| {
            let lease = lease.clone();
            async move {
                event
                    .inspect_err(|error| debug!(%lease, "watching the election lease: {error}"))
                    .ok()
            }
        })
        .boxed()
}

/// A Lease nobody holds.
fn is_free(lease: &Lease) -> bool {
    lease
        .spec
        .as_ref()
        .and_then(|spec| spec.holder_identity.as_deref())
        .is_none_or(str::is_empty)
}

/// Stops the manager; if this replica holds the Lease, it is released.
async fn stop(
    leading: tokio::sync::watch::Receiver<bool>,
    task: tokio::task::JoinHandle<
        Result<kube_lease_manager::LeaseManager, kube_lease_manager::LeaseManagerError>,
    >,
    election: &Election,
) {
    drop(leading);
    match tokio::time::timeout(Duration::from_secs(5), task).await {
        Ok(Ok(Err(error))) => warn!(
            "cannot release the {} lease (it expires by itself): {error}",
            election.lease
        ),
        Err(_) => warn!(
            "releasing the {} lease takes too long; it expires by itself",
            election.lease
        ),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::coordination::v1::LeaseSpec;

    #[test]
    fn a_lease_without_a_holder_is_free() {
        let lease = |holder: Option<&str>| Lease {
            spec: Some(LeaseSpec {
                holder_identity: holder.map(str::to_string),
                ..LeaseSpec::default()
            }),
            ..Lease::default()
        };
        assert!(is_free(&lease(None)));
        assert!(is_free(&lease(Some(""))));
        assert!(!is_free(&lease(Some("operator-1"))));
        assert!(is_free(&Lease::default()), "no spec at all");
    }
}
