//! Helpers for integration tests: one shared control plane per test process (started or reused
//! once), and sandbox nodes that tear themselves down when dropped, even when a test fails.

use crate::{LocalEnv, Result, SandboxNode};
use std::{
    collections::BTreeMap,
    sync::atomic::{AtomicU32, Ordering},
};
use tokio::sync::OnceCell;

static SHARED: OnceCell<LocalEnv> = OnceCell::const_new();

/// The environment of `NMSTATE_LOCALENV_DIR` (or `target/localenv`), started if it is not
/// running. It is left running for the next test process; `make cluster-down` stops it.
pub async fn shared_env() -> Result<LocalEnv> {
    SHARED
        .get_or_try_init(|| async {
            let env = LocalEnv::from_env();
            env.up().await?;
            Ok(env)
        })
        .await
        .cloned()
}

/// A name unique to this test process: `<prefix>-<pid>-<n>`.
pub fn unique_name(prefix: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// A sandbox node that is torn down (namespace, processes and `Node` object) when dropped.
pub struct TestNode {
    env: LocalEnv,
    pub node: SandboxNode,
}

impl TestNode {
    pub async fn start(env: &LocalEnv, name: &str, labels: &BTreeMap<String, String>) -> Result<TestNode> {
        let node = env.node_up(name, labels).await?;
        Ok(TestNode {
            env: env.clone(),
            node,
        })
    }
}

impl std::ops::Deref for TestNode {
    type Target = SandboxNode;
    fn deref(&self) -> &SandboxNode {
        &self.node
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        // Drop cannot await, and may run inside a runtime: tear down on a thread of its own.
        let env = self.env.clone();
        let name = self.node.name.clone();
        let teardown = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime
                .block_on(env.node_down(&name))
                .map_err(std::io::Error::other)
        });
        match teardown.join() {
            Ok(Ok(())) => {}
            Ok(Err(error)) => eprintln!("tearing down sandbox node {}: {error}", self.node.name),
            Err(_) => eprintln!("tearing down sandbox node {} panicked", self.node.name),
        }
    }
}

/// The `kubectl` program: `KUBECTL`, else the project's tool cache, else `kubectl` on `PATH`.
pub fn kubectl_program() -> std::path::PathBuf {
    if let Some(program) = std::env::var_os("KUBECTL") {
        return program.into();
    }
    let cached = crate::tools_bin_dir().join("kubectl");
    if cached.is_file() {
        cached
    } else {
        "kubectl".into()
    }
}

/// `kubectl` aimed at `env`.
pub fn kubectl(env: &LocalEnv) -> std::process::Command {
    let mut command = std::process::Command::new(kubectl_program());
    command.env("KUBECONFIG", env.kubeconfig());
    command
}

/// `etcdctl` aimed at the environment's etcd, to look at what the API server stored.
pub fn etcdctl(env: &LocalEnv) -> Result<std::process::Command> {
    let endpoints = env
        .control_plane()
        .endpoints()
        .ok_or_else(|| crate::LocalEnvError::ClusterDown {
            dir: env.dir().to_path_buf(),
        })?;
    let mut command = std::process::Command::new("etcdctl");
    command
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints=http://127.0.0.1:{}", endpoints.etcd_port));
    Ok(command)
}

/// Applies the CRDs in `manifests/crds/` (server-side, forced) and waits until each is
/// established; returns their names. Idempotent.
pub async fn install_crds(client: &kube::Client) -> Result<Vec<String>> {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    use kube::{
        Api, ResourceExt,
        api::{Patch, PatchParams},
        runtime::wait::{await_condition, conditions},
    };
    let dir = crate::workspace_dir().join("manifests/crds");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .map_err(crate::LocalEnvError::io("read", &dir))?
        .flatten()
        .map(|entry| entry.path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "yaml"))
        .collect();
    files.sort();
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let mut names = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).map_err(crate::LocalEnvError::io("read", &file))?;
        let crd: CustomResourceDefinition =
            serde_yaml::from_str(&text).map_err(|error| crate::LocalEnvError::Node {
                name: file.display().to_string(),
                reason: format!("not a CRD: {error}"),
            })?;
        let name = crd.name_any();
        crds.patch(
            &name,
            &PatchParams::apply("nmstate-tests").force(),
            &Patch::Apply(&crd),
        )
        .await?;
        let established = await_condition(crds.clone(), &name, conditions::is_crd_established());
        match tokio::time::timeout(std::time::Duration::from_secs(30), established).await {
            Ok(result) => {
                result.map_err(|error| crate::LocalEnvError::Kube(kube::Error::Service(Box::new(error))))?;
            }
            Err(_) => {
                return Err(crate::LocalEnvError::NotReady {
                    what: format!("CRD {name}"),
                    seconds: 30,
                    log: file,
                });
            }
        }
        names.push(name);
    }
    Ok(names)
}
