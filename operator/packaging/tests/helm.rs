//! The Helm chart with the real `helm` (v4) against the real API server: lint, template,
//! values refused by the schema, install, upgrade to a changed value and to a new chart
//! version, and uninstall. On real pods (`pods_env`): the chart's defaults install the images
//! built here under their release names; the operator, the handler on each node, the webhook
//! and the cluster controller run as containers, roll on each upgrade, and go on uninstall.
//! Where no kubelet runs (the oldest release), the operator runs as a host process from the
//! chart's Deployment, as its ServiceAccount.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: failing loudly is the point

use k8s_openapi::api::{
    apps::v1::{DaemonSet, Deployment},
    core::v1::Pod,
};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::{Api, Client, ResourceExt};
use nmstate_api::NMState;
use nmstate_localenv::{
    LocalEnv, Workloads, pods,
    testing::{
        DeployedOperator, POD_NODES, ROLLOUT_TIMEOUT, ReleaseImages, create_namespace, eventually,
        expect_no_nmstate, helm, kubectl, pods_env, remove_nmstates, shared_env,
    },
};
use nmstate_packaging::{self as install, files};
use serde_json::Value;
use std::{path::Path, time::Duration};

const WAIT: Duration = Duration::from_secs(60);
/// A CRD text the test changes in the next chart version.
const OLD_DESCRIPTION: &str = "NodeNetworkState is the network state a node reports.";
const NEW_DESCRIPTION: &str = "NodeNetworkState is the network state a node reports (next version).";

fn chart_dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(files::CHART_DIR)
}

/// Runs `helm args`; returns (success, stdout + stderr).
fn run_helm(env: &LocalEnv, args: &[&str]) -> (bool, String) {
    let output = helm(env).args(args).output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

fn helm_ok(env: &LocalEnv, args: &[&str]) -> String {
    let (ok, text) = run_helm(env, args);
    assert!(ok, "helm {args:?} failed:\n{text}");
    text
}

fn documents(yaml: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(yaml)
        .map(|document| serde::Deserialize::deserialize(document).unwrap())
        .filter(|object: &Value| !object.is_null())
        .collect()
}

fn find<'a>(objects: &'a [Value], kind: &str) -> &'a Value {
    objects
        .iter()
        .find(|object| object["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind} rendered"))
}

/// Removes what a failed run could leave (also on panic): the release, the NMState (its
/// operands follow by garbage collection) and the webhook configurations, which would refuse
/// the policies of later tests.
struct Cleanup {
    env: LocalEnv,
    release: String,
    namespace: String,
    /// The operator's HANDLER_PREFIX.
    prefix: String,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = helm(&self.env)
            .args(["uninstall", &self.release, "-n", &self.namespace])
            .output();
        remove_nmstates(&self.env, &self.prefix);
    }
}

async fn handler_daemonset(client: &Client, namespace: &str, name: &str) -> Option<DaemonSet> {
    Api::<DaemonSet>::namespaced(client.clone(), namespace)
        .get_opt(name)
        .await
        .unwrap()
}

fn handler_env(daemonset: &DaemonSet, name: &str) -> Option<String> {
    let containers = &daemonset.spec.as_ref()?.template.spec.as_ref()?.containers;
    containers[0]
        .env
        .iter()
        .flatten()
        .find(|variable| variable.name == name)
        .and_then(|variable| variable.value.clone())
}

#[test]
fn the_chart_lints_and_renders_its_values() {
    let env = LocalEnv::new(std::env::temp_dir().join("nmstate-helm-template"));
    let chart = chart_dir().display().to_string();
    helm_ok(&env, &["lint", &chart, "--strict"]);

    let defaults = documents(&helm_ok(&env, &["template", "nm", &chart, "-n", "nmstate"]));
    let kinds: Vec<&str> = defaults.iter().filter_map(|o| o["kind"].as_str()).collect();
    assert_eq!(
        kinds
            .iter()
            .filter(|kind| **kind == "CustomResourceDefinition")
            .count(),
        4,
        "the operand CRDs are templates (upgraded with the release)"
    );
    // The NMState CRD is in crds/: installed before the release is built, so the release can
    // hold an NMState.
    let with_crds = documents(&helm_ok(&env, &["template", "nm", &chart, "--include-crds"]));
    let nmstate_crd = with_crds
        .iter()
        .find(|o| o["kind"] == "CustomResourceDefinition" && o["metadata"]["name"] == "nmstates.nmstate.io");
    assert!(nmstate_crd.is_some());
    assert!(
        !kinds.contains(&"NMState"),
        "no NMState unless asked for: {kinds:?}"
    );
    let deployment = find(&defaults, "Deployment");
    let version = files::workspace_version();
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(
        container["image"],
        install::image(install::OPERATOR_IMAGE, &version)
    );
    assert_eq!(deployment["metadata"]["namespace"], "nmstate");
    assert_eq!(
        deployment["metadata"]["labels"]["app.kubernetes.io/instance"],
        "nm"
    );
    for crd in defaults
        .iter()
        .filter(|o| o["kind"] == "CustomResourceDefinition")
    {
        assert_eq!(crd["metadata"]["annotations"]["helm.sh/resource-policy"], "keep");
    }

    let custom = documents(&helm_ok(
        &env,
        &[
            "template",
            "nm",
            &chart,
            "-n",
            "nmstate",
            "--set",
            "namespace=network",
            "--set",
            "operator.image.tag=dev",
            "--set",
            "operator.replicas=2",
            "--set",
            "handler.image.repository=registry.local/handler",
            "--set",
            "crds.install=false",
            "--set",
            "nmstate.create=true",
            "--set",
            "nmstate.spec.logLevel=debug",
            "--set",
            "imagePullSecrets[0].name=pull",
        ],
    ));
    assert!(!custom.iter().any(|o| o["kind"] == "CustomResourceDefinition"));
    let deployment = find(&custom, "Deployment");
    let pod = &deployment["spec"]["template"]["spec"];
    assert_eq!(deployment["metadata"]["namespace"], "network");
    assert_eq!(deployment["spec"]["replicas"], 2);
    assert_eq!(pod["imagePullSecrets"][0]["name"], "pull");
    assert_eq!(
        pod["containers"][0]["image"],
        format!("{}/{}:dev", install::IMAGE_REGISTRY, install::OPERATOR_IMAGE)
    );
    let handler_image = pod["containers"][0]["env"]
        .as_array()
        .unwrap()
        .iter()
        .find(|variable| variable["name"] == "RELATED_IMAGE_HANDLER_IMAGE")
        .unwrap();
    assert_eq!(
        handler_image["value"],
        format!("registry.local/handler:v{version}")
    );
    let nmstate = find(&custom, "NMState");
    assert_eq!(nmstate["spec"]["logLevel"], "debug");
    // The CRDs' CEL rules only for servers that run them.
    let cel = |objects: &[Value]| {
        serde_json::to_string(objects)
            .unwrap()
            .contains("x-kubernetes-validations")
    };
    let old = documents(&helm_ok(
        &env,
        &["template", "nm", &chart, "--kube-version", "1.24.0"],
    ));
    let new = documents(&helm_ok(
        &env,
        &["template", "nm", &chart, "--kube-version", "1.25.0"],
    ));
    assert!(!cel(&old) && cel(&new));

    for (set, message) in [
        (
            "operator.replicas=0",
            "at '/operator/replicas': minimum: got 0, want 1",
        ),
        (
            "operator.imageTag=v1",
            "at '/operator': additional properties 'imageTag' not allowed",
        ),
        (
            "operator.image.pullPolicy=Sometimes",
            "at '/operator/image/pullPolicy'",
        ),
        (
            "nmstate.spec.logLevel=verbose",
            "value must be one of 'info', 'debug'",
        ),
        (
            "nmstate.spec.nodeSelectr.a=b",
            "at '/nmstate/spec': additional properties 'nodeSelectr' not allowed",
        ),
        ("namespace=Not_A_Namespace", "at '/namespace'"),
    ] {
        let (ok, text) = run_helm(&env, &["template", "nm", &chart, "--set", set]);
        assert!(
            !ok && text.contains(message),
            "--set {set}: expected {message:?}, got:\n{text}"
        );
    }
}

#[tokio::test]
async fn the_chart_installs_upgrades_and_uninstalls_on_real_pods() {
    install_upgrade_uninstall(&pods_env().await.unwrap()).await;
}

/// The same where no kubelet runs (`make test-oldest`: none of v1.20.2 is built here): the
/// operator runs as a host process from the Deployment the chart installed, as its
/// ServiceAccount (its requests impersonate it), with its operands named after the namespace.
#[tokio::test]
async fn the_chart_installs_upgrades_and_uninstalls_with_the_operator_as_a_process() {
    install_upgrade_uninstall(&shared_env().await.unwrap()).await;
}

/// Waits until `workload` has rolled out on the real nodes and NMState is Available.
async fn rolled_out(
    env: &LocalEnv,
    client: &Client,
    namespace: &str,
    workload: &str,
    operator: &DeployedOperator,
) {
    pods::rollout_status(env, namespace, workload, ROLLOUT_TIMEOUT)
        .unwrap_or_else(|error| panic!("{error}\n{}", operator.log()));
    eventually("NMState nmstate Available", WAIT, || {
        pods::nmstate_available(client)
    })
    .await
    .unwrap_or_else(|error| panic!("{error}\n{}", operator.log()));
}

async fn install_upgrade_uninstall(env: &LocalEnv) {
    let client = env.client().await.unwrap();
    expect_no_nmstate(&client).await;
    let nmstates = Api::<NMState>::all(client.clone());
    let namespace = create_namespace(&client, "helm").await.unwrap();
    let release = namespace.clone();
    let on_pods = env.control_plane().workloads() == Workloads::Kubelets;
    let prefix = if on_pods { "" } else { namespace.as_str() };
    let _cleanup = Cleanup {
        env: env.clone(),
        release: release.clone(),
        namespace: namespace.clone(),
        prefix: prefix.to_string(),
    };
    let chart = chart_dir().display().to_string();

    // Values the schema refuses never reach the cluster.
    let (ok, text) = run_helm(
        env,
        &[
            "install",
            &release,
            &chart,
            "-n",
            &namespace,
            "--set",
            "operator.replicas=0",
        ],
    );
    assert!(!ok && text.contains("minimum: got 0, want 1"), "{text}");
    let deployments = Api::<Deployment>::namespaced(client.clone(), &namespace);
    assert!(deployments.get_opt("nmstate-operator").await.unwrap().is_none());

    // CRDs other tests created are adopted as the README says for existing CRDs: marked as the
    // release's, and installed with --force-conflicts so the release owns all their fields.
    adopt_existing_crds(env, &release, &namespace);
    let version = files::workspace_version();
    // On real nodes, the images built here under the names the chart of `version` gives them.
    let _images = on_pods.then(|| ReleaseImages::tag(env, &install::images(&version)).unwrap());
    helm_ok(
        env,
        &[
            "install",
            &release,
            &chart,
            "-n",
            &namespace,
            "--set",
            "nmstate.create=true",
            "--force-conflicts",
        ],
    );
    let mut operator = DeployedOperator::start(env, &namespace, "nmstate-operator", prefix)
        .await
        .unwrap_or_else(|error| panic!("{error}"));
    let handler = operator.operand("nmstate-handler");
    let nmstate = nmstates.get("nmstate").await.unwrap();
    let daemonset = eventually("the operator installs the handler", WAIT, || async {
        handler_daemonset(&client, &namespace, &handler).await
    })
    .await
    .unwrap_or_else(|error| panic!("{error}\n{}", operator.log()));
    assert_eq!(
        handler_env(&daemonset, "RUST_LOG").as_deref(),
        Some("info"),
        "{:?}",
        daemonset.spec
    );
    let handler_workload = format!("daemonset/{handler}");
    if on_pods {
        rolled_out(env, &client, &namespace, &handler_workload, &operator).await;
    }
    let first_handlers = pod_uids(&client, &namespace, &handler).await;

    // A changed value: the NMState changes in place, and the handler pods are replaced.
    helm_ok(
        env,
        &[
            "upgrade",
            &release,
            &chart,
            "-n",
            &namespace,
            "--set",
            "nmstate.create=true",
            "--set",
            "nmstate.spec.logLevel=debug",
        ],
    );
    eventually("the handler logs at debug level", WAIT, || async {
        let daemonset = handler_daemonset(&client, &namespace, &handler).await?;
        (handler_env(&daemonset, "RUST_LOG").as_deref() == Some("debug")).then_some(())
    })
    .await
    .unwrap_or_else(|error| panic!("{error}\n{}", operator.log()));
    assert_eq!(nmstates.get("nmstate").await.unwrap().uid(), nmstate.uid());
    if on_pods {
        rolled_out(env, &client, &namespace, &handler_workload, &operator).await;
        let handlers = pod_uids(&client, &namespace, &handler).await;
        assert_eq!(handlers.len(), POD_NODES.len(), "one handler pod per node");
        assert!(
            handlers.iter().all(|uid| !first_handlers.contains(uid)),
            "every handler pod replaced: {first_handlers:?} then {handlers:?}"
        );
    }

    // A new chart version whose CRDs changed: Helm upgrades them in place (the operator, which
    // the chart tells to leave CRDs to it, does not hold their fields, so server-side apply
    // sees no conflict); the operator Deployment moves to the new image, and the operator it
    // runs moves the handler to the new handler image; the NMState stays.
    let next = {
        let mut next = version.clone();
        next.minor += 1;
        next.patch = 0;
        next
    };
    let _next_images = on_pods.then(|| ReleaseImages::tag(env, &install::images(&next)).unwrap());
    let next_chart = env.dir().join(format!("{namespace}-chart-{next}"));
    for (path, mut content) in install::helm::chart(&next).unwrap() {
        content = content.replace(OLD_DESCRIPTION, NEW_DESCRIPTION);
        let path = next_chart.join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, content).unwrap();
    }
    helm_ok(
        env,
        &[
            "upgrade",
            &release,
            &next_chart.display().to_string(),
            "-n",
            &namespace,
            "--set",
            "nmstate.create=true",
            "--set",
            "nmstate.spec.logLevel=debug",
            // The adopted CRDs' earlier appliers still share their fields (README).
            "--force-conflicts",
        ],
    );
    let deployment = deployments.get("nmstate-operator").await.unwrap();
    let image = deployment
        .spec
        .as_ref()
        .unwrap()
        .template
        .spec
        .as_ref()
        .unwrap()
        .containers[0]
        .image
        .clone();
    assert_eq!(image, Some(install::image(install::OPERATOR_IMAGE, &next)));
    operator
        .follow_upgrade()
        .await
        .unwrap_or_else(|error| panic!("{error}"));
    let handler_image = install::image(install::HANDLER_IMAGE, &next);
    eventually("the handler DaemonSet rolls to the new image", WAIT, || async {
        let daemonset = handler_daemonset(&client, &namespace, &handler).await?;
        let containers = &daemonset.spec?.template.spec?.containers;
        (containers[0].image.as_deref() == Some(handler_image.as_str())).then_some(())
    })
    .await
    .unwrap_or_else(|error| panic!("{error}\n{}", operator.log()));
    if on_pods {
        rolled_out(env, &client, &namespace, &handler_workload, &operator).await;
    }
    assert_eq!(nmstates.get("nmstate").await.unwrap().uid(), nmstate.uid());
    assert!(!operator.log().contains("forbidden"), "{}", operator.log());

    // Still the new text with the new operator running: it leaves the operand CRDs to Helm
    // (an operator that applied them would put its own version back).
    let crds = Api::<CustomResourceDefinition>::all(client.clone());
    let states = crds.get("nodenetworkstates.nmstate.io").await.unwrap();
    // The operator keeps its own CRD current (Helm installs it only once).
    let nmstate_crd = crds.get("nmstates.nmstate.io").await.unwrap();
    let managers: Vec<_> = nmstate_crd
        .managed_fields()
        .iter()
        .filter_map(|f| f.manager.clone())
        .collect();
    assert!(managers.contains(&"nmstate-operator".to_string()), "{managers:?}");
    let schema = serde_json::to_string(&states.spec.versions[0].schema).unwrap();
    assert!(schema.contains(NEW_DESCRIPTION), "the CRD was not upgraded");

    // Uninstall: the operator and NMState go, the operands follow by garbage collection, the
    // CRDs stay.
    helm_ok(env, &["uninstall", &release, "-n", &namespace]);
    drop(operator);
    assert!(deployments.get_opt("nmstate-operator").await.unwrap().is_none());
    eventually("the handler DaemonSet is garbage-collected", WAIT, || async {
        handler_daemonset(&client, &namespace, &handler)
            .await
            .is_none()
            .then_some(())
    })
    .await
    .unwrap();
    if on_pods {
        let pods = Api::<Pod>::namespaced(client.clone(), &namespace);
        eventually("no pod left in the namespace", WAIT, || async {
            pods.list(&Default::default())
                .await
                .ok()?
                .items
                .is_empty()
                .then_some(())
        })
        .await
        .unwrap_or_else(|error| panic!("{error}\n{}", pods::report(env, &namespace)));
    }
    assert!(nmstates.get_opt("nmstate").await.unwrap().is_none());
    for crd in nmstate_api::crd::all() {
        assert!(
            crds.get_opt(&crd.name_any()).await.unwrap().is_some(),
            "{} was removed",
            crd.name_any()
        );
    }
}

/// The UIDs of the pods, not terminating, whose names start with `workload`'s.
async fn pod_uids(client: &Client, namespace: &str, workload: &str) -> Vec<String> {
    let pods = Api::<Pod>::namespaced(client.clone(), namespace);
    let prefix = format!("{workload}-");
    pods.list(&Default::default())
        .await
        .unwrap()
        .items
        .iter()
        // A replaced pod may still be terminating when the rollout is reported done.
        .filter(|pod| pod.name_any().starts_with(&prefix) && pod.metadata.deletion_timestamp.is_none())
        .filter_map(|pod| pod.uid())
        .collect()
}

/// What the README tells users with nmstate.io CRDs already installed (by upstream, or by hand)
/// to do before `helm install`: mark them as the release's, so Helm adopts them.
fn adopt_existing_crds(env: &LocalEnv, release: &str, namespace: &str) {
    for crd in nmstate_api::crd::all() {
        let name = crd.name_any();
        let exists = kubectl(env)
            .args(["get", "crd", &name])
            .output()
            .unwrap()
            .status
            .success();
        if !exists {
            continue;
        }
        for args in [
            vec![
                "label",
                "crd",
                &name,
                "--overwrite",
                "app.kubernetes.io/managed-by=Helm",
            ],
            vec!["annotate", "crd", &name, "--overwrite"],
        ] {
            let mut command = kubectl(env);
            command.args(&args);
            if args[0] == "annotate" {
                command.arg(format!("meta.helm.sh/release-name={release}"));
                command.arg(format!("meta.helm.sh/release-namespace={namespace}"));
            }
            let output = command.output().unwrap();
            assert!(
                output.status.success(),
                "{}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
    }
}
