//! The operator against the real API server (and its garbage collector): install from an
//! NMState, status from the workloads (which the test marks ready, as no pods run here),
//! repair, the singleton rule, and uninstall.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: failing loudly is the point

use k8s_openapi::api::{
    apps::v1::{DaemonSet, Deployment},
    core::v1::{Event, Namespace, Service},
};
use kube::{
    Api, Client, ResourceExt,
    api::{DeleteParams, ListParams, Patch, PatchParams, PostParams},
};
use nmstate_api::NMState;
use nmstate_localenv::testing::{
    NodeProcess, create_namespace, eventually, expect_no_nmstate, free_port, install_crds, remove_nmstates,
    shared_env,
};
use serde_json::json;
use std::time::Duration;

const OPERATOR: &str = env!("CARGO_BIN_EXE_nmstate-operator");
const WAIT: Duration = Duration::from_secs(30);

/// Removes what a failed run could leave behind, synchronously (also on panic): the NMState
/// (its operands follow by garbage collection) and the webhook configurations, which would
/// otherwise refuse every policy of later tests.
struct Cleanup {
    env: nmstate_localenv::LocalEnv,
    prefix: String,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        remove_nmstates(&self.env, &self.prefix);
    }
}

async fn conditions(client: &Client, name: &str) -> Option<Vec<(String, String, String, String)>> {
    let nmstate = Api::<NMState>::all(client.clone()).get_opt(name).await.ok()??;
    Some(
        nmstate
            .status?
            .conditions
            .into_iter()
            .map(|c| (c.type_, format!("{:?}", c.status), c.reason, c.message))
            .collect(),
    )
}

async fn mark_ready(client: &Client, namespace: &str, prefix: &str) {
    let params = PatchParams::default();
    let daemonsets = Api::<DaemonSet>::namespaced(client.clone(), namespace);
    let daemonset = daemonsets
        .get(&format!("{prefix}-nmstate-handler"))
        .await
        .unwrap();
    let status = json!({"status": {"desiredNumberScheduled": 2, "currentNumberScheduled": 2, "numberMisscheduled": 0,
        "numberReady": 2, "numberAvailable": 2, "updatedNumberScheduled": 2,
        "observedGeneration": daemonset.metadata.generation}});
    daemonsets
        .patch_status(
            &format!("{prefix}-nmstate-handler"),
            &params,
            &Patch::Merge(&status),
        )
        .await
        .unwrap();
    let deployments = Api::<Deployment>::namespaced(client.clone(), namespace);
    for name in ["nmstate-webhook", "nmstate-metrics"] {
        let name = format!("{prefix}-{name}");
        let deployment = deployments.get(&name).await.unwrap();
        let status = json!({"status": {"replicas": 1, "readyReplicas": 1, "availableReplicas": 1,
            "updatedReplicas": 1, "observedGeneration": deployment.metadata.generation}});
        deployments
            .patch_status(&name, &params, &Patch::Merge(&status))
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn an_nmstate_installs_reports_repairs_and_uninstalls() {
    let env = shared_env().await.unwrap();
    let client = env.client().await.unwrap();
    install_crds(&client).await.unwrap();
    expect_no_nmstate(&client).await;
    let nmstates = Api::<NMState>::all(client.clone());
    let namespace = create_namespace(&client, "operator").await.unwrap();
    let prefix = namespace.clone();
    let _cleanup = Cleanup {
        env: nmstate_localenv::LocalEnv::new(env.dir()),
        prefix: prefix.clone(),
    };
    let health = format!("127.0.0.1:{}", free_port());
    let log = env.dir().join(format!("{namespace}-operator.log"));
    let variables = [
        ("HANDLER_NAMESPACE", namespace.as_str()),
        ("HANDLER_PREFIX", prefix.as_str()),
        ("POD_NAMESPACE", namespace.as_str()),
        ("HEALTH_BIND_ADDRESS", health.as_str()),
        ("LEASE_DURATION_SECONDS", "4"),
    ];
    let operator = NodeProcess::start_on_host(&env, OPERATOR.as_ref(), &[], &variables, log).unwrap();

    // Install: every operand, and Progressing with upstream's messages.
    let nmstate: NMState = serde_json::from_value(json!({
        "apiVersion": "nmstate.io/v1", "kind": "NMState", "metadata": {"name": "nmstate"}, "spec": {},
    }))
    .unwrap();
    nmstates.create(&PostParams::default(), &nmstate).await.unwrap();
    let handler = format!("{prefix}-nmstate-handler");
    let progressing = eventually("Progressing while nothing runs", WAIT, || async {
        let conditions = conditions(&client, "nmstate").await?;
        let progressing = conditions.iter().find(|c| c.0 == "Progressing")?;
        (progressing.1 == "True").then(|| progressing.3.clone())
    })
    .await
    .unwrap_or_else(|error| panic!("{error}\n{}", operator.log()));
    assert!(
        progressing.contains(&format!(
            "DaemonSet \"{handler}\" is not yet scheduled on any nodes"
        )),
        "{progressing}"
    );
    assert!(progressing.contains(&format!(
        "Deployment \"{prefix}-nmstate-webhook\" is not yet scheduled"
    )));
    let daemonset = Api::<DaemonSet>::namespaced(client.clone(), &namespace)
        .get(&handler)
        .await
        .unwrap();
    let owner = &daemonset.metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.name.as_str(), owner.controller),
        ("NMState", "nmstate", Some(true))
    );
    let labels = Api::<Namespace>::all(client.clone())
        .get(&namespace)
        .await
        .unwrap()
        .metadata
        .labels
        .unwrap();
    assert_eq!(labels["pod-security.kubernetes.io/enforce"], "privileged");

    // Ready workloads: Available.
    mark_ready(&client, &namespace, &prefix).await;
    eventually("Available once the workloads are ready", WAIT, || async {
        let conditions = conditions(&client, "nmstate").await?;
        let available = conditions.iter().find(|c| c.0 == "Available")?;
        (available.1 == "True" && available.2 == "SuccessfullyDeployed").then_some(())
    })
    .await
    .unwrap_or_else(|error| panic!("{error}\n{}", operator.log()));

    // Reconciles are counted on /metrics.
    let metrics = {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(&health).unwrap();
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut text = String::new();
        stream.read_to_string(&mut text).unwrap();
        text
    };
    assert!(
        metrics.contains(r#"kubernetes_nmstate_reconcile_total{controller="nmstate",result="success"}"#),
        "{metrics}"
    );

    // Repair: a deleted Service comes back; an edited field is restored.
    let services = Api::<Service>::namespaced(client.clone(), &namespace);
    let service = format!("{prefix}-nmstate-webhook");
    services.delete(&service, &DeleteParams::default()).await.unwrap();
    let daemonsets = Api::<DaemonSet>::namespaced(client.clone(), &namespace);
    let edit = json!({"spec": {"updateStrategy": {"rollingUpdate": {"maxUnavailable": "50%"}}}});
    daemonsets
        .patch(
            &handler,
            &PatchParams::apply("someone-else").force(),
            &Patch::Apply(&json!({
                "apiVersion": "apps/v1", "kind": "DaemonSet", "spec": edit["spec"],
            })),
        )
        .await
        .unwrap();
    eventually("the operator repairs what was changed by hand", WAIT, || async {
        services.get_opt(&service).await.ok()??;
        let daemonset = daemonsets.get(&handler).await.ok()?;
        let strategy = daemonset.spec?.update_strategy?.rolling_update?.max_unavailable?;
        (strategy == k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String("10%".into()))
            .then_some(())
    })
    .await
    .unwrap_or_else(|error| panic!("{error}\n{}", operator.log()));

    // Prune: an object labelled for this NMState that the render does not contain (as after
    // an upgrade that renamed it) is deleted.
    let owner = nmstates.get("nmstate").await.unwrap();
    let obsolete: k8s_openapi::api::core::v1::ServiceAccount = serde_json::from_value(json!({
        "metadata": {
            "name": format!("{prefix}-obsolete"), "namespace": namespace,
            "labels": {"nmstate.io/nmstate": "nmstate"},
            "ownerReferences": [{"apiVersion": "nmstate.io/v1", "kind": "NMState", "name": "nmstate",
                                 "uid": owner.metadata.uid, "controller": true}],
        },
    }))
    .unwrap();
    let accounts = Api::<k8s_openapi::api::core::v1::ServiceAccount>::namespaced(client.clone(), &namespace);
    accounts.create(&PostParams::default(), &obsolete).await.unwrap();
    eventually("what is no longer rendered is pruned", WAIT, || async {
        accounts
            .get_opt(&format!("{prefix}-obsolete"))
            .await
            .ok()?
            .is_none()
            .then_some(())
    })
    .await
    .unwrap_or_else(|error| panic!("{error}\n{}", operator.log()));
    assert!(
        accounts
            .get_opt(&format!("{prefix}-nmstate-handler"))
            .await
            .unwrap()
            .is_some()
    );

    // A knob: logLevel debug rolls the DaemonSet (a new generation with the new env); the
    // rest stays as it was.
    let before = daemonsets.get(&handler).await.unwrap();
    let debug =
        json!({"spec": {"logLevel": "debug", "probeConfiguration": {"dns": {"host": "example.org"}}}});
    nmstates
        .patch("nmstate", &PatchParams::default(), &Patch::Merge(&debug))
        .await
        .unwrap();
    let after = eventually("logLevel reaches the handler", WAIT, || async {
        let daemonset = daemonsets.get(&handler).await.ok()?;
        let generation = daemonset.metadata.generation?;
        (generation > before.metadata.generation?).then_some(daemonset)
    })
    .await
    .unwrap_or_else(|error| panic!("{error}\n{}", operator.log()));
    let pod = |daemonset: &DaemonSet| daemonset.spec.clone().unwrap().template.spec.unwrap();
    let container = |daemonset: &DaemonSet| pod(daemonset).containers[0].clone();
    let variable = |daemonset: &DaemonSet, name: &str| {
        container(daemonset)
            .env
            .unwrap()
            .into_iter()
            .find(|variable| variable.name == name)
            .and_then(|variable| variable.value)
    };
    assert_eq!(variable(&after, "RUST_LOG").as_deref(), Some("debug"));
    assert_eq!(variable(&after, "PROBE_DNS_HOST").as_deref(), Some("example.org"));
    assert_eq!(container(&after).image, container(&before).image);
    assert_eq!(pod(&after).node_selector, pod(&before).node_selector);

    // Singleton: a second NMState is deleted, the first stays.
    let mut second = nmstate.clone();
    second.metadata.name = Some("second".into());
    let second = nmstates.create(&PostParams::default(), &second).await.unwrap();
    eventually("the second NMState is deleted", WAIT, || async {
        nmstates.get_opt("second").await.ok()?.is_none().then_some(())
    })
    .await
    .unwrap_or_else(|error| panic!("{error}\n{}", operator.log()));
    assert!(nmstates.get_opt("nmstate").await.unwrap().is_some());
    // ... and says why, in an event on it that core/v1 lists, whichever API recorded it.
    let events: Api<Event> = Api::namespaced(client.clone(), "default");
    let about_second = ListParams::default().fields(&format!(
        "involvedObject.uid={},reason=SingletonViolation",
        second.uid().unwrap()
    ));
    let recorded = events.list(&about_second).await.unwrap().items;
    assert_eq!(recorded.len(), 1, "{recorded:?}");
    assert_eq!(recorded[0].type_.as_deref(), Some("Warning"));
    assert_eq!(
        recorded[0].reporting_component.as_deref(),
        Some("nmstate-operator")
    );

    // Leader change: the operator killed, another replica takes over (after the lease expires)
    // and keeps repairing, with one of each object.
    let mut operator = operator;
    operator.kill();
    let log = env.dir().join(format!("{namespace}-operator-b.log"));
    let operator = NodeProcess::start_on_host(&env, OPERATOR.as_ref(), &[], &variables, log).unwrap();
    services.delete(&service, &DeleteParams::default()).await.unwrap();
    eventually("the new leader repairs", WAIT, || async {
        services.get_opt(&service).await.ok()?.map(|_| ())
    })
    .await
    .unwrap_or_else(|error| panic!("{error}\n{}", operator.log()));
    let ours = kube::api::ListParams::default().labels("nmstate.io/nmstate=nmstate");
    assert_eq!(daemonsets.list(&ours).await.unwrap().items.len(), 1);
    let deployments = Api::<Deployment>::namespaced(client.clone(), &namespace);
    assert_eq!(deployments.list(&ours).await.unwrap().items.len(), 2);

    // Uninstall: the operands go (garbage collection), the CRDs and the namespace stay.
    nmstates
        .delete("nmstate", &DeleteParams::default())
        .await
        .unwrap();
    eventually(
        "the operands are garbage-collected",
        Duration::from_secs(120),
        || async { daemonsets.get_opt(&handler).await.ok()?.is_none().then_some(()) },
    )
    .await
    .unwrap_or_else(|error| panic!("{error}\n{}", operator.log()));
    let crds = Api::<
        k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
    >::all(client.clone());
    assert!(
        crds.get_opt("nodenetworkconfigurationpolicies.nmstate.io")
            .await
            .unwrap()
            .is_some()
    );
    assert!(
        Api::<Namespace>::all(client.clone())
            .get_opt(&namespace)
            .await
            .unwrap()
            .is_some()
    );
}
