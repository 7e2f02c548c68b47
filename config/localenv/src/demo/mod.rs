//! `make demo`: the whole product on this machine, installed and used the way a user would.
//!
//! 1. the control plane, with a scheduler and every controller;
//! 2. the images, built here from the project's Containerfiles, and three sandbox nodes
//!    labelled like a real cluster's, each a real Kubernetes node ([`crate::kube_node`]:
//!    containerd, kubelet, kube-proxy) with the images imported;
//! 3. the Helm chart from `manifests/`: the operator's Deployment runs as a pod;
//! 4. `NMState/nmstate`: the operator installs the handler DaemonSet (a pod on each node, on
//!    that node's NetworkManager), the webhook (called through its Service) and the cluster
//!    controller;
//! 5. a tour of `examples/` policies ([`tour`]);
//!
//! then everything is left running; `make demo-down` (`localenv cluster down`) stops it.
//!
//! A second run reuses the control plane and starts the demo over on fresh nodes.

mod tour;

use crate::{
    LocalEnv, LocalEnvError, Result, Workloads,
    daemon::run,
    images, pods,
    testing::{eventually, helm, helm_program, kubectl, kubectl_program},
};
use k8s_openapi::api::{admissionregistration::v1::ValidatingWebhookConfiguration, core::v1::Pod};
use kube::{Api, Client};
use std::{
    collections::BTreeMap,
    io::Write,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

/// Where the chart installs the operator, and the operator its operands.
pub const NAMESPACE: &str = "nmstate";
const RELEASE: &str = "nmstate";
const CHART: &str = "manifests/helm/kubernetes-nmstate";
/// Nodes and their role labels: one control plane, two workers.
const NODES: [(&str, &[&str]); 3] = [
    (
        "node01",
        &[
            "node-role.kubernetes.io/control-plane",
            "node-role.kubernetes.io/master",
        ],
    ),
    ("node02", &["node-role.kubernetes.io/worker"]),
    ("node03", &["node-role.kubernetes.io/worker"]),
];
/// What the demo sets on the operator's container beyond the chart's Deployment, and why.
const OPERATOR_SETTINGS: [(&str, &str, &str); 2] = [
    (
        "PROBE_TIMEOUT_SECONDS",
        "10",
        "a broken policy is rolled back in seconds, not 2 minutes",
    ),
    (
        "NNCP_MAX_RETRIES",
        "1",
        "one attempt: the probes' verdict would not change on a retry",
    ),
];
/// A name this network's DNS answers, for the handler's DNS probe (upstream's default,
/// root-servers.net, does not resolve in the sandbox, so the probe would be skipped).
const DNS_PROBE_HOST: &str = crate::fabric::GATEWAY_NAME;
const STEP_TIMEOUT: Duration = Duration::from_secs(120);

/// The programs the containers run, and the tools the demo calls.
const PROGRAMS: [&str; 4] = [
    "nmstate-operator",
    "nmstate-handler",
    "nmstate-webhook",
    "nmstate-cluster",
];

/// Runs the demo in `env`, with the workspace's binaries from `bin_dir`.
pub async fn up(env: &LocalEnv, bin_dir: &Path) -> Result<()> {
    let started = Instant::now();
    let workspace = crate::workspace_dir();
    preflight(bin_dir, &workspace)?;
    let mut steps = Steps::new(5);

    steps.begin("control plane: kube-apiserver, etcd, kube-controller-manager, kube-scheduler");
    let reused = env.control_plane().is_running();
    let endpoints = env.up_for(Workloads::Kubelets).await?;
    let client = env.client().await?;
    steps.done(&format!(
        "{} on https://127.0.0.1:{}",
        if reused && endpoints.startup.is_none() {
            "reused"
        } else {
            "started"
        },
        endpoints.apiserver_port
    ));

    steps.begin(
        "nodes: node01 (control plane), node02 and node03 (workers), each with its own NetworkManager, containerd, kubelet and kube-proxy",
    );
    reset_previous_run(env).await?;
    let archives = env.build_images(bin_dir)?;
    say(&format!(
        "    images {} built from the Containerfiles ({} MB), imported into each node",
        ["pause", "operator", "handler"].map(images::reference).join(", "),
        archives
            .iter()
            .filter_map(|archive| archive.metadata().ok())
            .map(|metadata| metadata.len())
            .sum::<u64>()
            / 1_000_000
    ));
    for (name, roles) in NODES {
        let labels: BTreeMap<String, String> = roles
            .iter()
            .map(|role| (role.to_string(), String::new()))
            .collect();
        let started = Instant::now();
        let node = env.node_up(name, &labels).await?;
        env.kubelet_up(name, &archives).await?;
        say(&format!(
            "    {name}  eth0 {}  roles {}  Ready in {:.1} s",
            node.address(),
            roles.join(","),
            started.elapsed().as_secs_f64()
        ));
    }
    steps.done("3 Ready nodes");

    steps.begin(&format!("operator: helm install {RELEASE} {CHART}"));
    let chart = workspace.join(CHART);
    let repository = |name: &str| format!("{}/{name}", images::REPOSITORY);
    run(helm(env)
        .args(["upgrade", "--install", RELEASE])
        .arg(&chart)
        .args(["--namespace", NAMESPACE, "--create-namespace"])
        .args([
            "--set",
            &format!("operator.image.repository={}", repository("operator")),
        ])
        .args(["--set", &format!("operator.image.tag={}", images::TAG)])
        .args([
            "--set",
            &format!("handler.image.repository={}", repository("handler")),
        ])
        .args(["--set", &format!("handler.image.tag={}", images::TAG)]))?;
    let mut set_env = kubectl(env);
    set_env.args(["set", "env", "-n", NAMESPACE, "deployment/nmstate-operator"]);
    for (name, value, why) in OPERATOR_SETTINGS {
        say(&format!(
            "    kubectl set env deployment/nmstate-operator {name}={value}  ({why})"
        ));
        set_env.arg(format!("{name}={value}"));
    }
    run(&mut set_env)?;
    pods::rollout_status(env, NAMESPACE, "deployment/nmstate-operator", STEP_TIMEOUT)
        .map_err(|error| LocalEnvError::Demo(error.to_string()))?;
    // The first pod, without the settings, must be gone before NMState is created: else it
    // installs the handlers and its successor rolls them again.
    let pods = Api::<Pod>::namespaced(client.clone(), NAMESPACE);
    wait_until(env, "one operator pod left", || async {
        let list = pods.list(&Default::default()).await.ok()?;
        let operators = list
            .items
            .iter()
            .filter(|pod| {
                pod.metadata
                    .name
                    .as_deref()
                    .is_some_and(|name| name.starts_with("nmstate-operator-"))
            })
            .count();
        (operators == 1).then_some(())
    })
    .await?;
    steps.done("the operator's pod is Ready");

    steps.begin("NMState/nmstate: the operator installs the handler, webhook and cluster controller");
    apply_nmstate(env, &workspace)?;
    wait_until(env, "NMState nmstate Available", || {
        pods::nmstate_available(&client)
    })
    .await?;
    wait_until(env, "the webhook's CA bundle published", || {
        webhook_trusted(&client)
    })
    .await?;
    for line in run(kubectl(env).args(["get", "pods", "-n", NAMESPACE, "-o", "wide"]))?.lines() {
        say(&format!("    {line}"));
    }
    steps.done("Available");

    steps.begin("tour: example policies on the nodes");
    tour::run_tour(env, &client, &workspace).await?;
    steps.done("done");

    say(&format!(
        "\nThe demo is up ({:.0} s). Keep going with kubectl:\n\n  export KUBECONFIG={}\n  kubectl get nncp,nnce\n  kubectl get nns node02 -o yaml\n  kubectl get pods -n {NAMESPACE} -o wide; kubectl logs -n {NAMESPACE} ds/nmstate-handler\n\n`make demo-down` stops everything.",
        started.elapsed().as_secs_f64(),
        env.kubeconfig().display(),
    ));
    Ok(())
}

/// Everything the demo needs, all missing ones at once, each with what to do.
fn preflight(bin_dir: &Path, workspace: &Path) -> Result<()> {
    let mut missing = Vec::new();
    if nix::unistd::geteuid().as_raw() != 0 {
        missing.push("root (network namespaces for the nodes): run as root".to_string());
    }
    for program in PROGRAMS {
        if !bin_dir.join(program).is_file() {
            missing.push(format!(
                "{}: build the workspace with `cargo build --workspace` (`make demo` does)",
                bin_dir.join(program).display()
            ));
        }
    }
    for (tool, program) in [("helm", helm_program()), ("kubectl", kubectl_program())] {
        let found = program.is_file() || crate::control_plane::which(&program.to_string_lossy()).is_some();
        if !found {
            missing.push(format!("{tool}: install it with `make tools`"));
        }
    }
    for (tool, package) in [
        ("curl", "curl"),
        ("nsenter", "util-linux"),
        ("NetworkManager", "network-manager"),
    ] {
        if crate::control_plane::which(tool).is_none() {
            missing.push(format!(
                "{tool}: install the Debian package {package} (`make deps`)"
            ));
        }
    }
    if !workspace.join(CHART).join("Chart.yaml").is_file() {
        missing.push(format!("the Helm chart {CHART}: run `make generate`"));
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(LocalEnvError::Demo(format!(
            "missing prerequisites:\n  - {}",
            missing.join("\n  - ")
        )))
    }
}

/// A second run starts the demo over: its policies deleted and its nodes rebuilt with fresh
/// NetworkManager and kubelet state (their pods go with them); the control plane is kept.
async fn reset_previous_run(env: &LocalEnv) -> Result<()> {
    let previous: Vec<String> = env.nodes().into_iter().map(|node| node.name).collect();
    if previous.is_empty() {
        return Ok(());
    }
    say(&format!(
        "    starting over: previous nodes {} rebuilt, policies deleted",
        previous.join(", ")
    ));
    // Policies do not call the webhook on delete, so its absence does not block this.
    let _ = run(kubectl(env).args(["delete", "nncp", "--all", "--wait=false"]));
    for name in previous {
        env.node_down(&name).await?;
    }
    Ok(())
}

/// `examples/nmstate.yaml`, with the DNS probe aimed at a name this network resolves.
fn apply_nmstate(env: &LocalEnv, workspace: &Path) -> Result<()> {
    let path = workspace.join("examples/nmstate.yaml");
    let text = std::fs::read_to_string(&path).map_err(LocalEnvError::io("read", &path))?;
    let mut nmstate: serde_json::Value = serde_yaml::from_str(&text)
        .map_err(|error| LocalEnvError::Demo(format!("{}: {error}", path.display())))?;
    nmstate["spec"]["probeConfiguration"] = serde_json::json!({"dns": {"host": DNS_PROBE_HOST}});
    say(&format!(
        "    kubectl apply -f examples/nmstate.yaml, with spec.probeConfiguration.dns.host: {DNS_PROBE_HOST}"
    ));
    let file = env.dir().join("demo-nmstate.yaml");
    let text = serde_json::to_string_pretty(&nmstate)
        .map_err(std::io::Error::other)
        .map_err(LocalEnvError::io("write", &file))?;
    std::fs::write(&file, text).map_err(LocalEnvError::io("write", &file))?;
    run(kubectl(env).args(["apply", "-f"]).arg(&file))?;
    Ok(())
}

/// The API server can call the webhook once its CA is in every webhook's `caBundle`.
async fn webhook_trusted(client: &Client) -> Option<()> {
    let configurations = Api::<ValidatingWebhookConfiguration>::all(client.clone());
    let configuration = configurations.get_opt("nmstate").await.ok()??;
    let trusted = configuration.webhooks.iter().flatten().all(|webhook| {
        webhook
            .client_config
            .ca_bundle
            .as_ref()
            .is_some_and(|bundle| !bundle.0.is_empty())
    });
    trusted.then_some(())
}

/// Polls `probe` until it answers ([`eventually`]), or fails after [`STEP_TIMEOUT`] naming
/// the logs to read.
async fn wait_until<T, F, Fut>(env: &LocalEnv, what: &str, probe: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    eventually(what, STEP_TIMEOUT, probe)
        .await
        .map_err(|timed_out| LocalEnvError::Demo(format!("{timed_out}\n{}", pods::report(env, NAMESPACE))))
}

/// Numbered steps with the time each took.
struct Steps {
    total: usize,
    current: usize,
    started: Instant,
}

impl Steps {
    fn new(total: usize) -> Self {
        Steps {
            total,
            current: 0,
            started: Instant::now(),
        }
    }

    fn begin(&mut self, what: &str) {
        self.current += 1;
        self.started = Instant::now();
        say(&format!("\n[{}/{}] {what}", self.current, self.total));
    }

    fn done(&self, outcome: &str) {
        say(&format!(
            "[{}/{}] {outcome} ({:.1} s)",
            self.current,
            self.total,
            self.started.elapsed().as_secs_f64()
        ));
    }
}

/// One line of the demo's output, at once (it is read as it runs).
fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// The directory the running `localenv` was started from: the workspace's build, where the
/// other binaries are.
pub fn default_bin_dir() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(Path::to_path_buf))
        .unwrap_or_else(|| PathBuf::from("target/debug"))
}
