//! The plain manifest (`manifests/kubernetes-nmstate-operator.yaml`, for Kubernetes 1.25 and
//! later: its CRDs carry CEL rules) installed as the README says, `kubectl apply --server-side`,
//! on the current API server, and the operator running from its Deployment as its
//! ServiceAccount: the NMState example gets the handler and the webhook installed. No pods run
//! here, so the test starts the operator with the environment of that Deployment.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: failing loudly is the point

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::Api;
use nmstate_localenv::{
    LocalEnv,
    testing::{
        eventually, expect_no_nmstate, kubectl, remove_nmstates, shared_env, start_operator_as_deployed,
    },
};
use nmstate_packaging::files;
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
        remove_nmstates(&self.env, "plain");
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
    let env = shared_env().await.unwrap();
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

    let deployment = Api::<Deployment>::namespaced(client.clone(), NAMESPACE)
        .get("nmstate-operator")
        .await
        .unwrap();
    let pod = deployment.spec.unwrap().template.spec.unwrap();
    let mut operator =
        start_operator_as_deployed(&env, &pod, (NAMESPACE, "nmstate-operator-plain"), "plain").unwrap();
    kubectl_ok(
        &env,
        &[
            "apply",
            "-f",
            &workspace_file("examples/nmstate.yaml").display().to_string(),
        ],
    );
    let handlers = Api::<DaemonSet>::namespaced(client.clone(), NAMESPACE);
    eventually("the operator installs the handler", WAIT, || async {
        handlers.get_opt("plain-nmstate-handler").await.unwrap()
    })
    .await
    .unwrap_or_else(|error| panic!("{error}\n{}", operator.log()));
    let webhook = Api::<Deployment>::namespaced(client.clone(), NAMESPACE);
    eventually("the operator installs the webhook", WAIT, || async {
        webhook.get_opt("plain-nmstate-webhook").await.unwrap()
    })
    .await
    .unwrap_or_else(|error| panic!("{error}\n{}", operator.log()));
    operator.kill();
}
