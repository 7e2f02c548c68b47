//! `make demo`: the whole product on this machine, installed and used the way a user would.
//!
//! 1. the control plane, and three sandbox nodes labelled like a real cluster's;
//! 2. the Helm chart from `manifests/`, then the kubelet's part ([`crate::kubelet::pods`], a detached
//!    `localenv kubelet` process) runs what it installed: the operator's Deployment;
//! 3. `NMState/nmstate`: the operator renders the handler DaemonSet, the webhook and the cluster
//!    controller, and the same stand-in runs them (a handler inside each node);
//! 4. a tour of `examples/` policies ([`tour`]);
//! 5. everything is left running; `make demo-down` (`localenv cluster down`) stops it.
//!
//! A second run reuses the control plane and starts the demo over on fresh nodes.

mod tour;

use crate::{
    LocalEnv, LocalEnvError, Result,
    daemon::{Daemon, run},
    kubelet::pods::{EnvOverride, Pods},
    testing::{eventually, helm, helm_program, kubectl, kubectl_program},
};
use k8s_openapi::api::{admissionregistration::v1::ValidatingWebhookConfiguration, apps::v1::Deployment};
use kube::{Api, Client};
use nmstate_api::NMState;
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
/// There is no Service network here: the API server calls the webhook on the host.
const WEBHOOK_URL: &str = "https://127.0.0.1:9443";
/// What the demo sets on the operator's container beyond the chart's Deployment, and why.
const OPERATOR_SETTINGS: [(&str, &str, &str); 3] = [
    (
        "WEBHOOK_URL",
        WEBHOOK_URL,
        "no Service network: the API server calls the webhook on the host",
    ),
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
const OPERATOR_CONTAINER: &str = "nmstate-operator";
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

    steps.begin("control plane: kube-apiserver, etcd, kube-controller-manager");
    let reused = env.control_plane().is_running();
    let endpoints = env.up().await?;
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
        "nodes: node01 (control plane), node02 and node03 (workers), each with its own NetworkManager",
    );
    reset_previous_run(env).await?;
    for (name, roles) in NODES {
        let labels: BTreeMap<String, String> = roles
            .iter()
            .map(|role| (role.to_string(), String::new()))
            .collect();
        let node = env.node_up(name, &labels).await?;
        say(&format!(
            "    {name}  eth0 {}  roles {}",
            node.address(),
            roles.join(",")
        ));
    }
    steps.done("3 Ready nodes");

    steps.begin(&format!(
        "operator: helm install {RELEASE} {CHART}, run as its Deployment says"
    ));
    let chart = workspace.join(CHART);
    run(helm(env)
        .args(["upgrade", "--install", RELEASE])
        .arg(&chart)
        .args(["--namespace", NAMESPACE, "--create-namespace"]))?;
    expect_free_ports()?;
    start_kubelet(env, bin_dir)?;
    for (name, value, why) in OPERATOR_SETTINGS {
        say(&format!("    {OPERATOR_CONTAINER} {name}={value}  ({why})"));
    }
    wait_for_deployment(&client, "nmstate-operator", env).await?;
    steps.done("the chart's Deployment runs and is ready");

    steps.begin("NMState/nmstate: the operator installs the handler, webhook and cluster controller");
    apply_nmstate(env, &workspace)?;
    wait_until(env, "NMState nmstate Available", || nmstate_available(&client)).await?;
    wait_until(env, "the webhook's CA bundle published", || {
        webhook_trusted(&client)
    })
    .await?;
    say(&format!(
        "    pods (processes) in {}:",
        Pods::root(env).join(NAMESPACE).display()
    ));
    for line in run(kubectl(env).args(["get", "daemonsets,deployments", "-n", NAMESPACE]))?.lines() {
        say(&format!("    {line}"));
    }
    steps.done("Available");

    steps.begin("tour: example policies on the nodes");
    tour::run_tour(env, &client, &workspace).await?;
    steps.done("done");

    say(&format!(
        "\nThe demo is up ({:.0} s). Keep going with kubectl:\n\n  export KUBECONFIG={}\n  kubectl get nncp,nnce\n  kubectl get nns node02 -o yaml\n\nLogs: {} (one per process). `make demo-down` stops everything.",
        started.elapsed().as_secs_f64(),
        env.kubeconfig().display(),
        Pods::root(env).join(NAMESPACE).display(),
    ));
    Ok(())
}

/// The host ports the operator's, webhook's and cluster controller's pods listen on (they run on
/// the host here, not in pods of their own): taken ones fail now, clearly, not as a pod that
/// exits later.
fn expect_free_ports() -> Result<()> {
    let taken: Vec<String> = [8081, 8089, 9443]
        .into_iter()
        .filter(|port| std::net::TcpListener::bind(("0.0.0.0", *port)).is_err())
        .map(|port| port.to_string())
        .collect();
    if taken.is_empty() {
        return Ok(());
    }
    Err(LocalEnvError::Demo(format!(
        "port(s) {} are in use; the operator (8081), cluster controller (8089) and webhook (9443) listen there. Is another demo running (`make demo-down`, or `localenv --dir <dir> demo down`)?",
        taken.join(", ")
    )))
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

/// A second run starts the demo over: its processes stopped, its policies deleted and its
/// nodes rebuilt with fresh NetworkManager state; the control plane is kept.
async fn reset_previous_run(env: &LocalEnv) -> Result<()> {
    stop_kubelet(env);
    Pods::stop_all(env);
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

/// The detached `localenv kubelet` process that runs the namespace's pods.
fn kubelet_daemon(env: &LocalEnv) -> Daemon {
    let executable = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.file_name().map(|name| name.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "localenv".into());
    Daemon::new("kubelet", &executable, &Pods::root(env))
}

/// Stops the `localenv kubelet` process of `env`, if it runs.
pub fn stop_kubelet(env: &LocalEnv) {
    kubelet_daemon(env).stop(Duration::from_secs(10));
}

fn start_kubelet(env: &LocalEnv, bin_dir: &Path) -> Result<()> {
    let daemon = kubelet_daemon(env);
    daemon.stop(Duration::from_secs(10));
    std::fs::create_dir_all(Pods::root(env)).map_err(LocalEnvError::io("create", Pods::root(env)))?;
    let exe = std::env::current_exe().map_err(LocalEnvError::io("find", "the localenv program"))?;
    let mut command = std::process::Command::new(exe);
    command
        .arg("--dir")
        .arg(env.dir())
        .args(["kubelet", "--namespace", NAMESPACE, "--bin-dir"])
        .arg(bin_dir);
    for (name, value, _) in OPERATOR_SETTINGS {
        let setting = EnvOverride {
            container: OPERATOR_CONTAINER.into(),
            name: name.into(),
            value: value.into(),
        };
        command.arg("--set").arg(setting.to_string());
    }
    daemon.spawn(command)?;
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

async fn wait_for_deployment(client: &Client, name: &str, env: &LocalEnv) -> Result<()> {
    let deployments = Api::<Deployment>::namespaced(client.clone(), NAMESPACE);
    wait_until(env, &format!("Deployment {name} ready"), || async {
        let deployment = deployments.get_opt(name).await.ok()??;
        let ready = deployment.status?.ready_replicas.unwrap_or(0);
        (ready > 0).then_some(())
    })
    .await
}

async fn nmstate_available(client: &Client) -> Option<()> {
    let nmstate = Api::<NMState>::all(client.clone())
        .get_opt("nmstate")
        .await
        .ok()??;
    let conditions = nmstate.status?.conditions;
    nmstate_api::condition::find_condition(&conditions, "Available")
        .is_some_and(nmstate_api::Condition::is_true)
        .then_some(())
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
    eventually(what, STEP_TIMEOUT, probe).await.map_err(|timed_out| {
        LocalEnvError::Demo(format!(
            "{timed_out}; the processes' logs are in {} (kubelet.log: what ran)",
            Pods::root(env).display()
        ))
    })
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
