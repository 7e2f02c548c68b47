//! The local environment the project is developed and tested against, with real components
//! only: a control plane (kube-apiserver, kube-controller-manager, etcd) of the current
//! Kubernetes built from its Go modules or of v1.20.2 built from Debian's source package, and
//! NetworkManager nodes, each in its own network namespace with its own dbus-daemon, cabled to a
//! switch namespace running dnsmasq.
//!
//! One directory holds one environment (default `target/localenv`, or `NMSTATE_LOCALENV_DIR`).
//! `make cluster-up`/`cluster-down`, `make demo` and the integration tests drive it through this
//! crate; its binary is `localenv`.

/// `make demo`: the whole product on this machine, and a tour of example policies.
pub mod demo;
/// The environment: control plane, switch, nodes, and the daemons and namespaces they run in.
mod environment;
mod error;
/// The images the nodes run, written as OCI archives without a container engine.
pub mod images;
/// What a pod's container runs, from its template (tests run the operator that way).
pub mod kubelet;
/// The product's pods as a user looks at them: rollout status, what the unready ones say.
pub mod pods;
/// What integration tests share: the shared environment, sandbox nodes, kubectl, waiting.
pub mod testing;

pub use environment::{control_plane, daemon, egress, fabric, kube_node, node, release};
use environment::{netns, pki};

pub use control_plane::{ControlPlane, Endpoints, Workloads};
pub use error::{LocalEnvError, Result};
pub use fabric::Fabric;
pub use node::SandboxNode;
pub use release::KubeRelease;

use k8s_openapi::api::core::v1::Node;
use kube::{
    Api, Client, Config,
    api::{DeleteParams, Patch, PatchParams},
    config::{KubeConfigOptions, Kubeconfig},
};
use nix::fcntl::{Flock, FlockArg};
use std::{
    collections::BTreeMap,
    fs::File,
    path::{Path, PathBuf},
};

/// The `localenv` program: this one, or, when a test links this crate, the one built with the
/// test (tests are in `<target>/debug/deps/`, wherever `CARGO_TARGET_DIR` puts `<target>`).
pub fn localenv_program() -> PathBuf {
    let exe = std::env::current_exe().ok();
    let this = exe
        .clone()
        .filter(|exe| exe.file_name().is_some_and(|name| name == "localenv"));
    let beside_the_test =
        || Some(exe.as_deref()?.parent()?.parent()?.join("localenv")).filter(|path| path.is_file());
    this.or_else(beside_the_test)
        .unwrap_or_else(|| workspace_dir().join("target/debug/localenv"))
}

/// The field managers of what localenv writes to the API. Kubernetes before 1.22 does not
/// track `/status` separately in managedFields: an apply to status by the manager that owns the
/// labels would remove them, so status has a manager of its own.
const FIELD_MANAGER: &str = "localenv";
const STATUS_FIELD_MANAGER: &str = "localenv-status";

/// One local environment: a control plane, a fabric and its nodes, all under one directory.
#[derive(Clone, Debug)]
pub struct LocalEnv {
    dir: PathBuf,
    /// Short, per-directory prefix of namespace names, so environments never collide.
    prefix: String,
}

impl LocalEnv {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        let dir: PathBuf = dir.into();
        let dir = std::path::absolute(&dir).unwrap_or(dir);
        let prefix = format!("nmle{:06x}", fnv1a(dir.to_string_lossy().as_bytes()) & 0xff_ffff);
        LocalEnv { dir, prefix }
    }

    /// `NMSTATE_LOCALENV_DIR`, or `target/localenv` in this workspace.
    pub fn from_env() -> Self {
        match std::env::var_os("NMSTATE_LOCALENV_DIR") {
            Some(dir) => LocalEnv::new(dir),
            None => LocalEnv::new(workspace_dir().join("target/localenv")),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn control_plane(&self) -> ControlPlane {
        ControlPlane::new(&self.dir)
    }

    pub fn fabric(&self) -> Fabric {
        Fabric::new(&self.dir, &self.prefix)
    }

    pub fn kubeconfig(&self) -> PathBuf {
        self.control_plane().kubeconfig()
    }

    /// Starts the control plane for nodes without kubelets, or reuses it when it is already
    /// running and ready.
    pub async fn up(&self) -> Result<Endpoints> {
        self.up_for(Workloads::Processes).await
    }

    /// Starts the control plane for `workloads`, or reuses it when it is already running,
    /// ready and started for them.
    pub async fn up_for(&self, workloads: Workloads) -> Result<Endpoints> {
        std::fs::create_dir_all(&self.dir).map_err(LocalEnvError::io("create", &self.dir))?;
        let _lock = self.lock().await?;
        let control_plane = self.control_plane();
        let release = KubeRelease::from_env()?;
        if let Some(endpoints) = control_plane.endpoints()
            && control_plane.is_running()
            && control_plane.release() == Some(release)
            && control_plane.workloads() == workloads
            && self.answers().await
        {
            return Ok(endpoints);
        }
        // Whatever is left from an earlier run (crashed, half started, or of another release)
        // goes first.
        self.stop_everything()?;
        control_plane.start(release, workloads).await
    }

    /// True when the API server answers with the credentials in the kubeconfig.
    async fn answers(&self) -> bool {
        match client_from(&self.kubeconfig()).await {
            Ok(client) => client.apiserver_version().await.is_ok(),
            Err(_) => false,
        }
    }

    /// Stops every node, the fabric and the control plane, and deletes their data.
    pub async fn down(&self) -> Result<()> {
        if !self.dir.exists() {
            return Ok(());
        }
        let _lock = self.lock().await?;
        self.stop_everything()
    }

    fn stop_everything(&self) -> Result<()> {
        for node in self.nodes() {
            node.stop()?;
        }
        let nodes = self.dir.join("nodes");
        if nodes.exists() {
            std::fs::remove_dir_all(&nodes).map_err(LocalEnvError::io("remove", &nodes))?;
        }
        self.fabric().stop()?;
        self.control_plane().stop()
    }

    /// An admin client for the running control plane.
    pub async fn client(&self) -> Result<Client> {
        if !self.control_plane().is_running() {
            return Err(LocalEnvError::ClusterDown {
                dir: self.dir.clone(),
            });
        }
        client_from(&self.kubeconfig()).await
    }

    /// Starts (or repairs) the sandbox node `name` and registers it as a Ready `Node` with
    /// the usual well-known labels plus `labels`.
    pub async fn node_up(&self, name: &str, labels: &BTreeMap<String, String>) -> Result<SandboxNode> {
        validate_node_name(name)?;
        if nix::unistd::geteuid().as_raw() != 0 {
            return Err(LocalEnvError::NotRoot);
        }
        let client = self.client().await?;
        // The lock is taken and released on the blocking thread that does the work, never held
        // by a future: a test that blocks its runtime (a TestNode dropped while another starts)
        // cannot then keep it from being released.
        let dir = self.dir.clone();
        let prefix = self.prefix.clone();
        let name_owned = name.to_string();
        let env = self.clone();
        let fabric = self.fabric();
        let control_plane = self.control_plane();
        let node = tokio::task::spawn_blocking(move || {
            let _lock = lock_file(&dir)?;
            let node = match env.node(&name_owned) {
                Some(existing) => existing,
                None => SandboxNode::new(&dir, &prefix, &name_owned, env.free_index(), &control_plane),
            };
            fabric.ensure(&control_plane)?;
            node.start(&fabric)?;
            Ok::<_, LocalEnvError>(node)
        })
        .await
        .map_err(|error| LocalEnvError::Node {
            name: name.to_string(),
            reason: error.to_string(),
        })??;
        let kubelets = self.control_plane().workloads() == Workloads::Kubelets;
        register_node(&client, &node, labels, !kubelets).await?;
        Ok(node)
    }

    /// Where [`LocalEnv::build_images`] writes the nodes' images.
    pub fn images_dir(&self) -> PathBuf {
        self.dir.join("images")
    }

    /// The image archives built for this environment's nodes.
    pub fn image_archives(&self) -> Vec<PathBuf> {
        let mut archives: Vec<PathBuf> = std::fs::read_dir(self.images_dir())
            .map(|entries| {
                entries
                    .flatten()
                    .map(|entry| entry.path())
                    .filter(|path| path.to_string_lossy().ends_with(".oci.tar"))
                    .collect()
            })
            .unwrap_or_default();
        archives.sort();
        archives
    }

    /// Builds the pause, operator and handler images from the binaries in `bin_dir` and the
    /// control plane's release (its pause), for [`LocalEnv::kubelet_up`].
    pub fn build_images(&self, bin_dir: &Path) -> Result<Vec<PathBuf>> {
        let release = KubeRelease::from_env()?;
        images::build_all(&workspace_dir(), bin_dir, &release.bin_dir(), &self.images_dir())
    }

    /// Makes the running sandbox node `name` a real Kubernetes node: containerd with `images`
    /// imported, a kubelet and kube-proxy of the control plane's release, a pod network on the
    /// pod CIDR the controller manager gives it, routed through the fabric. Returns once the
    /// kubelet reports the Node Ready. Needs a control plane started for
    /// [`Workloads::Kubelets`].
    pub async fn kubelet_up(&self, name: &str, images: &[PathBuf]) -> Result<()> {
        let node = self.node(name).ok_or_else(|| LocalEnvError::Node {
            name: name.to_string(),
            reason: "no such sandbox node; start it with `localenv node up`".into(),
        })?;
        let control_plane = self.control_plane();
        if control_plane.workloads() != Workloads::Kubelets {
            return Err(LocalEnvError::Node {
                name: name.to_string(),
                reason: "the control plane was started for nodes without kubelets; start it with `cluster up --kubelets`".into(),
            });
        }
        let release = control_plane
            .release()
            .ok_or_else(|| LocalEnvError::ClusterDown {
                dir: self.dir.clone(),
            })?;
        let images = images.to_vec();
        let started = node.clone();
        tokio::task::spawn_blocking(move || {
            kube_node::KubeNode::new(&started).start(&release.bin_dir(), &control_plane, &images)
        })
        .await
        .map_err(|error| LocalEnvError::Node {
            name: name.to_string(),
            reason: error.to_string(),
        })??;
        let kube_node = kube_node::KubeNode::new(&node);
        let nodes: Api<Node> = Api::all(self.client().await?);
        let log = node.dir().join("kube/kubelet.log");
        let pod_cidr = wait_for_node(&nodes, name, "a pod CIDR", &log, |node| {
            node.spec.as_ref()?.pod_cidr.clone()
        })
        .await?;
        kube_node.configure_pod_network(&pod_cidr)?;
        self.fabric().route_pods(&pod_cidr, &node.address())?;
        wait_for_node(&nodes, name, "Ready", &log, |node| {
            let conditions = node.status.as_ref()?.conditions.as_ref()?;
            conditions
                .iter()
                .any(|condition| condition.type_ == "Ready" && condition.status == "True")
                .then_some(())
        })
        .await
    }

    /// Gives the image `from` the second name `to` on every real node, as pushing a tag to a
    /// registry would: for example the release name a manifest says
    /// (`quay.io/nmstate/kubernetes-nmstate-rs-handler:v0.2.0`) for an image built here.
    pub fn tag_image(&self, from: &str, to: &str) -> Result<()> {
        self.on_real_nodes(|node, bin_dir| node.tag_image(bin_dir, from, to))
    }

    /// Takes the name `reference` away again on every real node.
    pub fn untag_image(&self, reference: &str) -> Result<()> {
        self.on_real_nodes(|node, bin_dir| node.untag_image(bin_dir, reference))
    }

    fn on_real_nodes(&self, action: impl Fn(&kube_node::KubeNode<'_>, &Path) -> Result<()>) -> Result<()> {
        let release = self
            .control_plane()
            .release()
            .ok_or_else(|| LocalEnvError::ClusterDown {
                dir: self.dir.clone(),
            })?;
        for node in self.nodes() {
            let kube_node = kube_node::KubeNode::new(&node);
            if kube_node.is_running() {
                action(&kube_node, &release.bin_dir())?;
            }
        }
        Ok(())
    }

    /// Deletes the `Node` object and tears the sandbox node down.
    pub async fn node_down(&self, name: &str) -> Result<()> {
        if let Ok(client) = self.client().await {
            let nodes: Api<Node> = Api::all(client);
            match nodes.delete(name, &DeleteParams::default()).await {
                Ok(_) => {}
                Err(kube::Error::Api(status)) if status.code == 404 => {}
                Err(error) => return Err(error.into()),
            }
        }
        let _lock = self.lock().await?;
        if let Some(node) = self.node(name) {
            node.stop()?;
        }
        Ok(())
    }

    /// The sandbox node `name`, if it was started in this environment.
    pub fn node(&self, name: &str) -> Option<SandboxNode> {
        let index = std::fs::read_to_string(self.dir.join("nodes").join(name).join("index")).ok()?;
        let index = index.trim().parse().ok()?;
        Some(SandboxNode::new(
            &self.dir,
            &self.prefix,
            name,
            index,
            &self.control_plane(),
        ))
    }

    /// Every sandbox node of this environment.
    pub fn nodes(&self) -> Vec<SandboxNode> {
        let mut names: Vec<String> = std::fs::read_dir(self.dir.join("nodes"))
            .map(|entries| {
                entries
                    .flatten()
                    .map(|entry| entry.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names.iter().filter_map(|name| self.node(name)).collect()
    }

    fn free_index(&self) -> u32 {
        let used: Vec<u32> = self.nodes().iter().map(|node| node.index).collect();
        (1..).find(|index| !used.contains(index)).unwrap_or(1)
    }

    /// An exclusive lock on the environment, held while processes start or stop, so parallel
    /// tests and processes never start the same piece twice.
    async fn lock(&self) -> Result<Flock<File>> {
        let dir = self.dir.clone();
        tokio::task::spawn_blocking(move || lock_file(&dir))
            .await
            .map_err(|error| LocalEnvError::Io {
                action: "lock",
                path: self.dir.clone(),
                source: std::io::Error::other(error),
            })?
    }
}

/// Blocks until this process holds the environment's lock in `dir`.
fn lock_file(dir: &Path) -> Result<Flock<File>> {
    let path = dir.join(".lock");
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(LocalEnvError::io("open", &path))?;
    Flock::lock(file, FlockArg::LockExclusive).map_err(|(_, errno)| LocalEnvError::Io {
        action: "lock",
        path,
        source: errno.into(),
    })
}

/// The workspace root (this crate lives in `config/localenv`).
pub fn workspace_dir() -> PathBuf {
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    crate_dir.ancestors().nth(2).unwrap_or(crate_dir).to_path_buf()
}

/// Where `make deps` installs kubectl and helm.
pub fn tools_bin_dir() -> PathBuf {
    cache_dir().join("bin")
}

/// `~/.cache/kubernetes-nmstate`, where the Makefile caches what it installs and builds.
pub fn cache_dir() -> PathBuf {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/root"))
        .join(".cache/kubernetes-nmstate")
}

/// A client for the kubeconfig at `path`.
pub async fn client_from(path: &Path) -> Result<Client> {
    let kubeconfig = Kubeconfig::read_from(path).map_err(|source| LocalEnvError::Kubeconfig {
        path: path.to_path_buf(),
        source,
    })?;
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .map_err(|source| LocalEnvError::Kubeconfig {
            path: path.to_path_buf(),
            source,
        })?;
    Ok(Client::try_from(config)?)
}

/// Writes to `path` a copy of the kubeconfig `source` whose requests impersonate `user` (e.g.
/// `system:serviceaccount:<namespace>:<name>`): a program run with it gets exactly that
/// user's RBAC, as it would in a pod with that ServiceAccount.
pub fn write_impersonating_kubeconfig(source: &Path, path: &Path, user: &str) -> Result<()> {
    let invalid = |source_error| LocalEnvError::Kubeconfig {
        path: source.to_path_buf(),
        source: source_error,
    };
    let mut config = Kubeconfig::read_from(source).map_err(invalid)?;
    for named in &mut config.auth_infos {
        if let Some(auth) = named.auth_info.as_mut() {
            auth.impersonate = Some(user.to_string());
        }
    }
    let text = serde_yaml::to_string(&config)
        .map_err(std::io::Error::other)
        .map_err(LocalEnvError::io("serialize", path))?;
    std::fs::write(path, text).map_err(LocalEnvError::io("write", path))
}

/// Polls the Node `name` until `found` finds what it waits for, for up to a minute; failing,
/// names the kubelet's log.
async fn wait_for_node<T>(
    nodes: &Api<Node>,
    name: &str,
    what: &str,
    log: &Path,
    found: impl Fn(&Node) -> Option<T>,
) -> Result<T> {
    let timeout = std::time::Duration::from_secs(60);
    testing::eventually(&format!("node {name}: {what}"), timeout, || async {
        found(&nodes.get_opt(name).await.ok()??)
    })
    .await
    .map_err(|timed_out| LocalEnvError::NotReady {
        what: timed_out.what,
        seconds: timeout.as_secs(),
        log: log.to_path_buf(),
    })
}

/// Creates or updates the Node object with its labels; with `report_ready` (no kubelet runs on
/// the node) also its status, Ready.
async fn register_node(
    client: &Client,
    node: &SandboxNode,
    labels: &BTreeMap<String, String>,
    report_ready: bool,
) -> Result<()> {
    let mut all_labels = BTreeMap::from([
        ("kubernetes.io/hostname".to_string(), node.name.clone()),
        ("kubernetes.io/os".to_string(), "linux".to_string()),
        (
            "kubernetes.io/arch".to_string(),
            std::env::consts::ARCH.replace("x86_64", "amd64"),
        ),
    ]);
    all_labels.extend(labels.clone());
    let nodes: Api<Node> = Api::all(client.clone());
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let object = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": { "name": node.name, "labels": all_labels },
    });
    nodes.patch(&node.name, &params, &Patch::Apply(&object)).await?;
    if !report_ready {
        return Ok(());
    }
    // No kubelet runs here, so localenv reports the node Ready itself.
    let now = k8s_openapi::jiff::Timestamp::now().to_string();
    let status = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Node",
        "status": {
            "conditions": [{
                "type": "Ready", "status": "True", "reason": "KubeletReady",
                "message": "sandbox node started by localenv",
                "lastHeartbeatTime": now, "lastTransitionTime": now,
            }],
            "addresses": [
                { "type": "InternalIP", "address": node.address() },
                { "type": "Hostname", "address": node.name },
            ],
        },
    });
    let status_params = PatchParams::apply(STATUS_FIELD_MANAGER).force();
    nodes
        .patch_status(&node.name, &status_params, &Patch::Apply(&status))
        .await?;
    Ok(())
}

/// Node names become Kubernetes names, directory names and hostnames.
fn validate_node_name(name: &str) -> Result<()> {
    let valid = !name.is_empty()
        && name.len() <= 40
        && name
            .bytes()
            .all(|byte| byte.is_ascii_lowercase() || byte.is_ascii_digit() || byte == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if valid {
        Ok(())
    } else {
        Err(LocalEnvError::Node {
            name: name.to_string(),
            reason: "a node name is 1-40 characters of a-z, 0-9 and '-', not starting or ending with '-'"
                .into(),
        })
    }
}

/// FNV-1a: a stable, dependency-free hash for namespace name prefixes.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_names_must_be_usable_as_kubernetes_names_and_hostnames() {
        for good in ["node01", "a", "worker-2"] {
            assert!(validate_node_name(good).is_ok(), "{good}");
        }
        for bad in ["", "Node01", "-node", "node-", "node_1", "a.b", &"n".repeat(41)] {
            assert!(validate_node_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn each_directory_gets_its_own_short_namespace_prefix() {
        let a = LocalEnv::new("/tmp/env-a");
        assert_eq!(
            a.prefix,
            LocalEnv::new("/tmp/env-a").prefix,
            "stable across calls"
        );
        assert_ne!(a.prefix, LocalEnv::new("/tmp/env-b").prefix);
        // "<prefix>-n<index>" must stay well within the 15 bytes of an interface-like name.
        assert_eq!(a.prefix.len(), 10);
    }
}
