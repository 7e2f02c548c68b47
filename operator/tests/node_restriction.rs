//! A handler writes only its own node's objects: the ValidatingAdmissionPolicy the operator
//! renders for 1.30+ servers, against the real API server with real ServiceAccount tokens bound
//! to handler pods on two nodes (the tokens carry `authentication.kubernetes.io/node-name`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: failing loudly is the point

use k8s_openapi::api::{
    authentication::v1::TokenRequest,
    coordination::v1::Lease,
    core::v1::{Namespace, Node, Pod, ServiceAccount},
};
use kube::{
    Api, Client, Discovery, ResourceExt,
    api::{DeleteParams, DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams},
};
use nmstate_api::{NodeNetworkConfigurationEnactment, NodeNetworkState};
use nmstate_localenv::testing::{create_namespace, eventually, install_crds, shared_env, unique_name};
use nmstate_operator::{
    config::OperatorConfig,
    render::{ClusterFacts, render},
};
use serde_json::{Value, json};
use std::time::Duration;

/// The handler's objects and the node restriction, as the operator renders them for `namespace`.
fn handler_objects(namespace: &str, prefix: &str) -> Vec<Value> {
    let config = OperatorConfig {
        handler_namespace: namespace.into(),
        handler_prefix: prefix.into(),
        ..OperatorConfig::defaults()
    };
    let facts = ClusterFacts {
        server_minor: 37,
        tolerated_infra_taints: 0,
    };
    let objects = render(&Default::default(), &config, &facts).unwrap();
    let kinds = [
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",
        "RoleBinding",
        "ValidatingAdmissionPolicy",
        "ValidatingAdmissionPolicyBinding",
    ];
    objects
        .into_iter()
        .filter(|object| {
            kinds.contains(&object["kind"].as_str().unwrap())
                && object["metadata"]["name"]
                    .as_str()
                    .unwrap()
                    .contains("nmstate-handler")
        })
        .collect()
}

async fn apply_all(client: &Client, objects: &[Value]) {
    let discovery = Discovery::new(client.clone()).run().await.unwrap();
    for object in objects {
        let (group, version) = object["apiVersion"]
            .as_str()
            .unwrap()
            .rsplit_once('/')
            .unwrap_or(("", "v1"));
        let gvk = GroupVersionKind::gvk(group, version, object["kind"].as_str().unwrap());
        let (resource, capabilities) = discovery.resolve_gvk(&gvk).expect("served");
        let typed: DynamicObject = serde_json::from_value(object.clone()).unwrap();
        let api: Api<DynamicObject> = match (capabilities.scope, typed.namespace()) {
            (kube::discovery::Scope::Namespaced, Some(namespace)) => {
                Api::namespaced_with(client.clone(), &namespace, &resource)
            }
            _ => Api::all_with(client.clone(), &resource),
        };
        let params = PatchParams::apply("node-restriction-test").force();
        api.patch(&typed.name_any(), &params, &Patch::Apply(object))
            .await
            .unwrap();
    }
}

/// A client that authenticates with `token` alone.
async fn client_with_token(env: &nmstate_localenv::LocalEnv, token: &str) -> Client {
    let kubeconfig = kube::config::Kubeconfig::read_from(env.kubeconfig()).unwrap();
    let mut config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .unwrap();
    config.auth_info = serde_json::from_value(json!({"token": token})).unwrap();
    Client::try_from(config).unwrap()
}

/// A token of `service_account`, bound to `pod` when given (then it names the pod's node).
async fn token(client: &Client, namespace: &str, service_account: &str, pod: Option<&Pod>) -> String {
    let bound =
        pod.map(|pod| json!({"kind": "Pod", "apiVersion": "v1", "name": pod.name_any(), "uid": pod.uid()}));
    let request: TokenRequest = serde_json::from_value(json!({
        "apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
        "spec": {"audiences": [], "expirationSeconds": 3600, "boundObjectRef": bound},
    }))
    .unwrap();
    let issued: TokenRequest = Api::<ServiceAccount>::namespaced(client.clone(), namespace)
        .create_subresource("token", service_account, &PostParams::default(), &request)
        .await
        .unwrap();
    issued.status.unwrap().token
}

fn refusal(result: Result<impl std::fmt::Debug, kube::Error>) -> String {
    match result {
        Err(kube::Error::Api(status)) => {
            assert_eq!(status.code, 403, "{status:?}");
            status.message
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
}

fn node_state(name: &str) -> NodeNetworkState {
    NodeNetworkState::new(name, Default::default())
}

fn enactment(node: &str, policy: &str) -> NodeNetworkConfigurationEnactment {
    let mut enactment =
        NodeNetworkConfigurationEnactment::new(&format!("{node}.{policy}"), Default::default());
    enactment.metadata.labels = Some([(nmstate_api::labels::NODE.to_string(), node.to_string())].into());
    enactment
}

fn lease(name: &str, holder: &str) -> Lease {
    serde_json::from_value(json!({"metadata": {"name": name}, "spec": {"holderIdentity": holder}})).unwrap()
}

#[tokio::test]
async fn a_handler_writes_only_its_own_nodes_objects() {
    let env = shared_env().await.unwrap();
    let admin = env.client().await.unwrap();
    install_crds(&admin).await.unwrap();
    let namespace = create_namespace(&admin, "restrict").await.unwrap();
    let prefix = unique_name("restrict");
    apply_all(&admin, &handler_objects(&namespace, &prefix)).await;
    let service_account = format!("{prefix}-nmstate-handler");

    // Two nodes, a handler pod bound to each (nothing runs them: the token only needs the pod).
    let nodes: Api<Node> = Api::all(admin.clone());
    let pods: Api<Pod> = Api::namespaced(admin.clone(), &namespace);
    let (mine, theirs) = (format!("{prefix}-a"), format!("{prefix}-b"));
    let mut handler_pod = None;
    for node in [&mine, &theirs] {
        nodes
            .create(
                &PostParams::default(),
                &serde_json::from_value(json!({"metadata": {"name": node}})).unwrap(),
            )
            .await
            .unwrap();
        let pod: Pod = serde_json::from_value(json!({"metadata": {"name": format!("handler-{node}")},
            "spec": {"nodeName": node, "serviceAccountName": service_account,
                "containers": [{"name": "handler", "image": "nmstate-handler"}]}}))
        .unwrap();
        let created = pods.create(&PostParams::default(), &pod).await.unwrap();
        if node == &mine {
            handler_pod = Some(created);
        }
    }
    let handler = client_with_token(
        &env,
        &token(&admin, &namespace, &service_account, handler_pod.as_ref()).await,
    )
    .await;
    let states: Api<NodeNetworkState> = Api::all(handler.clone());
    let enactments: Api<NodeNetworkConfigurationEnactment> = Api::all(handler.clone());
    let leases: Api<Lease> = Api::namespaced(handler.clone(), &namespace);
    let create = PostParams::default();

    // Another node's state: refused, naming both nodes (the policy takes effect within seconds).
    let message = eventually(
        "the policy refuses another node's state",
        Duration::from_secs(30),
        || async {
            match states.create(&create, &node_state(&theirs)).await {
                Err(kube::Error::Api(status)) if status.code == 403 => Some(status.message),
                Err(error) => panic!("{error}"),
                Ok(_) => {
                    let _ = Api::<NodeNetworkState>::all(admin.clone())
                        .delete(&theirs, &DeleteParams::default())
                        .await;
                    None
                }
            }
        },
    )
    .await
    .unwrap();
    assert!(
        message.contains(&format!(
            "the nmstate-handler of node {mine} may not write nodenetworkstates {theirs}: a handler writes only its own node's objects"
        )),
        "{message}"
    );
    // Its own: accepted.
    states.create(&create, &node_state(&mine)).await.unwrap();
    let status = json!({"status": {"hostNetworkManagerVersion": "1.42.4"}});
    states
        .patch_status(&mine, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .unwrap();
    // Another node's status, written by someone else first: refused.
    Api::<NodeNetworkState>::all(admin.clone())
        .create(&create, &node_state(&theirs))
        .await
        .unwrap();
    let message = refusal(
        states
            .patch_status(&theirs, &PatchParams::default(), &Patch::Merge(&status))
            .await,
    );
    assert!(
        message.contains(&format!("may not write nodenetworkstates {theirs}")),
        "{message}"
    );

    // Enactments and Leases the same way.
    enactments.create(&create, &enactment(&mine, "p")).await.unwrap();
    enactments
        .delete(&format!("{mine}.p"), &DeleteParams::default())
        .await
        .unwrap();
    let message = refusal(enactments.create(&create, &enactment(&theirs, "p")).await);
    assert!(
        message.contains("may not write nodenetworkconfigurationenactments"),
        "{message}"
    );
    let mut disguised = enactment(&theirs, "q");
    disguised.metadata.labels = Some([(nmstate_api::labels::NODE.to_string(), mine.clone())].into());
    refusal(enactments.create(&create, &disguised).await);
    leases
        .create(&create, &lease(&format!("{mine}.nmstate-handler"), &mine))
        .await
        .unwrap();
    let message = refusal(leases.create(&create, &lease("p.rollout-0", &theirs)).await);
    assert!(message.contains("may not write leases p.rollout-0"), "{message}");

    // A token that names no node: refused, saying why.
    let unbound = client_with_token(&env, &token(&admin, &namespace, &service_account, None).await).await;
    let message = refusal(
        Api::<NodeNetworkState>::all(unbound)
            .patch_status(&mine, &PatchParams::default(), &Patch::Merge(&status))
            .await,
    );
    assert!(message.contains("without a node name"), "{message}");

    for node in [&mine, &theirs] {
        let _ = Api::<NodeNetworkState>::all(admin.clone())
            .delete(node, &DeleteParams::default())
            .await;
        let _ = nodes.delete(node, &DeleteParams::default()).await;
    }
    for object in handler_objects(&namespace, &prefix) {
        if object["metadata"]["namespace"].is_null() {
            let name = object["metadata"]["name"].as_str().unwrap().to_string();
            let kind = object["kind"].as_str().unwrap();
            let _ = delete_cluster_scoped(&admin, kind, &name).await;
        }
    }
    let _ = Api::<Namespace>::all(admin)
        .delete(&namespace, &DeleteParams::default())
        .await;
}

async fn delete_cluster_scoped(client: &Client, kind: &str, name: &str) -> Result<(), kube::Error> {
    use k8s_openapi::api::{
        admissionregistration::v1::{ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding},
        rbac::v1::{ClusterRole, ClusterRoleBinding},
    };
    let params = DeleteParams::default();
    match kind {
        "ClusterRole" => Api::<ClusterRole>::all(client.clone())
            .delete(name, &params)
            .await
            .map(drop),
        "ClusterRoleBinding" => Api::<ClusterRoleBinding>::all(client.clone())
            .delete(name, &params)
            .await
            .map(drop),
        "ValidatingAdmissionPolicy" => Api::<ValidatingAdmissionPolicy>::all(client.clone())
            .delete(name, &params)
            .await
            .map(drop),
        "ValidatingAdmissionPolicyBinding" => Api::<ValidatingAdmissionPolicyBinding>::all(client.clone())
            .delete(name, &params)
            .await
            .map(drop),
        _ => Ok(()),
    }
}
