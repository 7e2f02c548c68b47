//! What the operator renders is accepted by the real API server: every object applied
//! server-side (dry run) in a namespace of the test's own.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: failing loudly is the point

use kube::{
    Api,
    api::{DynamicObject, Patch, PatchParams},
    discovery::Discovery,
};
use nmstate_localenv::testing::{create_namespace, shared_env};
use nmstate_operator::{
    config::OperatorConfig,
    render::{ClusterFacts, render},
};

#[tokio::test]
async fn every_rendered_object_is_accepted_by_the_api_server() {
    let env = shared_env().await.unwrap();
    let client = env.client().await.unwrap();
    let namespace = create_namespace(&client, "render").await.unwrap();
    let version = client.apiserver_version().await.unwrap();
    let facts = ClusterFacts {
        server_minor: nmstate_api::crd::server_minor(&version),
        tolerated_infra_taints: 0,
    };
    let config =
        OperatorConfig::from_lookup(|name| (name == "HANDLER_NAMESPACE").then(|| namespace.clone())).unwrap();
    let objects = render(&Default::default(), &config, &facts).unwrap();
    let discovery = Discovery::new(client.clone()).run().await.unwrap();
    let params = PatchParams::apply("nmstate-operator").force().dry_run();
    let mut applied = 0;
    for object in objects {
        let object: DynamicObject = serde_json::from_value(object).unwrap();
        let types = object.types.clone().unwrap();
        let (group, version) = types
            .api_version
            .split_once('/')
            .unwrap_or(("", &types.api_version));
        let gvk = kube::api::GroupVersionKind::gvk(group, version, &types.kind);
        let (resource, capabilities) = discovery
            .resolve_gvk(&gvk)
            .unwrap_or_else(|| panic!("the API server does not serve {gvk:?}"));
        let name = object.metadata.name.clone().unwrap();
        let api: Api<DynamicObject> = match (&capabilities.scope, object.metadata.namespace.as_deref()) {
            (kube::discovery::Scope::Namespaced, Some(namespace)) => {
                Api::namespaced_with(client.clone(), namespace, &resource)
            }
            (kube::discovery::Scope::Namespaced, None) => panic!("{} {name} has no namespace", types.kind),
            (kube::discovery::Scope::Cluster, _) => Api::all_with(client.clone(), &resource),
        };
        if types.kind == "Namespace" {
            // It exists already (the test's own); applying it for real only adds labels.
            api.patch(
                &name,
                &PatchParams::apply("nmstate-operator").force(),
                &Patch::Apply(&object),
            )
            .await
            .unwrap_or_else(|error| panic!("Namespace {name}: {error}"));
        } else {
            api.patch(&name, &params, &Patch::Apply(&object))
                .await
                .unwrap_or_else(|error| panic!("{} {name}: {error}", types.kind));
        }
        applied += 1;
    }
    assert!(applied >= 25, "{applied} objects");
    let _ = nmstate_localenv::testing::kubectl(&env)
        .args(["delete", "namespace", "--wait=false", &namespace])
        .output();
}
