//! A policy's variables on this node (`spec.variables`), resolved before captures: values from
//! the Node, per node name, and addresses from NodeNetworkIPPools.
//!
//! An address is allocated in the pool's status, written with the pool's resourceVersion: two
//! nodes that pick the same free address conflict, and the loser picks again. It stays the
//! node's for this policy and variable across restarts and reboots, and goes when the node
//! stops being selected or the policy goes ([`release`]). Allocations whose enactment is gone
//! (the node went while its handler could not release) are reclaimed when a pool runs out.

use super::EnactmentError;
use k8s_openapi::api::core::v1::Node;
use kube::{Api, Client, ResourceExt, api::PostParams};
use nmstate_api::{
    NodeNetworkConfigurationEnactment, NodeNetworkConfigurationPolicy,
    enactment::{EnactmentConditionReason as Reason, enactment_name},
    ip_pool::{IPAllocation, NodeNetworkIPPool},
    variables::{FromNode, NodeField, PolicyVariable, Resolved},
};
use nmstate_runtime::kube_errors::is_conflict;
use std::{collections::BTreeMap, net::IpAddr};
use tracing::{info, warn};

/// How often a pool's status write is tried again after losing a race to another node.
const ALLOCATION_ATTEMPTS: usize = 8;

/// Why a policy's variables have no value on this node; nothing is applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unresolved {
    pub reason: Reason,
    pub message: String,
}

impl Unresolved {
    fn variable(name: &str, problem: impl std::fmt::Display) -> Self {
        Unresolved {
            reason: Reason::VariableUnresolved,
            message: format!("variable {name:?}: {problem}"),
        }
    }
}

/// What a policy's variables come to on this node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Resolution {
    Resolved(BTreeMap<String, Resolved>),
    Unresolved(Unresolved),
    /// The policy was deleted while an address was being allocated for it (this reconcile
    /// worked from a cache that still had it): the address was given back.
    PolicyGone,
}

/// The values of `policy`'s variables on `node`, allocating pool addresses as needed.
pub async fn resolve(
    client: &Client,
    policy: &NodeNetworkConfigurationPolicy,
    node: &Node,
) -> Result<Resolution, EnactmentError> {
    let mut values = BTreeMap::new();
    let mut allocated = false;
    for (name, variable) in policy.spec.variables.iter().flatten() {
        let value = match &variable.from_ip_pool {
            Some(pool) => {
                let value = allocate(client, &pool.name, &node.name_any(), &policy.name_any(), name).await?;
                allocated |= value.as_ref().is_ok_and(|(_, new)| *new);
                value.map(|(value, _)| value)
            }
            None => from_node(name, variable, node),
        };
        match value {
            Ok(value) => values.insert(name.clone(), value),
            Err(unresolved) => return Ok(Resolution::Unresolved(unresolved)),
        };
    }
    // Checked after the allocation is written: a deletion after this check releases it (on
    // the policy's Delete event), one before it is released here.
    if allocated && !super::objects::policy_still_exists(client, policy).await? {
        info!(policy = %policy.name_any(), "the policy was deleted while allocating: giving the address back");
        release(client, policy, &node.name_any()).await;
        return Ok(Resolution::PolicyGone);
    }
    Ok(Resolution::Resolved(values))
}

/// A `fromNode` or `perNode` value.
pub fn from_node(name: &str, variable: &PolicyVariable, node: &Node) -> Result<Resolved, Unresolved> {
    let node_name = node.name_any();
    if let Some(per_node) = &variable.per_node {
        return per_node
            .get(&node_name)
            .map(|value| Resolved::Text(value.clone()))
            .ok_or_else(|| {
                Unresolved::variable(
                    name,
                    format!("perNode has no value for node {node_name}; add one"),
                )
            });
    }
    let Some(from_node) = &variable.from_node else {
        return Err(Unresolved::variable(
            name,
            "set one of fromNode, perNode, fromIPPool",
        ));
    };
    match from_node {
        FromNode {
            field: Some(NodeField::Name),
            ..
        } => Ok(Resolved::Text(node_name)),
        FromNode { label: Some(key), .. } => node
            .labels()
            .get(key)
            .map(|value| Resolved::Text(value.clone()))
            .ok_or_else(|| {
                Unresolved::variable(
                    name,
                    format!("node {node_name} has no label {key:?}; label it, or change the variable"),
                )
            }),
        FromNode {
            annotation: Some(key),
            ..
        } => node
            .annotations()
            .get(key)
            .map(|value| Resolved::Text(value.clone()))
            .ok_or_else(|| {
                Unresolved::variable(
                    name,
                    format!(
                        "node {node_name} has no annotation {key:?}; annotate it, or change the variable"
                    ),
                )
            }),
        FromNode { .. } => Err(Unresolved::variable(
            name,
            "fromNode needs one of field, label, annotation",
        )),
    }
}

/// This node's address in `pool_name` for `policy`'s `variable`: the one it has, or the first
/// free one (then `true`).
async fn allocate(
    client: &Client,
    pool_name: &str,
    node: &str,
    policy: &str,
    variable: &str,
) -> Result<Result<(Resolved, bool), Unresolved>, EnactmentError> {
    let pools: Api<NodeNetworkIPPool> = Api::all(client.clone());
    let ours = |allocation: &IPAllocation| {
        allocation.node == node && allocation.policy == policy && allocation.variable == variable
    };
    let started = std::time::Instant::now();
    for attempt in 1..=ALLOCATION_ATTEMPTS {
        let Some(mut pool) = pools.get_opt(pool_name).await? else {
            let problem = format!("NodeNetworkIPPool {pool_name} does not exist; create it");
            return Ok(Err(Unresolved::variable(variable, problem)));
        };
        let range = match pool.spec.range() {
            Ok(range) => range,
            Err(error) => {
                return Ok(Err(Unresolved::variable(
                    variable,
                    format!("NodeNetworkIPPool {pool_name}: {error}"),
                )));
            }
        };
        let address = |ip: IpAddr| Resolved::Address {
            address: ip,
            prefix: range.prefix,
            gateway: range.gateway,
        };
        let mut status = pool.status.clone().unwrap_or_default();
        if let Some(ip) = status
            .allocations
            .iter()
            .find(|a| ours(a))
            .and_then(|a| a.address.parse().ok())
        {
            return Ok(Ok((address(ip), false)));
        }
        let mut free = range.first_free(&taken(&status.allocations));
        if free.is_none() {
            let stale = stale(client, &status.allocations).await?;
            if !stale.is_empty() {
                info!(
                    pool = pool_name,
                    reclaimed = stale.len(),
                    "reclaiming addresses whose enactment is gone"
                );
                status
                    .allocations
                    .retain(|allocation| !stale.contains(allocation));
                free = range.first_free(&taken(&status.allocations));
            }
        }
        let Some(ip) = free else {
            let message = format!(
                "variable {variable:?}: NodeNetworkIPPool {pool_name} has no free address ({} of {} allocated); \
                 widen the pool, or free an address",
                status.allocations.len(),
                range.size()
            );
            return Ok(Err(Unresolved {
                reason: Reason::IPPoolExhausted,
                message,
            }));
        };
        status.allocations.push(IPAllocation {
            address: ip.to_string(),
            node: node.to_string(),
            policy: policy.to_string(),
            variable: variable.to_string(),
        });
        status.recount();
        status.size = range.size();
        pool.status = Some(status);
        // The object as read, with its resourceVersion: a concurrent allocation conflicts.
        match pools
            .replace_status(pool_name, &PostParams::default(), &pool)
            .await
        {
            Ok(_) => {
                let milliseconds = started.elapsed().as_millis();
                info!(pool = pool_name, %ip, policy, variable, attempt, milliseconds, "allocated an address");
                return Ok(Ok((address(ip), true)));
            }
            Err(error) if is_conflict(&error) => continue,
            Err(error) => return Err(error.into()),
        }
    }
    Err(EnactmentError::Contended(format!(
        "NodeNetworkIPPool {pool_name}"
    )))
}

fn taken(allocations: &[IPAllocation]) -> Vec<IpAddr> {
    allocations
        .iter()
        .filter_map(|allocation| allocation.address.parse().ok())
        .collect()
}

/// Allocations whose enactment no longer exists.
async fn stale(client: &Client, allocations: &[IPAllocation]) -> Result<Vec<IPAllocation>, EnactmentError> {
    // One list of the enactments of the policies holding addresses, not a read per address:
    // a starved node looks again every few seconds.
    let policies: std::collections::BTreeSet<&str> = allocations.iter().map(|a| a.policy.as_str()).collect();
    if policies.is_empty() {
        return Ok(Vec::new());
    }
    let selector = format!(
        "{} in ({})",
        nmstate_api::labels::POLICY,
        policies.into_iter().collect::<Vec<_>>().join(",")
    );
    let enactments: Api<NodeNetworkConfigurationEnactment> = Api::all(client.clone());
    let existing: std::collections::BTreeSet<String> = enactments
        .list_metadata(&kube::api::ListParams::default().labels(&selector))
        .await?
        .into_iter()
        .map(|enactment| enactment.name_any())
        .collect();
    Ok(allocations
        .iter()
        .filter(|allocation| !existing.contains(&enactment_name(&allocation.node, &allocation.policy)))
        .cloned()
        .collect())
}

/// Gives back the addresses `policy` holds for `node` in the pools its variables name: the
/// node is no longer selected, or the policy is gone.
pub async fn release(client: &Client, policy: &NodeNetworkConfigurationPolicy, node: &str) {
    let pools: Api<NodeNetworkIPPool> = Api::all(client.clone());
    let policy_name = policy.name_any();
    let mut pool_names: Vec<&String> = policy
        .spec
        .variables
        .iter()
        .flatten()
        .filter_map(|(_, variable)| variable.from_ip_pool.as_ref().map(|pool| &pool.name))
        .collect();
    pool_names.sort();
    pool_names.dedup();
    for pool_name in pool_names {
        for _ in 0..ALLOCATION_ATTEMPTS {
            let released = async {
                let Some(mut pool) = pools.get_opt(pool_name).await? else {
                    return Ok(true);
                };
                let mut status = pool.status.clone().unwrap_or_default();
                let before = status.allocations.len();
                status
                    .allocations
                    .retain(|a| !(a.node == node && a.policy == policy_name));
                if status.allocations.len() == before {
                    return Ok(true);
                }
                status.recount();
                pool.status = Some(status);
                match pools
                    .replace_status(pool_name, &PostParams::default(), &pool)
                    .await
                {
                    Ok(_) => {
                        info!(pool = %pool_name, policy = %policy_name, "released this node's address");
                        Ok(true)
                    }
                    Err(error) if is_conflict(&error) => Ok(false),
                    Err(error) => Err(error),
                }
            };
            match released.await {
                Ok(true) => break,
                Ok(false) => continue,
                Err(error) => {
                    // Reclaimed later, when the pool runs out and the enactment is gone.
                    warn!(pool = %pool_name, policy = %policy_name, "cannot release this node's address: {error}");
                    break;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
