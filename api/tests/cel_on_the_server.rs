//! The policy CRD's CEL rules, run by the real API server of the local environment (a current
//! release; 1.20 predates CEL) with no webhook registered, through `kubectl apply` as a user
//! would: each rule refuses its bad input with its message and accepts the good one. Each test
//! fails if its rule is taken out of the generated CRD (`manifests/crds`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: failing loudly is the point

use nmstate_localenv::{
    LocalEnv,
    testing::{install_crds, kubectl, kubectl_apply as apply, shared_env, unique_name},
};
use serde_json::{Value, json};

/// The environment, its CRDs installed, on a server that runs CEL rules.
async fn server_with_rules() -> LocalEnv {
    let env = shared_env().await.unwrap();
    let client = env.client().await.unwrap();
    let version = client.apiserver_version().await.unwrap();
    let minor = nmstate_api::crd::server_minor(&version);
    assert!(
        minor >= 25,
        "CEL rules need Kubernetes 1.25 or later; this environment runs {}: \
         run these tests with NMSTATE_KUBE_RELEASE=current",
        version.git_version
    );
    install_crds(&client).await.unwrap();
    env
}

fn policy(name: &str, spec: Value) -> Value {
    json!({"apiVersion": "nmstate.io/v1", "kind": "NodeNetworkConfigurationPolicy",
           "metadata": {"name": name}, "spec": spec})
}

fn delete(env: &LocalEnv, name: &str) {
    let _ = kubectl(env)
        .args(["delete", "nncp", name, "--ignore-not-found", "--wait=false"])
        .output();
}

/// `bad` is refused with `message` and `good` accepted, both as new policies.
async fn refuses_and_accepts(bad: Value, good: Value, message: &str) {
    let env = server_with_rules().await;
    let refused = apply(&env, &bad).expect_err("the bad policy was admitted");
    assert!(
        refused.contains(message),
        "refused, but not by the rule: {refused}"
    );
    let good_name = good["metadata"]["name"].as_str().unwrap().to_string();
    apply(&env, &good).unwrap_or_else(|error| panic!("the good policy was refused: {error}"));
    delete(&env, &good_name);
}

#[tokio::test]
async fn max_unavailable_must_be_a_count_or_a_percentage() {
    let name = unique_name("cel-limit");
    refuses_and_accepts(
        policy(&name, json!({"maxUnavailable": "101%"})),
        policy(&name, json!({"maxUnavailable": "50%"})),
        "maxUnavailable must be a non-negative integer or a percentage from 0% to 100%",
    )
    .await;
}

#[tokio::test]
async fn node_selector_keys_must_be_qualified_names() {
    let name = unique_name("cel-keys");
    refuses_and_accepts(
        policy(&name, json!({"nodeSelector": {"bad key": "x"}})),
        policy(&name, json!({"nodeSelector": {"kubernetes.io/hostname": "x"}})),
        "nodeSelector keys must be valid qualified names",
    )
    .await;
}

#[tokio::test]
async fn node_selector_values_must_be_label_values() {
    let name = unique_name("cel-values");
    refuses_and_accepts(
        policy(&name, json!({"nodeSelector": {"role": "a b"}})),
        policy(&name, json!({"nodeSelector": {"role": "a-b"}})),
        "nodeSelector values must be valid label values",
    )
    .await;
}

#[tokio::test]
async fn policy_names_must_be_label_values() {
    // The API server itself takes names of up to 253 characters.
    refuses_and_accepts(
        policy(&format!("cel-{}", "n".repeat(60)), json!({})),
        policy(&unique_name("cel-name"), json!({})),
        "invalid policy name: must be no more than 63 characters or match label value format",
    )
    .await;
}

#[tokio::test]
async fn capture_cannot_be_modified() {
    let env = server_with_rules().await;
    let name = unique_name("cel-capture");
    let with = |expression: &str| policy(&name, json!({"capture": {"gw": expression}}));
    apply(&env, &with("routes.running.destination==\"0.0.0.0/0\"")).unwrap();
    let refused = apply(&env, &with("routes.running.destination==\"::/0\""))
        .expect_err("a changed capture was admitted");
    assert!(
        refused.contains("invalid policy operation: capture field cannot be modified"),
        "{refused}"
    );
    apply(
        &env,
        &policy(
            &name,
            json!({"capture": {"gw": "routes.running.destination==\"0.0.0.0/0\""},
                                      "maxUnavailable": 1}),
        ),
    )
    .unwrap_or_else(|error| panic!("another field may change: {error}"));
    delete(&env, &name);
}
