//! The plain manifest (`manifests/kubernetes-nmstate-operator.yaml`, for Kubernetes 1.25 and
//! later: its CRDs carry CEL rules) installed as the README says, `kubectl apply --server-side`,
//! on the current API server with real nodes: the operator's pod runs the image the manifest
//! names (built here and tagged so), and the NMState example gets the handler on each node,
//! the webhook and the cluster controller running, NMState Available.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: failing loudly is the point

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::Api;
use nmstate_localenv::{
    LocalEnv, pods,
    testing::{
        DeployedOperator, ROLLOUT_TIMEOUT, ReleaseImages, eventually, expect_no_nmstate, kubectl, pods_env,
        remove_nmstates,
    },
};
use nmstate_packaging::{self as install, files};
use std::{path::PathBuf, time::Duration};

const WAIT: Duration = Duration::from_secs(60);
const NAMESPACE: &str = "nmstate";

fn workspace_file(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..").join(path)
}

fn kubectl_ok(env: &LocalEnv, args: &[&str]) -> String {
    let output = kubectl(env).args(args).output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "kubectl {args:?}:\n{text}");
    text
}

/// Removes what the manifest and the operator made, but the CRDs, which other tests share.
struct Cleanup {
    env: LocalEnv,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        remove_nmstates(&self.env, "");
        let _ = kubectl(&self.env)
            .args([
                "delete",
                "deployment/nmstate-operator",
                "serviceaccount/nmstate-operator",
                "clusterrole/nmstate-operator",
                "clusterrolebinding/nmstate-operator",
                "-n",
                NAMESPACE,
                "--ignore-not-found",
                "--wait=false",
            ])
            .output();
    }
}

#[tokio::test]
async fn the_plain_manifest_installs_as_written_and_the_operator_runs_from_it() {
    let env = pods_env().await.unwrap();
    let client = env.client().await.unwrap();
    let version = client.apiserver_version().await.unwrap();
    assert!(
        nmstate_api::crd::server_minor(&version) >= 25,
        "the plain manifest is for Kubernetes 1.25 and later; this environment runs {}",
        version.git_version
    );
    expect_no_nmstate(&client).await;
    let _cleanup = Cleanup {
        env: LocalEnv::new(env.dir()),
    };

    let _images = ReleaseImages::tag(&env, &install::images(&files::workspace_version())).unwrap();
    let manifest = workspace_file(files::PLAIN_MANIFEST);
    let manifest = manifest.display().to_string();
    // As the README says; --force-conflicts only because other tests' CRDs are already there.
    kubectl_ok(
        &env,
        &["apply", "--server-side", "--force-conflicts", "-f", &manifest],
    );
    let crds = Api::<CustomResourceDefinition>::all(client.clone());
    let policies = crds
        .get("nodenetworkconfigurationpolicies.nmstate.io")
        .await
        .unwrap();
    let established = policies
        .status
        .iter()
        .flat_map(|status| status.conditions.iter().flatten())
        .any(|condition| condition.type_ == "Established" && condition.status == "True");
    assert!(established, "{:?}", policies.status);
    assert!(
        serde_json::to_string(&policies.spec)
            .unwrap()
            .contains("x-kubernetes-validations"),
        "the manifest's CRDs carry the CEL rules"
    );

    let operator = DeployedOperator::start(&env, NAMESPACE, "nmstate-operator", "")
        .await
        .unwrap_or_else(|error| panic!("{error}"));
    kubectl_ok(
        &env,
        &[
            "apply",
            "-f",
            &workspace_file("examples/nmstate.yaml").display().to_string(),
        ],
    );
    eventually("NMState nmstate Available", WAIT, || {
        pods::nmstate_available(&client)
    })
    .await
    .unwrap_or_else(|error| panic!("{error}\n{}", operator.log()));
    for workload in [
        "daemonset/nmstate-handler",
        "deployment/nmstate-webhook",
        "deployment/nmstate-metrics",
    ] {
        pods::rollout_status(&env, NAMESPACE, workload, ROLLOUT_TIMEOUT)
            .unwrap_or_else(|error| panic!("{error}\n{}", operator.log()));
    }
}
