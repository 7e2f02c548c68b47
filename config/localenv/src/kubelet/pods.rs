//! The kubelet's part, played for one namespace where no kubelet runs: each DaemonSet's pod on
//! every sandbox node its nodeSelector matches (inside that node), each Deployment's replicas on
//! the host, each as the process its container runs ([`crate::kubelet`]), with the API rights of
//! its ServiceAccount (impersonated). A pod is restarted when its workload's template changes
//! (a new generation) or its process dies, stopped when its workload is gone, and ready when its
//! readiness probe answers (or, without one, while it runs); the workloads' status says so, as
//! the kubelet and the workload controllers would write it.
//!
//! Pods are detached processes with pid files under `<env>/pods/<namespace>/`, so they outlive
//! the command that started them; `localenv cluster down` stops them.

use crate::{
    LocalEnv, SandboxNode,
    daemon::Daemon,
    error::{LocalEnvError, Result},
    kubelet::{self, PodFacts},
};
use k8s_openapi::api::{
    apps::v1::{DaemonSet, Deployment},
    core::v1::{Container, Node, PodSpec, Probe},
};
use kube::{
    Api, Client, ResourceExt,
    api::{ListParams, Patch, PatchParams},
};
use serde_json::json;
use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

/// One container of one pod, as this stand-in runs it.
struct PodProcess {
    /// `<workload>-<node>` for a DaemonSet, `<workload>-<replica>` for a Deployment.
    pod: String,
    workload: Workload,
    generation: i64,
    spec: PodSpec,
    container: Container,
    /// The sandbox node it runs in; `None`: on the host.
    node: Option<SandboxNode>,
}

impl PodProcess {
    /// The program its container runs (`command[0]`), as `/proc/<pid>/exe` names it.
    fn program(&self) -> String {
        self.container
            .command
            .iter()
            .flatten()
            .next()
            .cloned()
            .unwrap_or_default()
    }
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Workload {
    DaemonSet(String),
    Deployment(String),
}

/// An environment variable a container gets on top of its pod template, for settings that only
/// make sense here (where the API server reaches the webhook, shorter probe timeouts).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EnvOverride {
    pub container: String,
    pub name: String,
    pub value: String,
}

impl std::str::FromStr for EnvOverride {
    type Err = String;

    /// `CONTAINER:NAME=VALUE`.
    fn from_str(text: &str) -> Result<Self, String> {
        let parsed = text
            .split_once(':')
            .and_then(|(container, rest)| Some((container, rest.split_once('=')?)));
        match parsed {
            Some((container, (name, value))) if !container.is_empty() && !name.is_empty() => {
                Ok(EnvOverride {
                    container: container.into(),
                    name: name.into(),
                    value: value.into(),
                })
            }
            _ => Err(format!("expected CONTAINER:NAME=VALUE, got {text:?}")),
        }
    }
}

impl std::fmt::Display for EnvOverride {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}={}", self.container, self.name, self.value)
    }
}

/// What one round changed, for the log.
#[derive(Debug, Default)]
pub struct Round {
    pub started: Vec<String>,
    pub stopped: Vec<String>,
}

/// The stand-in for the pods of `namespace` in `env`.
pub struct Pods {
    env: LocalEnv,
    namespace: String,
    overrides: Vec<EnvOverride>,
    /// Where the containers' programs are (the workspace's build).
    bin_dir: PathBuf,
}

impl Pods {
    pub fn new(env: &LocalEnv, namespace: &str, overrides: Vec<EnvOverride>, bin_dir: &Path) -> Self {
        Pods {
            env: env.clone(),
            namespace: namespace.to_string(),
            overrides,
            bin_dir: bin_dir.to_path_buf(),
        }
    }

    /// The directory of every namespace's pods in `env`.
    pub fn root(env: &LocalEnv) -> PathBuf {
        env.dir().join("pods")
    }

    fn dir(&self) -> PathBuf {
        Pods::root(&self.env).join(&self.namespace)
    }

    /// One round: start what should run and does not, restart what changed or died, stop what
    /// should not run, then write the workloads' status.
    pub async fn sync(&self, client: &Client) -> Result<Round> {
        let dir = self.dir();
        std::fs::create_dir_all(&dir).map_err(LocalEnvError::io("create", &dir))?;
        let daemonsets = Api::<DaemonSet>::namespaced(client.clone(), &self.namespace);
        let deployments = Api::<Deployment>::namespaced(client.clone(), &self.namespace);
        let nodes = Api::<Node>::all(client.clone())
            .list(&ListParams::default())
            .await?;
        let daemonsets = daemonsets.list(&ListParams::default()).await?.items;
        let deployments = deployments.list(&ListParams::default()).await?.items;

        let mut wanted = Vec::new();
        for daemonset in &daemonsets {
            wanted.extend(self.daemonset_pods(daemonset, &nodes.items));
        }
        for deployment in &deployments {
            wanted.extend(self.deployment_pods(deployment));
        }

        let mut round = Round::default();
        let wanted_names: BTreeSet<&str> = wanted.iter().map(|pod| pod.pod.as_str()).collect();
        for (pod, daemon) in self.running_pods() {
            if !wanted_names.contains(pod.as_str()) {
                daemon.stop(Duration::from_secs(15));
                let _ = std::fs::remove_file(stamp_file(&dir, &pod));
                round.stopped.push(pod);
            }
        }
        for pod in &wanted {
            let daemon = self.daemon(pod);
            let current = daemon.running_pid().is_some() && read_stamp(&dir, &pod.pod) == Some(stamp(pod));
            if !current {
                daemon.stop(Duration::from_secs(15));
                self.start(pod, &daemon)?;
                round.started.push(pod.pod.clone());
            }
        }

        // (pods wanted, pods ready) per workload.
        let mut ready: BTreeMap<Workload, (i32, i32)> = BTreeMap::new();
        for pod in &wanted {
            let counts = ready.entry(pod.workload.clone()).or_default();
            counts.0 += 1;
            if self.daemon(pod).running_pid().is_some() && self.is_ready(pod) {
                counts.1 += 1;
            }
        }
        let count = |workload: Workload| ready.get(&workload).copied().unwrap_or_default();
        let daemonsets_api = Api::<DaemonSet>::namespaced(client.clone(), &self.namespace);
        for daemonset in &daemonsets {
            let status = daemonset_status(daemonset, count(Workload::DaemonSet(daemonset.name_any())));
            write_status(&daemonsets_api, daemonset, status).await?;
        }
        let deployments_api = Api::<Deployment>::namespaced(client.clone(), &self.namespace);
        for deployment in &deployments {
            let status = deployment_status(deployment, count(Workload::Deployment(deployment.name_any())));
            write_status(&deployments_api, deployment, status).await?;
        }
        Ok(round)
    }

    /// Syncs every second until SIGTERM (or SIGINT); then leaves the pods running, as a
    /// restarted kubelet finds them. Each change is logged; an error is logged and retried.
    pub async fn run_until_stopped(&self, client: &Client) {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut terminate), Ok(mut interrupt)) =
            (signal(SignalKind::terminate()), signal(SignalKind::interrupt()))
        else {
            tracing::error!("cannot install signal handlers");
            return;
        };
        let mut last_error = String::new();
        loop {
            match self.sync(client).await {
                Ok(round) => {
                    last_error.clear();
                    for pod in round.started {
                        tracing::info!(namespace = %self.namespace, %pod, "pod started");
                    }
                    for pod in round.stopped {
                        tracing::info!(namespace = %self.namespace, %pod, "pod stopped");
                    }
                }
                Err(error) => {
                    // Logged once until it changes: the API server may be restarting.
                    let text = error.to_string();
                    if text != last_error {
                        tracing::warn!(namespace = %self.namespace, "sync failed (retrying every second): {text}");
                        last_error = text;
                    }
                }
            }
            tokio::select! {
                _ = terminate.recv() => return,
                _ = interrupt.recv() => return,
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }

    /// Stops every pod of every namespace in `env`.
    pub fn stop_all(env: &LocalEnv) {
        let root = Pods::root(env);
        let namespaces = std::fs::read_dir(&root).into_iter().flatten().flatten();
        for namespace in namespaces {
            for (_, daemon) in Pods::started_pods(env, &namespace.file_name().to_string_lossy()) {
                daemon.stop(Duration::from_secs(15));
            }
        }
        let _ = std::fs::remove_dir_all(&root);
    }

    fn running_pods(&self) -> Vec<(String, Daemon)> {
        Pods::started_pods(&self.env, &self.namespace)
    }

    /// The pods of `namespace` in `env` that have a pid file (running or not), by name, each
    /// as the daemon of the program it was started with.
    pub fn started_pods(env: &LocalEnv, namespace: &str) -> Vec<(String, Daemon)> {
        let dir = Pods::root(env).join(namespace);
        let entries = std::fs::read_dir(&dir).into_iter().flatten().flatten();
        entries
            .filter_map(|entry| {
                let name = entry.file_name().to_string_lossy().into_owned();
                let pod = name.strip_suffix(".pid")?.to_string();
                let executable = read_stamp(&dir, &pod)?.split_whitespace().nth(1)?.to_string();
                let daemon = Daemon::new(&pod, &executable, &dir);
                Some((pod, daemon))
            })
            .collect()
    }

    fn daemonset_pods(&self, daemonset: &DaemonSet, nodes: &[Node]) -> Vec<PodProcess> {
        let Some(spec) = daemonset
            .spec
            .as_ref()
            .and_then(|spec| spec.template.spec.clone())
        else {
            return vec![];
        };
        let selector = spec.node_selector.clone().unwrap_or_default();
        let mut pods = Vec::new();
        for node in nodes {
            let labels = node.labels();
            if !selector.iter().all(|(key, value)| labels.get(key) == Some(value)) {
                continue;
            }
            let Some(sandbox) = self.env.node(&node.name_any()) else {
                continue;
            };
            for container in &spec.containers {
                pods.push(PodProcess {
                    pod: format!("{}-{}", daemonset.name_any(), sandbox.name),
                    workload: Workload::DaemonSet(daemonset.name_any()),
                    generation: daemonset.metadata.generation.unwrap_or(0),
                    spec: spec.clone(),
                    container: container.clone(),
                    node: Some(sandbox.clone()),
                });
            }
        }
        pods
    }

    fn deployment_pods(&self, deployment: &Deployment) -> Vec<PodProcess> {
        let Some(spec) = deployment.spec.as_ref() else {
            return vec![];
        };
        let Some(pod_spec) = spec.template.spec.clone() else {
            return vec![];
        };
        let mut pods = Vec::new();
        for replica in 0..spec.replicas.unwrap_or(1).max(0) {
            for container in &pod_spec.containers {
                pods.push(PodProcess {
                    pod: format!("{}-{replica}", deployment.name_any()),
                    workload: Workload::Deployment(deployment.name_any()),
                    generation: deployment.metadata.generation.unwrap_or(0),
                    spec: pod_spec.clone(),
                    container: container.clone(),
                    node: None,
                });
            }
        }
        pods
    }

    fn daemon(&self, pod: &PodProcess) -> Daemon {
        Daemon::new(&pod.pod, &pod.program(), &self.dir())
    }

    /// Starts `pod`'s container as the kubelet would, with its ServiceAccount's rights.
    fn start(&self, pod: &PodProcess, daemon: &Daemon) -> Result<()> {
        let service_account = pod.spec.service_account_name.as_deref().unwrap_or("default");
        let node_name = pod.node.as_ref().map_or("localhost", |node| node.name.as_str());
        let facts = PodFacts {
            namespace: &self.namespace,
            name: &pod.pod,
            node: node_name,
            service_account,
        };
        let mut run = kubelet::invocation(&pod.container, &facts)?;
        if let Some(node) = &pod.node {
            let root = node.dir().join("root");
            kubelet::container::mount_host_paths(&mut run, &pod.spec, &pod.container, &root)
                .map_err(LocalEnvError::io("create host paths in", &root))?;
        }
        for extra in self
            .overrides
            .iter()
            .filter(|extra| extra.container == pod.container.name)
        {
            run.set_env(&extra.name, &extra.value);
        }
        let program = self.bin_dir.join(&run.program);
        if !program.is_file() {
            return Err(LocalEnvError::MissingTool {
                what: "a container's program",
                path: program,
                hint: "build the workspace first: `cargo build --workspace` (make demo does)",
            });
        }
        // In a node, the API server is at the node's gateway, reached over its eth0.
        let (source, mut command) = match &pod.node {
            Some(node) => (
                self.env.control_plane().node_kubeconfig(),
                node.command(&program)?,
            ),
            None => (self.env.kubeconfig(), Command::new(&program)),
        };
        let kubeconfig = self.dir().join(format!("{}.kubeconfig", pod.pod));
        crate::write_impersonating_kubeconfig(&source, &kubeconfig, &facts.user())?;
        command
            .args(&run.args)
            .envs(run.env)
            .env("KUBECONFIG", &kubeconfig);
        let stamp_path = stamp_file(&self.dir(), &pod.pod);
        std::fs::write(&stamp_path, stamp(pod)).map_err(LocalEnvError::io("write", &stamp_path))?;
        daemon.spawn(command)?;
        Ok(())
    }

    /// The readiness probe's verdict (httpGet, as the kubelet runs it: HTTPS unverified), or
    /// true for a container without one.
    fn is_ready(&self, pod: &PodProcess) -> bool {
        let Some(get) = pod
            .container
            .readiness_probe
            .as_ref()
            .and_then(|probe: &Probe| probe.http_get.as_ref())
        else {
            return true;
        };
        let port = match &get.port {
            k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(port) => Some(*port),
            k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String(name) => pod
                .container
                .ports
                .iter()
                .flatten()
                .find(|port| port.name.as_deref() == Some(name.as_str()))
                .map(|port| port.container_port),
        };
        let Some(port) = port else {
            return false;
        };
        let scheme = get.scheme.as_deref().unwrap_or("HTTP").to_ascii_lowercase();
        let url = format!(
            "{scheme}://127.0.0.1:{port}{}",
            get.path.as_deref().unwrap_or("/")
        );
        let command = match &pod.node {
            Some(node) => node.command("curl").ok(),
            None => Some(Command::new("curl")),
        };
        command.is_some_and(|mut curl| {
            curl.args(["-ksf", "--max-time", "2", "-o", "/dev/null", &url])
                .stdin(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status()
                .is_ok_and(|status| status.success())
        })
    }
}

/// What identifies a pod's running incarnation: its workload's generation and its program.
fn stamp(pod: &PodProcess) -> String {
    format!("{} {}\n", pod.generation, pod.program())
}

fn stamp_file(dir: &Path, pod: &str) -> PathBuf {
    dir.join(format!("{pod}.pod"))
}

fn read_stamp(dir: &Path, pod: &str) -> Option<String> {
    std::fs::read_to_string(stamp_file(dir, pod)).ok()
}

/// What the DaemonSet controller would write for `scheduled` pods of which `ready` are ready.
fn daemonset_status(daemonset: &DaemonSet, (scheduled, ready): (i32, i32)) -> serde_json::Value {
    json!({
        "desiredNumberScheduled": scheduled, "currentNumberScheduled": scheduled,
        "numberMisscheduled": 0, "numberReady": ready, "numberAvailable": ready,
        "numberUnavailable": scheduled - ready, "updatedNumberScheduled": scheduled,
        "observedGeneration": daemonset.metadata.generation,
    })
}

/// What the Deployment controller would write for `replicas` pods of which `ready` are ready.
fn deployment_status(deployment: &Deployment, (replicas, ready): (i32, i32)) -> serde_json::Value {
    json!({
        "replicas": replicas, "updatedReplicas": replicas, "readyReplicas": ready,
        "availableReplicas": ready, "unavailableReplicas": replicas - ready,
        "observedGeneration": deployment.metadata.generation,
    })
}

/// Writes `status` to `object` unless it already says that.
async fn write_status<K>(api: &Api<K>, object: &K, status: serde_json::Value) -> Result<()>
where
    K: kube::Resource + serde::Serialize + serde::de::DeserializeOwned + Clone + std::fmt::Debug,
{
    let current = serde_json::to_value(object).unwrap_or_default();
    if same_fields(&current["status"], &status) {
        return Ok(());
    }
    api.patch_status(
        &object.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&json!({"status": status})),
    )
    .await?;
    Ok(())
}

/// True when every field of `wanted` has that value in `current` (a missing count is 0, as the
/// API server leaves zero counts out).
fn same_fields(current: &serde_json::Value, wanted: &serde_json::Value) -> bool {
    wanted.as_object().into_iter().flatten().all(|(key, value)| {
        let have = current.get(key).filter(|have| !have.is_null());
        have == Some(value) || (have.is_none() && value == &json!(0))
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // test code

    use super::*;

    #[test]
    fn overrides_are_container_name_equals_value() {
        let parsed: EnvOverride = "nmstate-operator:WEBHOOK_URL=https://127.0.0.1:9443"
            .parse()
            .unwrap();
        assert_eq!(parsed.container, "nmstate-operator");
        assert_eq!(parsed.name, "WEBHOOK_URL");
        assert_eq!(parsed.value, "https://127.0.0.1:9443");
        for bad in ["WEBHOOK_URL=x", ":A=b", "c:=b", "c:A"] {
            assert!(bad.parse::<EnvOverride>().is_err(), "{bad}");
        }
    }

    #[test]
    fn zero_counts_left_out_by_the_api_server_count_as_equal() {
        let wanted = json!({"numberReady": 2, "numberUnavailable": 0});
        assert!(same_fields(&json!({"numberReady": 2}), &wanted));
        assert!(!same_fields(&json!({"numberReady": 1}), &wanted));
        assert!(!same_fields(
            &json!({"numberReady": 2, "numberUnavailable": 1}),
            &wanted
        ));
    }
}
