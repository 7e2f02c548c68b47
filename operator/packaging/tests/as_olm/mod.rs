//! What the upgrade tests do in OLM's place (no OLM binaries run here): a bundle's CRDs applied
//! in place, the RBAC its CSV asks for, its Deployment created or replaced; and the next
//! release's bundle, whose CSV replaces the current one.

#![allow(dead_code)] // each test binary uses its own part

use k8s_openapi::api::apps::v1::DaemonSet;
use kube::{
    Api, Client, ResourceExt,
    api::{DynamicObject, Patch, PatchParams},
};
use nmstate_localenv::{
    LocalEnv,
    testing::{DeployedOperator, eventually, kubectl},
};
use nmstate_packaging::{olm, release};
use serde_json::{Value, json};
use std::{path::Path, time::Duration};

pub const WAIT: Duration = Duration::from_secs(60);
/// On the cluster-wide RBAC a test creates as OLM would: value, the test's namespace.
pub const TEST_LABEL: &str = "nmstate-test/upgrade";

/// The release this workspace builds, as `bundle/releases.yaml` records it.
pub fn current_release() -> release::Release {
    nmstate_packaging::files::current_release(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")).unwrap()
}

/// The next minor release after `current`, whose bundle's CSV replaces `current`'s (checked:
/// its `replaces` and its `olm.skipRange`, as OLM reads them).
pub fn next_release(current: &release::Release) -> release::Release {
    let mut next = current.version.clone();
    next.minor += 1;
    next.patch = 0;
    let history = format!(
        "- version: {}\n  date: \"{}\"\n- version: {next}\n  date: \"2099-01-01\"\n",
        current.version, current.date
    );
    let next_release = release::from_history(&history, &next).unwrap();
    let csv = olm::csv(current).unwrap();
    let next_csv = olm::csv(&next_release).unwrap();
    assert_eq!(next_csv["spec"]["replaces"], csv["metadata"]["name"]);
    let skip = next_csv["metadata"]["annotations"]["olm.skipRange"]
        .as_str()
        .unwrap()
        .replace(' ', ", ");
    assert!(
        semver::VersionReq::parse(&skip)
            .unwrap()
            .matches(&current.version)
    );
    next_release
}

/// Removes what an upgrade test made, also when it failed: the NMState (its operands follow),
/// `policies`, the test's `namespace` (what upstream left there, the Leases) and the
/// cluster-wide RBAC [`install_csv`] created for it.
pub fn clean_up(env: &LocalEnv, namespace: &str, policies: &[String]) {
    nmstate_localenv::testing::remove_nmstates(env, "");
    for policy in policies {
        let _ = kubectl(env)
            .args(["delete", "nncp", policy, "--ignore-not-found", "--wait=false"])
            .output();
    }
    let _ = kubectl(env)
        .args(["delete", "namespace", namespace, "--wait=false"])
        .output();
    let selector = format!("{TEST_LABEL}={namespace}");
    let _ = kubectl(env)
        .args([
            "delete",
            "clusterrole,clusterrolebinding",
            "-l",
            &selector,
            "--wait=false",
        ])
        .output();
}

/// `kubectl <args> -f -` with `input`; returns stderr (where warnings go).
pub fn kubectl_stdin(env: &LocalEnv, args: &[&str], input: &str) -> String {
    let output = nmstate_localenv::testing::kubectl_stdin(env, args, input).unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(output.status.success(), "kubectl {args:?}: {stderr}");
    stderr
}

/// Installs the operator of `csv` as OLM would: the RBAC its CSV asks for, bound to its
/// ServiceAccount, and its Deployment (replacing the previous CSV's), whose pods it waits for.
pub async fn install_csv(env: &LocalEnv, csv: &Value, namespace: &str, label: &str) -> DeployedOperator {
    let install = &csv["spec"]["install"]["spec"];
    let account = install["clusterPermissions"][0]["serviceAccountName"]
        .as_str()
        .unwrap();
    let name = csv["metadata"]["name"].as_str().unwrap();
    let subjects = json!([{"kind": "ServiceAccount", "name": account, "namespace": namespace}]);
    // Labelled for the cleanup: cluster-wide objects outlive the test's namespace.
    let test_metadata = || json!({"name": format!("{name}-{label}"), "labels": {TEST_LABEL: label}});
    let role = |kind: &str, namespaced: bool, rules: &Value| {
        let mut metadata = test_metadata();
        if namespaced {
            metadata["namespace"] = json!(namespace);
        }
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": kind, "metadata": metadata, "rules": rules})
    };
    let binding = |kind: &str, role_kind: &str, namespaced: bool| {
        let mut metadata = test_metadata();
        if namespaced {
            metadata["namespace"] = json!(namespace);
        }
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": kind, "metadata": metadata, "subjects": subjects,
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": role_kind, "name": format!("{name}-{label}")}})
    };
    let deployment = &install["deployments"][0];
    assert_eq!(
        deployment["spec"]["template"]["spec"]["serviceAccountName"],
        json!(account)
    );
    let objects = [
        json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": account, "namespace": namespace}}),
        role("ClusterRole", false, &install["clusterPermissions"][0]["rules"]),
        binding("ClusterRoleBinding", "ClusterRole", false),
        role("Role", true, &install["permissions"][0]["rules"]),
        binding("RoleBinding", "Role", true),
        json!({"apiVersion": "apps/v1", "kind": "Deployment",
               "metadata": {"name": deployment["name"], "namespace": namespace},
               "spec": deployment["spec"]}),
    ];
    let text: String = objects
        .iter()
        .map(|o| format!("---\n{}", serde_yaml::to_string(o).unwrap()))
        .collect();
    kubectl_stdin(
        env,
        &[
            "apply",
            "--server-side",
            "--field-manager",
            "olm",
            "--force-conflicts",
        ],
        &text,
    );
    DeployedOperator::start(env, namespace, deployment["name"].as_str().unwrap(), "")
        .await
        .unwrap()
}

/// The bundle's CRDs, applied as OLM updates them in place.
pub async fn apply_bundle_crds(client: &Client, csv_release: &release::Release) {
    let crds: Api<DynamicObject> = Api::all_with(
        client.clone(),
        &kube::api::ApiResource::erase::<
            k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
        >(&()),
    );
    let minor = nmstate_api::crd::server_minor(&client.apiserver_version().await.unwrap());
    for (path, content) in olm::bundle(csv_release).unwrap() {
        if !path.starts_with("manifests/nmstate.io_") {
            continue;
        }
        let crd: k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition =
            serde_yaml::from_str(&content).unwrap();
        // As the chart does, the CEL rules only for servers that run them.
        let crd = nmstate_api::crd::for_server(crd, minor);
        crds.patch(
            &crd.name_any(),
            &PatchParams::apply("olm").force(),
            &Patch::Apply(&crd),
        )
        .await
        .unwrap();
    }
}

pub async fn wait_for_handler_image(
    client: &Client,
    namespace: &str,
    name: &str,
    image: &str,
    operator: &DeployedOperator,
) -> DaemonSet {
    eventually(
        &format!("the handler DaemonSet rolls to {image}"),
        WAIT,
        || async {
            let daemonset = Api::<DaemonSet>::namespaced(client.clone(), namespace)
                .get_opt(name)
                .await
                .unwrap()?;
            let current = daemonset.spec.as_ref()?.template.spec.as_ref()?.containers[0]
                .image
                .clone();
            (current.as_deref() == Some(image)).then_some(daemonset)
        },
    )
    .await
    .unwrap_or_else(|error| panic!("{error}\n{}", operator.log()))
}
