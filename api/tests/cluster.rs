//! The generated CRDs against the real kube-apiserver (with etcd and the controller manager) of
//! the local environment, current or v1.20.2 (`NMSTATE_KUBE_RELEASE`): they install, every kind
//! can be created, read, updated and deleted, deprecated versions are served and stored as the
//! storage version, kubectl prints the status columns, owner references are garbage-collected,
//! and status applies leave the labels' ownership as the writers assume.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: failing loudly is the point

use k8s_openapi::{api::core::v1::Node, apimachinery::pkg::apis::meta::v1::OwnerReference};
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{ApiResource, DeleteParams, DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams},
};
use nmstate_api::{
    NMState, NMStateSpec, NodeNetworkConfigurationEnactment, NodeNetworkConfigurationPolicy,
    NodeNetworkConfigurationPolicySpec, NodeNetworkState, enactment::NodeNetworkConfigurationEnactmentFields,
    labels, state::NodeNetworkStateFields,
};
use nmstate_localenv::{
    LocalEnv,
    testing::{etcdctl, install_crds, kubectl, shared_env, unique_name},
};
use serde_json::{Value, json};
use std::{path::Path, time::Duration};

const FIELD_MANAGER: &str = "nmstate-tests";

/// The environment, with the checked-in CRDs from `manifests/crds/` applied and established.
async fn setup() -> (LocalEnv, Client) {
    let env = shared_env()
        .await
        .expect("local environment (see `make cluster-up`)");
    let client = env.client().await.unwrap();
    let installed = install_crds(&client)
        .await
        .expect("the API server accepts the generated CRDs");
    assert_eq!(
        installed.len(),
        5,
        "expected the five nmstate.io CRDs, got {installed:?}"
    );
    (env, client)
}

fn nncp(name: &str) -> NodeNetworkConfigurationPolicy {
    let spec: NodeNetworkConfigurationPolicySpec = serde_json::from_value(json!({
        "nodeSelector": {"node-role.kubernetes.io/worker": ""},
        "maxUnavailable": "50%",
        "desiredState": {"interfaces": [{"name": "eth1", "type": "ethernet", "state": "up", "ipv4": {"enabled": true, "dhcp": true}}]},
    }))
    .unwrap();
    NodeNetworkConfigurationPolicy::new(name, spec)
}

fn status_patch<K: Resource<DynamicType = ()>>(status: Value) -> Value {
    json!({"apiVersion": K::api_version(&()), "kind": K::kind(&()), "status": status})
}

fn available_condition() -> Value {
    json!([{
        "type": "Available", "status": "True", "reason": "SuccessfullyConfigured",
        "message": "1/1 nodes successfully configured",
        "lastHeartbeatTime": "2026-01-02T03:04:05Z", "lastTransitionTime": "2026-01-02T03:04:05Z",
    }, {
        "type": "Degraded", "status": "False", "reason": "SuccessfullyConfigured",
        "lastHeartbeatTime": "2026-01-02T03:04:05Z", "lastTransitionTime": "2026-01-02T03:04:05Z",
    }])
}

async fn delete_and_wait<K>(api: &Api<K>, name: &str)
where
    K: Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned,
{
    api.delete(name, &DeleteParams::default()).await.unwrap();
    let gone = async {
        while api.get_opt(name).await.unwrap().is_some() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(30), gone)
        .await
        .expect("object deleted within 30 s");
}

/// Every example manifest is accepted as is: nothing pruned, nothing changed (a server-side
/// dry run, so nothing is stored).
#[tokio::test]
async fn every_example_is_accepted_unchanged_by_the_api_server() {
    let (_env, client) = setup().await;
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .collect();
    files.sort();
    let dry_run = PostParams {
        dry_run: true,
        ..PostParams::default()
    };
    let mut checked = 0;
    for file in files
        .iter()
        .filter(|path| path.extension().is_some_and(|ext| ext == "yaml"))
    {
        let text = std::fs::read_to_string(file).unwrap();
        for document in serde_yaml::Deserializer::from_str(&text) {
            let original = <Value as serde::Deserialize>::deserialize(document).unwrap();
            let resource = match original["kind"].as_str().unwrap() {
                "NMState" => ApiResource::erase::<NMState>(&()),
                "NodeNetworkConfigurationPolicy" => ApiResource::erase::<NodeNetworkConfigurationPolicy>(&()),
                "NodeNetworkIPPool" => ApiResource::erase::<nmstate_api::ip_pool::NodeNetworkIPPool>(&()),
                other => panic!("{}: unexpected kind {other}", file.display()),
            };
            let api: Api<DynamicObject> = Api::all_with(client.clone(), &resource);
            let object: DynamicObject = serde_json::from_value(original.clone()).unwrap();
            let accepted = api
                .create(&dry_run, &object)
                .await
                .unwrap_or_else(|error| panic!("{} refused: {error}", file.display()));
            let mut expected = original["spec"].clone();
            if original["kind"] == "NMState" {
                // The server fills in NMState's documented defaults; everything given stays.
                for (key, value) in accepted.data["spec"].as_object().unwrap() {
                    expected
                        .as_object_mut()
                        .unwrap()
                        .entry(key.clone())
                        .or_insert(value.clone());
                }
            }
            assert_eq!(
                accepted.data["spec"],
                expected,
                "{}: the server changed the spec",
                file.display()
            );
            checked += 1;
        }
    }
    assert!(checked >= 20, "only {checked} examples checked");
}

#[tokio::test]
async fn policy_round_trips_through_the_api_server_with_its_status() {
    let (_env, client) = setup().await;
    let policies: Api<NodeNetworkConfigurationPolicy> = Api::all(client);
    let name = unique_name("crud-nncp");
    let created = policies
        .create(&PostParams::default(), &nncp(&name))
        .await
        .unwrap();
    assert_eq!(
        created.spec,
        nncp(&name).spec,
        "the server pruned or changed spec fields"
    );
    assert_eq!(created.metadata.generation, Some(1));

    let status = json!({"conditions": available_condition(), "unavailableNodeCountMap": {"1": 0}});
    let params = PatchParams::apply(FIELD_MANAGER).force();
    policies
        .patch_status(
            &name,
            &params,
            &Patch::Apply(status_patch::<NodeNetworkConfigurationPolicy>(status)),
        )
        .await
        .unwrap();
    let read = policies.get(&name).await.unwrap();
    let status = read.status.unwrap();
    assert_eq!(status.conditions.len(), 2);
    assert_eq!(status.conditions[0].reason, "SuccessfullyConfigured");
    assert_eq!(status.unavailable_node_count_map.unwrap()["1"], 0);
    assert_eq!(
        read.metadata.generation,
        Some(1),
        "a status write must not bump the generation"
    );

    delete_and_wait(&policies, &name).await;
}

#[tokio::test]
async fn nmstate_gets_upstreams_defaults_and_a_status() {
    let (_env, client) = setup().await;
    let nmstates: Api<NMState> = Api::all(client);
    let name = unique_name("crud-nmstate");
    let created = nmstates
        .create(
            &PostParams::default(),
            &NMState::new(&name, NMStateSpec::default()),
        )
        .await
        .unwrap();
    let spec = serde_json::to_value(&created.spec).unwrap();
    assert_eq!(
        spec["probeConfiguration"],
        json!({"dns": {"host": "root-servers.net"}})
    );
    assert_eq!(spec["logLevel"], "info");
    assert_eq!(spec["metricsConfiguration"], json!({"bindAddress": ":8089"}));

    let status =
        json!({"conditions": [{"type": "Available", "status": "True", "reason": "SuccessfullyDeployed"}]});
    let params = PatchParams::apply(FIELD_MANAGER).force();
    nmstates
        .patch_status(&name, &params, &Patch::Apply(status_patch::<NMState>(status)))
        .await
        .unwrap();
    assert!(nmstates.get(&name).await.unwrap().status.unwrap().conditions[0].is_true());
    delete_and_wait(&nmstates, &name).await;
}

#[tokio::test]
async fn enactment_and_node_state_have_no_spec_and_keep_their_status() {
    let (_env, client) = setup().await;
    let enactments: Api<NodeNetworkConfigurationEnactment> = Api::all(client.clone());
    let states: Api<NodeNetworkState> = Api::all(client);
    let node = unique_name("crud-node");
    let params = PatchParams::apply(FIELD_MANAGER).force();

    let mut enactment = NodeNetworkConfigurationEnactment::new(
        &format!("{node}.some-policy"),
        NodeNetworkConfigurationEnactmentFields {},
    );
    enactment.labels_mut().insert(labels::NODE.into(), node.clone());
    enactment
        .labels_mut()
        .insert(labels::POLICY.into(), "some-policy".into());
    let name = enactments
        .create(&PostParams::default(), &enactment)
        .await
        .unwrap()
        .name_any();
    let status = json!({
        "policyGeneration": 3,
        "desiredState": {"interfaces": [{"name": "br1", "type": "linux-bridge", "state": "up"}]},
        "capturedStates": {"gw": {"state": {"routes": {"running": []}}, "metaInfo": {"version": "0"}}},
        "features": ["static-route"],
        "conditions": available_condition(),
    });
    enactments
        .patch_status(
            &name,
            &params,
            &Patch::Apply(status_patch::<NodeNetworkConfigurationEnactment>(status.clone())),
        )
        .await
        .unwrap();
    let raw: Api<DynamicObject> = Api::all_with(
        enactments.clone().into_client(),
        &ApiResource::erase::<NodeNetworkConfigurationEnactment>(&()),
    );
    let stored = raw.get(&name).await.unwrap();
    assert!(
        !stored.data.as_object().unwrap().contains_key("spec"),
        "enactments carry no spec: {:?}",
        stored.data
    );
    assert_eq!(stored.data["status"]["desiredState"], status["desiredState"]);
    assert_eq!(stored.data["status"]["capturedStates"], status["capturedStates"]);
    assert_eq!(
        enactments
            .get(&name)
            .await
            .unwrap()
            .status
            .unwrap()
            .policy_generation,
        Some(3)
    );
    delete_and_wait(&enactments, &name).await;

    let created = states
        .create(
            &PostParams::default(),
            &NodeNetworkState::new(&node, NodeNetworkStateFields {}),
        )
        .await
        .unwrap();
    let status = json!({
        "currentState": {"interfaces": [{"name": "eth1", "type": "ethernet", "state": "up"}], "route-rules": {"config": []}},
        "hostNetworkManagerVersion": "1.42.4",
        "handlerNmstateVersion": "2.2.62",
        "lastSuccessfulUpdateTime": "2026-01-02T03:04:05Z",
    });
    states
        .patch_status(
            &node,
            &params,
            &Patch::Apply(status_patch::<NodeNetworkState>(status.clone())),
        )
        .await
        .unwrap();
    let read = serde_json::to_value(states.get(&created.name_any()).await.unwrap().status.unwrap()).unwrap();
    assert_eq!(
        read, status,
        "node state status changed on its way through the API server"
    );
    delete_and_wait(&states, &node).await;
}

#[tokio::test]
async fn v1beta1_policy_is_served_with_a_warning_and_stored_as_v1() {
    let (env, client) = setup().await;
    let name = unique_name("v1beta1-nncp");
    let v1beta1 = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("nmstate.io", "v1beta1", "NodeNetworkConfigurationPolicy"),
        "nodenetworkconfigurationpolicies",
    );
    let old_api: Api<DynamicObject> = Api::all_with(client.clone(), &v1beta1);
    let spec = serde_json::to_value(&nncp(&name).spec).unwrap();
    let object = DynamicObject::new(&name, &v1beta1).data(json!({ "spec": spec }));
    let created = old_api.create(&PostParams::default(), &object).await.unwrap();
    assert_eq!(created.types.unwrap().api_version, "nmstate.io/v1beta1");

    // Read back as v1: the same object.
    let policies: Api<NodeNetworkConfigurationPolicy> = Api::all(client);
    assert_eq!(policies.get(&name).await.unwrap().spec, nncp(&name).spec);

    // What etcd holds is the storage version.
    let key = format!("/registry/nmstate.io/nodenetworkconfigurationpolicies/{name}");
    let output = etcdctl(&env)
        .unwrap()
        .args(["get", &key, "--print-value-only"])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "etcdctl: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stored: Value = serde_json::from_slice(&output.stdout).expect("etcd holds the object as JSON");
    assert_eq!(stored["apiVersion"], "nmstate.io/v1");
    assert_eq!(stored["spec"], spec);

    // Clients of the deprecated version are warned.
    let output = kubectl(&env)
        .args([
            "get",
            "nodenetworkconfigurationpolicies.v1beta1.nmstate.io",
            &name,
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(
        stderr.contains("nmstate.io/v1beta1 NodeNetworkConfigurationPolicy is deprecated"),
        "{stderr}"
    );
    let output = kubectl(&env)
        .args(["get", "nmstates.v1beta1.nmstate.io"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("nmstate/v1beta1 deprecated, use nmstate/v1 instead"),
        "{stderr}"
    );

    delete_and_wait(&policies, &name).await;
}

#[tokio::test]
async fn kubectl_prints_the_status_and_reason_columns_by_short_name() {
    let (env, client) = setup().await;
    let policies: Api<NodeNetworkConfigurationPolicy> = Api::all(client);
    let name = unique_name("columns");
    policies
        .create(&PostParams::default(), &nncp(&name))
        .await
        .unwrap();
    let status = status_patch::<NodeNetworkConfigurationPolicy>(json!({"conditions": available_condition()}));
    policies
        .patch_status(
            &name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(status),
        )
        .await
        .unwrap();

    let output = kubectl(&env).args(["get", "nncp", &name]).output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let lines: Vec<Vec<&str>> = stdout
        .lines()
        .map(|line| line.split_whitespace().collect())
        .collect();
    // Upstream's columns first (scripts that cut them keep working), then the progress.
    assert_eq!(lines[0], ["NAME", "STATUS", "REASON", "MESSAGE"], "{stdout}");
    assert_eq!(
        lines[1][..3],
        [name.as_str(), "Available", "SuccessfullyConfigured"],
        "{stdout}"
    );
    assert!(stdout.contains("1/1 nodes successfully configured"), "{stdout}");

    for short_name in ["nnce", "nns"] {
        let output = kubectl(&env).args(["get", short_name]).output().unwrap();
        assert!(
            output.status.success(),
            "kubectl get {short_name}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    delete_and_wait(&policies, &name).await;
}

#[tokio::test]
async fn deleting_a_node_garbage_collects_its_node_state() {
    let (_env, client) = setup().await;
    let nodes: Api<Node> = Api::all(client.clone());
    let states: Api<NodeNetworkState> = Api::all(client);
    let name = unique_name("gc-node");
    let node = nodes
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": name}})).unwrap(),
        )
        .await
        .unwrap();
    let mut state = NodeNetworkState::new(&name, NodeNetworkStateFields {});
    state.metadata.owner_references = Some(vec![OwnerReference {
        api_version: "v1".into(),
        kind: "Node".into(),
        name: name.clone(),
        uid: node.uid().unwrap(),
        ..OwnerReference::default()
    }]);
    states.create(&PostParams::default(), &state).await.unwrap();

    nodes.delete(&name, &DeleteParams::default()).await.unwrap();
    // The garbage collector picks up a new CRD kind at its next discovery resync (30 s).
    let started = std::time::Instant::now();
    let collected = async {
        while states.get_opt(&name).await.unwrap().is_some() {
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(120), collected)
        .await
        .expect("the controller manager garbage-collects the NodeNetworkState of a deleted Node");
    eprintln!(
        "node state collected {:.1} s after its node was deleted",
        started.elapsed().as_secs_f64()
    );
}

/// The managers that own `name`'s labels and its status, as `managedFields` says.
async fn owners(api: &Api<NodeNetworkConfigurationEnactment>, name: &str) -> (Vec<String>, Vec<String>) {
    let object = api.get(name).await.unwrap();
    let owning = |field: &str| {
        object
            .managed_fields()
            .iter()
            .filter(|entry| {
                entry.fields_v1.as_ref().is_some_and(|fields| {
                    fields.0.get("f:metadata").and_then(|m| m.get(field)).is_some()
                        || fields.0.get(field).is_some()
                })
            })
            .filter_map(|entry| entry.manager.clone())
            .collect::<Vec<_>>()
    };
    (owning("f:labels"), owning("f:status"))
}

/// The handler and the operator apply an object and its status under two field managers. This
/// is why: before 1.22 a server keeps one managedFields entry per manager for the object and its
/// `/status`, so an apply to `/status` by the manager that applied the labels takes their
/// ownership away (they are then never removed by that manager's later applies, and nobody
/// conflicts on them). From 1.22 on `/status` has its own entry; the two managers work on both.
#[tokio::test]
async fn status_applies_keep_the_labels_owned_by_whoever_applied_them() {
    let (_env, client) = setup().await;
    let minor = nmstate_api::crd::server_minor(&client.apiserver_version().await.unwrap());
    let enactments: Api<NodeNetworkConfigurationEnactment> = Api::all(client);
    let status =
        status_patch::<NodeNetworkConfigurationEnactment>(json!({"conditions": available_condition()}));
    for (status_manager, labels_kept) in [("nmstate-tests-status", true), (FIELD_MANAGER, minor >= 22)] {
        let name = unique_name("owners");
        let object = json!({
            "apiVersion": NodeNetworkConfigurationEnactment::api_version(&()),
            "kind": NodeNetworkConfigurationEnactment::kind(&()),
            "metadata": {"name": name, "labels": {labels::POLICY: "some-policy"}},
        });
        let apply = |manager| PatchParams::apply(manager).force();
        enactments
            .patch(&name, &apply(FIELD_MANAGER), &Patch::Apply(&object))
            .await
            .unwrap();
        enactments
            .patch_status(&name, &apply(status_manager), &Patch::Apply(&status))
            .await
            .unwrap();
        let (labels_by, status_by) = owners(&enactments, &name).await;
        assert_eq!(status_by, [status_manager], "1.{minor}");
        let expected_labels_by: &[&str] = if labels_kept { &[FIELD_MANAGER] } else { &[] };
        assert_eq!(
            labels_by, expected_labels_by,
            "1.{minor}, status applied by {status_manager}"
        );
        delete_and_wait(&enactments, &name).await;
    }
}
