//! Checks that a node still works after a network change. Each probe is retried every second
//! until it passes or its timeout (default 120 s, as upstream) runs out.

use crate::apply::external_probes;
use k8s_openapi::api::core::v1::{Namespace, Node};
use kube::{Api, Client};
use std::time::Duration;
use tokio::time::Instant;

/// Upstream's timeout for each probe.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(120);
const INTERVAL: Duration = Duration::from_secs(1);
/// One attempt may not take longer than this: a connection over a broken path hangs.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeFailure {
    pub reason: String,
}

/// What is checked after a change.
#[derive(Clone)]
pub enum Probe {
    /// The default gateway answers a ping through its interface.
    Gateway { timeout: Duration },
    /// One of the node's DNS servers resolves `host`.
    Dns { host: String, timeout: Duration },
    /// The API server answers (`GET /api/v1/namespaces/default`, as upstream).
    ApiServer { client: Client, timeout: Duration },
    /// This node's `Ready` condition is `True`.
    NodeReadiness {
        client: Client,
        node: String,
        timeout: Duration,
    },
}

impl Probe {
    /// The name upstream's messages use.
    pub fn name(&self) -> &'static str {
        match self {
            Probe::Gateway { .. } => "ping",
            Probe::Dns { .. } => "dns",
            Probe::ApiServer { .. } => "api-server",
            Probe::NodeReadiness { .. } => "node-readiness",
        }
    }

    fn timeout(&self) -> Duration {
        match self {
            Probe::Gateway { timeout }
            | Probe::Dns { timeout, .. }
            | Probe::ApiServer { timeout, .. }
            | Probe::NodeReadiness { timeout, .. } => *timeout,
        }
    }

    /// Retries the check until it passes or the probe's timeout runs out.
    pub async fn run(&self) -> Result<(), ProbeFailure> {
        let deadline = Instant::now() + self.timeout();
        loop {
            let reason = match tokio::time::timeout(ATTEMPT_TIMEOUT, self.check()).await {
                Ok(Ok(())) => return Ok(()),
                Ok(Err(reason)) => reason,
                Err(_) => format!("no answer within {} s", ATTEMPT_TIMEOUT.as_secs()),
            };
            if Instant::now() + INTERVAL >= deadline {
                return Err(ProbeFailure { reason });
            }
            tokio::time::sleep(INTERVAL).await;
        }
    }

    async fn check(&self) -> Result<(), String> {
        match self {
            Probe::Gateway { .. } => external_probes::ping_default_gateway(ATTEMPT_TIMEOUT / 2).await,
            Probe::Dns { host, .. } => {
                external_probes::resolve_through_node_servers(host, ATTEMPT_TIMEOUT / 2).await
            }
            Probe::ApiServer { client, .. } => Api::<Namespace>::all(client.clone())
                .get("default")
                .await
                .map(|_| ())
                .map_err(|error| error.to_string()),
            Probe::NodeReadiness { client, node, .. } => {
                let node = Api::<Node>::all(client.clone())
                    .get(node)
                    .await
                    .map_err(|error| error.to_string())?;
                let ready = node
                    .status
                    .and_then(|status| status.conditions)
                    .unwrap_or_default()
                    .iter()
                    .any(|condition| condition.type_ == "Ready" && condition.status == "True");
                if ready {
                    Ok(())
                } else {
                    Err("the node is not Ready".to_string())
                }
            }
        }
    }
}

/// The probes to run after a change: the ping and DNS probes only if they pass now, decided by
/// one attempt each (a probe that never worked on this node costs seconds, not its timeout);
/// the API server and node readiness probes always.
pub async fn select(client: &Client, node: &str, dns_host: &str, timeout: Duration) -> Vec<Probe> {
    let mut probes = Vec::new();
    for external in [
        Probe::Gateway { timeout },
        Probe::Dns {
            host: dns_host.to_string(),
            timeout,
        },
    ] {
        match tokio::time::timeout(ATTEMPT_TIMEOUT, external.check()).await {
            Ok(Ok(())) => probes.push(external),
            Ok(Err(reason)) => {
                tracing::info!(probe = external.name(), %reason, "not used: it fails before the change")
            }
            Err(_) => tracing::info!(probe = external.name(), "not used: no answer before the change"),
        }
    }
    probes.push(Probe::ApiServer {
        client: client.clone(),
        timeout,
    });
    probes.push(Probe::NodeReadiness {
        client: client.clone(),
        node: node.to_string(),
        timeout,
    });
    probes
}
