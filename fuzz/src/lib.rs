//! The fuzz targets' bodies: everything that parses what a user (or the API server on a user's
//! behalf) hands the product. Each target runs the code the programs run and checks what must
//! hold for any input, beyond not panicking:
//!
//! - `admission_review`: an AdmissionReview body through each of the four webhooks; a review
//!   with a request is always answered (one without is a 400), and a patch in the answer
//!   applies to the object it was made for.
//! - `capture`: a policy's `capture` and `desiredState` (YAML) against a node's state; a
//!   resolution computed afresh is the one reused from the enactment's captured states.
//! - `variables`: a policy's `variables` and `desiredState` (JSON); what the webhook admits,
//!   every node can substitute.
//! - `ip_pool`: a NodeNetworkIPPool's spec (JSON); the first free address is in the pool, is
//!   not the gateway, and exists exactly when the pool has a size.
//! - `node_state`: a retrieved network state (JSON) through the report's filter and size cap;
//!   the report fits the cap and says what it left out.
//!
//! Inputs that do not parse are uninteresting (the parsers' own errors are the answer) and
//! return early; the seeds in `fuzz/seeds/` give the fuzzer valid ones to mutate.

use kube::core::{
    DynamicObject,
    admission::{AdmissionResponse, AdmissionReview},
};
use nmstate::NetworkState;
use nmstate_api::{
    ip_pool::NodeNetworkIPPoolSpec,
    variables::{self, PolicyVariable, Resolved},
};
use nmstate_handler::network::{
    capture,
    filter::{self, ReportRules},
    trim,
};
use nmstate_webhook::server::{self, Review};
use serde::Deserialize;
use serde_json::Value;
use std::{collections::BTreeMap, net::IpAddr, sync::OnceLock};

pub fn admission_review(data: &[u8]) {
    let Ok(review) = serde_json::from_slice::<AdmissionReview<DynamicObject>>(data) else {
        return;
    };
    let Some(request) = &review.request else {
        // The server's 400.
        for kind in Review::ALL {
            assert!(
                server::review(kind, data).is_err(),
                "{kind:?}: a review without a request answered"
            );
        }
        return;
    };
    let object = request
        .object
        .as_ref()
        .and_then(|object| serde_json::to_value(object).ok());
    for kind in Review::ALL {
        let response = server::review(kind, data)
            .unwrap_or_else(|message| panic!("{kind:?}: a review with a request was refused: {message}"));
        assert_patch_applies(kind, &response, object.as_ref());
    }
}

fn assert_patch_applies(kind: Review, response: &AdmissionResponse, object: Option<&Value>) {
    let Some(patch) = &response.patch else {
        return;
    };
    assert!(response.allowed, "{kind:?}: a patch in a refusal");
    let patch: json_patch::Patch = serde_json::from_slice(patch)
        .unwrap_or_else(|error| panic!("{kind:?}: the patch is no JSON patch: {error}"));
    let mut object = object
        .cloned()
        .unwrap_or_else(|| panic!("{kind:?}: a patch without an object"));
    json_patch::patch(&mut object, &patch)
        .unwrap_or_else(|error| panic!("{kind:?}: the patch does not apply to its object: {error}"));
}

/// A policy's spec, as far as captures go.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct CaptureInput {
    #[serde(default)]
    capture: BTreeMap<String, String>,
    #[serde(default)]
    desired_state: Value,
}

/// The node the captures run against: a bridge over the NIC with the default route, DHCP.
fn node_network_state() -> &'static NetworkState {
    static STATE: OnceLock<NetworkState> = OnceLock::new();
    STATE.get_or_init(|| {
        NetworkState::new_from_yaml(include_str!(
            "../../handler/tests/fixtures/node-state-bridge-dhcp.yaml"
        ))
        .unwrap_or_else(|error| panic!("the node state fixture does not parse: {error}"))
    })
}

pub fn capture(data: &[u8]) {
    let Ok(input) = serde_yaml::from_slice::<CaptureInput>(data) else {
        return;
    };
    let fresh = capture::resolve(
        &input.capture,
        &input.desired_state,
        node_network_state(),
        &BTreeMap::new(),
    );
    let Ok(fresh) = fresh else { return };
    // What a later reconcile does: the captures are taken from the enactment, not recomputed.
    let reused = capture::resolve(
        &input.capture,
        &input.desired_state,
        node_network_state(),
        &fresh.captured,
    )
    .unwrap_or_else(|error| panic!("resolved afresh, but not from its own captures: {error}"));
    assert_eq!(
        reused, fresh,
        "captures reused from the enactment resolve differently"
    );
}

/// A policy's spec, as far as variables go.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct VariablesInput {
    #[serde(default)]
    variables: BTreeMap<String, PolicyVariable>,
    #[serde(default)]
    desired_state: Value,
}

pub fn variables(data: &[u8]) {
    let Ok(input) = serde_json::from_slice::<VariablesInput>(data) else {
        return;
    };
    let errors = variables::errors(&input.variables, &input.desired_state);
    // Values as a node resolves them: text from the Node or a perNode map, an address with a
    // gateway from a pool.
    let values: BTreeMap<String, Resolved> = input
        .variables
        .iter()
        .map(|(name, variable)| {
            let value = match variable.from_ip_pool {
                Some(_) => Resolved::Address {
                    address: IpAddr::from([192, 0, 2, 10]),
                    prefix: 24,
                    gateway: Some(IpAddr::from([192, 0, 2, 1])),
                },
                None => Resolved::Text(format!("value-of-{name}")),
            };
            (name.clone(), value)
        })
        .collect();
    let substituted = variables::substitute(&input.desired_state, &values);
    if errors.is_empty() {
        substituted.unwrap_or_else(|error| panic!("admitted by the webhook, refused on a node: {error}"));
    }
    if variables::references(&input.desired_state).is_empty() {
        assert_eq!(
            variables::substitute(&input.desired_state, &BTreeMap::new()).ok(),
            Some(input.desired_state),
            "a desired state without references is changed by substitution"
        );
    }
}

pub fn ip_pool(data: &[u8]) {
    let Ok(spec) = serde_json::from_slice::<NodeNetworkIPPoolSpec>(data) else {
        return;
    };
    let Ok(range) = spec.range() else { return };
    let size = range.size();
    let first = range.first_free(&[]);
    assert_eq!(first.is_some(), size > 0, "size {size}, first free {first:?}");
    let Some(first) = first else { return };
    assert_ne!(Some(first), range.gateway, "the gateway is handed out");
    let second = range.first_free(&[first]);
    assert_ne!(second, Some(first), "a taken address is handed out again");
    assert_eq!(second.is_some(), size > 1, "size {size}, second free {second:?}");
}

pub fn node_state(data: &[u8]) {
    // The first byte picks the cap (256 B to 64 KiB, so that small inputs are trimmed too).
    let Some((cap, state)) = data.split_first() else {
        return;
    };
    let Ok(state) = serde_json::from_slice::<Value>(state) else {
        return;
    };
    let max_bytes = 256 * (usize::from(*cap) + 1);
    let rules = ReportRules {
        exclude_interfaces: vec![pattern("mv*")],
        exclude_types: vec![pattern("vxlan")],
        max_bytes,
    };
    let filtered = filter::filter_for_report(state, &rules);
    let filtered_bytes = size(&filtered);
    let (reported, trimming) = trim::to_cap(filtered.clone(), max_bytes);
    let reported_bytes = size(&reported);
    match trimming {
        None => {
            assert!(
                filtered_bytes <= max_bytes,
                "{filtered_bytes} bytes above the cap, not trimmed"
            );
            assert_eq!(reported, filtered, "changed without being trimmed");
        }
        Some(trimming) => {
            assert!(
                reported_bytes <= max_bytes,
                "trimmed to {reported_bytes} bytes, above the cap {max_bytes}"
            );
            assert_eq!(
                trimming.reported_bytes, reported_bytes as u64,
                "reportedBytes is not the size reported"
            );
            assert_eq!(
                trimming.state_bytes, filtered_bytes as u64,
                "stateBytes is not the size before trimming"
            );
        }
    }
}

fn pattern(text: &str) -> glob::Pattern {
    glob::Pattern::new(text).unwrap_or_else(|error| panic!("{text}: {error}"))
}

fn size(value: &Value) -> usize {
    serde_json::to_vec(value).map_or(0, |bytes| bytes.len())
}
