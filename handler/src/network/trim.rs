//! Keeping a node's reported state under a size cap (`NMState.spec.stateReporting.maxBytes`),
//! so the API server never refuses its NodeNetworkState: a node with 1500 VLANs otherwise
//! reports more than etcd takes in one request (upstream #1505).
//!
//! Trimming is progressive and stops as soon as the state fits. Interfaces come in three tiers,
//! trimmed in this order: those NetworkManager ignores (container veths, CNI macvlans: nobody
//! configures them through policies), then managed virtual interfaces (which come in hundreds,
//! such as VLANs), then the rest (NICs, bonds, bridges), which keep their details longest.
//! 1. each tier in turn: its interfaces lose their details, then are summarized (name, type,
//!    state);
//! 2. running routes that are not configured go;
//! 3. whole interfaces go, tier by tier.
//!
//! Within a tier interfaces go by name, so the same state is always trimmed the same way and an
//! idle node is not rewritten. Sizes are of compact JSON, as the state is sent and stored.

use nmstate_api::state::StateTrimming;
use serde_json::{Map, Value};
use std::collections::HashSet;

/// Types that a node may have hundreds of, trimmed before the other managed interfaces.
const VIRTUAL_TYPES: [&str; 13] = [
    "vlan", "mac-vlan", "mac-vtap", "veth", "vxlan", "ipvlan", "dummy", "tun", "vrf", "macsec", "hsr",
    "xfrm", "ipsec",
];

/// What an interface keeps without its details, besides the section named after its type
/// (`vlan`, `mac-vlan`, ...).
const WITHOUT_DETAILS: [&str; 8] = [
    "name",
    "type",
    "state",
    "mac-address",
    "mtu",
    "controller",
    "ipv4",
    "ipv6",
];

/// What a summarized interface keeps.
const SUMMARY: [&str; 3] = ["name", "type", "state"];

/// How much of one interface is reported, from all of it to none.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Level {
    Full,
    WithoutDetails,
    Summary,
    Omitted,
}

/// `state` as reported under `max_bytes`, and what was left out if anything was.
pub fn to_cap(mut state: Value, max_bytes: usize) -> (Value, Option<StateTrimming>) {
    let state_bytes = size(&state);
    if state_bytes <= max_bytes {
        return (state, None);
    }
    let mut trimming = StateTrimming {
        max_bytes: max_bytes as u64,
        state_bytes: state_bytes as u64,
        ..StateTrimming::default()
    };
    let mut total = state_bytes;
    let mut interfaces: Vec<Value> = match state.get_mut("interfaces").map(Value::take) {
        Some(Value::Array(interfaces)) => interfaces,
        _ => Vec::new(),
    };
    let mut levels = vec![Level::Full; interfaces.len()];
    let order = trim_order(&interfaces);
    let tiers: Vec<Tier> = interfaces.iter().map(tier).collect();

    for this_tier in [Tier::Ignored, Tier::Virtual, Tier::Other] {
        for level in [Level::WithoutDetails, Level::Summary] {
            for &index in order.iter().filter(|&&index| tiers[index] == this_tier) {
                if total <= max_bytes {
                    break;
                }
                let before = size(&interfaces[index]);
                interfaces[index] = reduced(&interfaces[index], level);
                levels[index] = level;
                total -= before - size(&interfaces[index]);
            }
        }
    }
    if total > max_bytes {
        let omitted = drop_unconfigured_routes(&mut state, total - max_bytes);
        trimming.running_routes_omitted = omitted.0;
        total -= omitted.1;
    }
    for this_tier in [Tier::Ignored, Tier::Virtual, Tier::Other] {
        // The last by name go first, so what stays is what the earlier steps kept longest.
        for &index in order.iter().rev().filter(|&&index| tiers[index] == this_tier) {
            if total <= max_bytes {
                break;
            }
            total -= size(&interfaces[index]) + 1;
            levels[index] = Level::Omitted;
        }
    }

    let kept: Vec<Value> = interfaces
        .into_iter()
        .zip(&levels)
        .filter(|(_, level)| **level != Level::Omitted)
        .map(|(interface, _)| interface)
        .collect();
    let count = |wanted: Level| levels.iter().filter(|level| **level == wanted).count() as u32;
    trimming.interfaces_without_details = count(Level::WithoutDetails);
    trimming.interfaces_summarized = count(Level::Summary);
    trimming.interfaces_omitted = count(Level::Omitted);
    if let Some(object) = state.as_object_mut() {
        object.insert("interfaces".into(), Value::Array(kept));
    }
    // Only the other top-level keys (routes, rules, DNS) can still be too large: report the
    // interfaces alone rather than a state the API server refuses.
    if size(&state) > max_bytes {
        let interfaces = state.get_mut("interfaces").map(Value::take).unwrap_or_default();
        state = Value::Object(Map::from_iter([("interfaces".to_string(), interfaces)]));
    }
    trimming.reported_bytes = size(&state) as u64;
    (state, Some(trimming))
}

/// Which interfaces are trimmed first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Tier {
    Ignored,
    Virtual,
    Other,
}

fn tier(interface: &Value) -> Tier {
    let field = |name: &str| interface.get(name).and_then(Value::as_str).unwrap_or_default();
    if field("state") == "ignore" {
        Tier::Ignored
    } else if VIRTUAL_TYPES.contains(&field("type")) {
        Tier::Virtual
    } else {
        Tier::Other
    }
}

/// Indices of `interfaces` by name: the order they are trimmed in within a tier.
fn trim_order(interfaces: &[Value]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..interfaces.len()).collect();
    order.sort_by_key(|&index| {
        interfaces[index]
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or_default()
    });
    order
}

fn reduced(interface: &Value, level: Level) -> Value {
    let type_ = interface.get("type").and_then(Value::as_str).unwrap_or_default();
    let keep = |key: &str| match level {
        Level::Full => true,
        Level::WithoutDetails => WITHOUT_DETAILS.contains(&key) || key == type_,
        Level::Summary => SUMMARY.contains(&key),
        Level::Omitted => false,
    };
    match interface {
        Value::Object(fields) => Value::Object(
            fields
                .iter()
                .filter(|(key, _)| keep(key))
                .map(|(key, value)| (key.clone(), value.clone()))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// Drops running routes that are not configured, from the last, until `excess` bytes are gone
/// or none is left; returns how many went and their bytes.
fn drop_unconfigured_routes(state: &mut Value, excess: usize) -> (u32, usize) {
    let Some(routes) = state.get_mut("routes").and_then(Value::as_object_mut) else {
        return (0, 0);
    };
    let configured: HashSet<String> = routes
        .get("config")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(route_key)
        .collect();
    let Some(running) = routes.get_mut("running").and_then(Value::as_array_mut) else {
        return (0, 0);
    };
    let mut dropped = vec![false; running.len()];
    let (mut count, mut saved) = (0, 0);
    for (index, route) in running.iter().enumerate().rev() {
        if saved >= excess {
            break;
        }
        if !configured.contains(&route_key(route)) {
            dropped[index] = true;
            saved += size(route) + 1;
            count += 1;
        }
    }
    let mut index = 0;
    running.retain(|_| {
        index += 1;
        !dropped[index - 1]
    });
    (count, saved)
}

/// What tells routes apart: running routes carry values (metrics, tables) a configured route
/// may leave out.
fn route_key(route: &Value) -> String {
    ["destination", "next-hop-interface", "next-hop-address"]
        .map(|field| route.get(field).and_then(Value::as_str).unwrap_or_default())
        .join(" ")
}

fn size(value: &Value) -> usize {
    serde_json::to_vec(value).map_or(0, |bytes| bytes.len())
}

#[cfg(test)]
mod tests;
