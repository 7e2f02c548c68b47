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
