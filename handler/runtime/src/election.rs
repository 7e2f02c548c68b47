//! Leader election for the cluster-level writers (policy statuses, webhook certificates):
//! every replica runs, only the holder of a Lease (kube-lease-manager) writes.

use std::{future::Future, time::Duration};
use tracing::{info, warn};

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
    let seconds = election.duration.as_secs().max(2);
    let manager = kube_lease_manager::LeaseManagerBuilder::new(client, &election.lease)
        .with_namespace(&election.namespace)
        .with_identity(&election.identity)
        .with_duration(seconds)
        .with_grace((seconds / 3).max(1))
        .with_field_manager(&election.field_manager)
        .build()
        .await?;
    let (mut leading, task) = manager.watch().await;
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            changed = leading.wait_for(|leader| *leader) => if changed.is_err() { break },
        }
        info!(identity = %election.identity, lease = %election.lease, "leading: {}", election.role);
        let stop = tokio::select! {
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
        if stop {
            break;
        }
    }
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
    Ok(())
}
