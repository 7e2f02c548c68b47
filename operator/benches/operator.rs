//! The operator (release build): render time per spec; NMState created → every operand applied
//! and the status written, side by side with `kubectl apply --server-side` of the same objects
//! (the peer); the operator's memory. Figures are printed, never asserted.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // bench code

use kube::{
    Api,
    api::{DeleteParams, PostParams},
};
use nmstate_api::NMState;
use nmstate_localenv::testing::{
    NodeProcess, create_namespace, eventually, free_port, install_crds, kubectl, proc_status_kib, shared_env,
};
use nmstate_operator::{
    config::OperatorConfig,
    render::{ClusterFacts, render},
};
use serde_json::json;
use std::{
    io::Write,
    time::{Duration, Instant},
};

const OPERATOR: &str = env!("CARGO_BIN_EXE_nmstate-operator");
const RUNS: usize = 7;

fn median(mut values: Vec<Duration>) -> Duration {
    values.sort();
    values[values.len() / 2]
}

#[tokio::main]
async fn main() {
    let load = nmstate_localenv::testing::MachineLoad::start();
    let env = shared_env().await.unwrap();
    let client = env.client().await.unwrap();
    install_crds(&client).await.unwrap();
    let namespace = create_namespace(&client, "opbench").await.unwrap();
    let minor = nmstate_api::crd::server_minor(&client.apiserver_version().await.unwrap());
    let config = OperatorConfig::from_lookup(|name| match name {
        "HANDLER_NAMESPACE" => Some(namespace.clone()),
        "HANDLER_PREFIX" => Some(namespace.clone()),
        _ => None,
    })
    .unwrap();
    let facts = ClusterFacts {
        server_minor: minor,
        tolerated_infra_taints: 0,
    };

    // Render, pure.
    let spec = serde_json::from_value(json!({"nodeSelector": {"role": "net"}, "logLevel": "debug",
        "selfSignConfiguration": {"certRotateInterval": "48h"}}))
    .unwrap();
    let started = Instant::now();
    let renders = 500;
    let mut objects = 0;
    for _ in 0..renders {
        objects = render(&spec, &config, &facts).unwrap().len();
    }
    let per_render = started.elapsed() / renders;
    println!("\noperator (release build)\n");
    println!(
        "render: {:.2} ms per spec ({objects} objects, mean of {renders})",
        per_render.as_secs_f64() * 1e3
    );

    // The operator: NMState created → status written (after every operand was applied).
    let health = format!("127.0.0.1:{}", free_port());
    let variables = [
        ("HANDLER_NAMESPACE", namespace.as_str()),
        ("HANDLER_PREFIX", namespace.as_str()),
        ("POD_NAMESPACE", namespace.as_str()),
        ("HEALTH_BIND_ADDRESS", health.as_str()),
    ];
    let log = env.dir().join(format!("{namespace}-operator.log"));
    let mut operator = NodeProcess::start_on_host(&env, OPERATOR.as_ref(), &[], &variables, log).unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle = proc_status_kib(operator.pid(), "VmRSS:");
    let nmstates = Api::<NMState>::all(client.clone());
    let daemonsets = Api::<k8s_openapi::api::apps::v1::DaemonSet>::namespaced(client.clone(), &namespace);
    let handler = format!("{namespace}-nmstate-handler");
    let mut installs = Vec::new();
    for _ in 0..RUNS {
        let nmstate: NMState = serde_json::from_value(json!({
            "apiVersion": "nmstate.io/v1", "kind": "NMState", "metadata": {"name": "nmstate"}, "spec": {},
        }))
        .unwrap();
        let started = Instant::now();
        nmstates.create(&PostParams::default(), &nmstate).await.unwrap();
        eventually("the status is written", Duration::from_secs(30), || async {
            let status = nmstates.get("nmstate").await.ok()?.status?;
            (!status.conditions.is_empty()).then_some(())
        })
        .await
        .unwrap_or_else(|error| panic!("{error}\n{}", operator.log()));
        installs.push(started.elapsed());
        nmstates
            .delete("nmstate", &DeleteParams::default())
            .await
            .unwrap();
        eventually("uninstalled", Duration::from_secs(60), || async {
            let gone = nmstates.get_opt("nmstate").await.ok()?.is_none()
                && daemonsets.get_opt(&handler).await.ok()?.is_none();
            gone.then_some(())
        })
        .await
        .unwrap();
    }
    let peak = proc_status_kib(operator.pid(), "VmHWM:");
    let after = proc_status_kib(operator.pid(), "VmRSS:");
    operator.terminate(Duration::from_secs(10));

    // The peer: kubectl applying the same objects server-side, from a file.
    let file = env.dir().join(format!("{namespace}-operands.yaml"));
    let rendered = render(&Default::default(), &config, &facts).unwrap();
    // Removed after each run as the operator uninstalls: the CRDs and the namespace stay. A CRD
    // deleted right after its creation can stay Terminating for minutes (the API server's
    // "storage is (re)initializing"), which held `make bench` up.
    let removable = env.dir().join(format!("{namespace}-operands-removable.yaml"));
    let (mut out, mut out_removable) = (
        std::fs::File::create(&file).unwrap(),
        std::fs::File::create(&removable).unwrap(),
    );
    for object in &rendered {
        let yaml = serde_yaml::to_string(object).unwrap();
        writeln!(out, "---\n{yaml}").unwrap();
        if !matches!(
            object["kind"].as_str(),
            Some("CustomResourceDefinition" | "Namespace")
        ) {
            writeln!(out_removable, "---\n{yaml}").unwrap();
        }
    }
    drop((out, out_removable));
    let mut peer = Vec::new();
    for _ in 0..RUNS {
        let started = Instant::now();
        let output = kubectl(&env)
            .args([
                "apply",
                "--server-side",
                "--force-conflicts",
                "--field-manager",
                "bench-peer",
                "-f",
            ])
            .arg(&file)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        peer.push(started.elapsed());
        let _ = kubectl(&env)
            .args(["delete", "--wait=true", "--ignore-not-found", "-f"])
            .arg(&removable)
            .output();
    }
    let (ours, theirs) = (median(installs), median(peer));
    println!(
        "NMState created -> operands applied, status written: median {:.0} ms of {RUNS} (goal <= 1000 ms)",
        ours.as_secs_f64() * 1e3
    );
    println!(
        "peer, kubectl apply --server-side of the same {} objects: median {:.0} ms -> ratio {:.2}x",
        rendered.len(),
        theirs.as_secs_f64() * 1e3,
        ours.as_secs_f64() / theirs.as_secs_f64()
    );
    println!(
        "operator RSS: idle {:.1} MiB, after {RUNS} installs {:.1} MiB, peak {:.1} MiB (goal <= 20 MiB)",
        idle as f64 / 1024.0,
        after as f64 / 1024.0,
        peak as f64 / 1024.0
    );
    let _ = kubectl(&env)
        .args(["delete", "namespace", "--wait=false", &namespace])
        .output();
    println!("\nmachine during this bench: {}", load.report());
}
