//! Helpers for integration tests: one shared control plane per test process (started or reused
//! once), and sandbox nodes that tear themselves down when dropped, even when a test fails.

use crate::{LocalEnv, Result, SandboxNode};
use std::{
    collections::BTreeMap,
    sync::atomic::{AtomicU32, Ordering},
};
use tokio::sync::OnceCell;

mod load;
mod pods;
pub use load::{MachineLoad, ProcessUsage, fixed_work};
pub use pods::{DeployedOperator, POD_NODES, ROLLOUT_TIMEOUT, ReleaseImages, operand_name, pods_env};

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

/// `kubectl <args> -f -` aimed at `env`, with `input` on its standard input.
pub fn kubectl_stdin(env: &LocalEnv, args: &[&str], input: &str) -> std::io::Result<std::process::Output> {
    use std::{io::Write, process::Stdio};
    let mut child = kubectl(env)
        .args(args)
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(input.as_bytes())?;
    }
    child.wait_with_output()
}

/// `kubectl apply` of `object` aimed at `env`: what kubectl printed, or the error it printed.
pub fn kubectl_apply(env: &LocalEnv, object: &serde_json::Value) -> std::result::Result<String, String> {
    let output = kubectl_stdin(env, &["apply"], &object.to_string()).map_err(|error| error.to_string())?;
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).trim().to_string();
    if output.status.success() {
        Ok(text(&output.stdout))
    } else {
        Err(text(&output.stderr))
    }
}

/// The `helm` program: the project's tool cache, else `helm` on `PATH`.
pub fn helm_program() -> std::path::PathBuf {
    let cached = crate::tools_bin_dir().join("helm");
    if cached.is_file() { cached } else { "helm".into() }
}

/// `helm` aimed at `env`.
pub fn helm(env: &LocalEnv) -> std::process::Command {
    let mut command = std::process::Command::new(helm_program());
    command
        .env("KUBECONFIG", env.kubeconfig())
        .env("HELM_CONFIG_HOME", env.dir().join("helm/config"))
        .env("HELM_CACHE_HOME", env.dir().join("helm/cache"))
        .env("HELM_DATA_HOME", env.dir().join("helm/data"));
    command
}

/// A copy of `env`'s kubeconfig whose requests impersonate `user` (e.g.
/// `system:serviceaccount:<namespace>:<name>`), so a program runs with exactly that user's RBAC.
pub fn impersonating_kubeconfig(env: &LocalEnv, user: &str) -> Result<std::path::PathBuf> {
    let path = env.dir().join(format!("{}.kubeconfig", user.replace(':', "_")));
    crate::write_impersonating_kubeconfig(&env.kubeconfig(), &path, user)?;
    Ok(path)
}

/// Runs `container` of the pod `pod` the way the kubelet would (see [`crate::kubelet`]), on
/// the host: the workspace binary its command names, its arguments, its environment with
/// `overrides` on top, and its API requests impersonating the pod's ServiceAccount, so the RBAC
/// it is installed with is what it gets.
pub fn start_as_container(
    env: &LocalEnv,
    container: &k8s_openapi::api::core::v1::Container,
    pod: &crate::kubelet::container::PodFacts<'_>,
    overrides: &[(&str, &str)],
) -> Result<NodeProcess> {
    let mut run = crate::kubelet::container::invocation(container, pod)?;
    for (name, value) in overrides {
        run.set_env(name, value);
    }
    let kubeconfig = impersonating_kubeconfig(env, &pod.user())?;
    run.set_env("KUBECONFIG", &kubeconfig.display().to_string());
    let pairs: Vec<(&str, &str)> = run.env.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
    let args: Vec<&str> = run.args.iter().map(String::as_str).collect();
    let log = env.dir().join(format!("{}-{}.log", pod.namespace, pod.name));
    NodeProcess::start_on_host(env, &workspace_binary(&run.program), &args, &pairs, log)
}

/// The operator as the pod template `pod` of its Deployment describes it, in the pod
/// `pod_name` in `namespace`, run as its ServiceAccount ([`start_as_container`]). For tests:
/// its health port is a free one, its Lease expires in 4 s, and `prefix` (HANDLER_PREFIX)
/// keeps its cluster-wide operands apart from other tests'.
pub fn start_operator_as_deployed(
    env: &LocalEnv,
    pod: &k8s_openapi::api::core::v1::PodSpec,
    (namespace, pod_name): (&str, &str),
    prefix: &str,
) -> Result<NodeProcess> {
    let health = format!("127.0.0.1:{}", free_port());
    let overrides = [
        ("HEALTH_BIND_ADDRESS", health.as_str()),
        ("HANDLER_PREFIX", prefix),
        ("LEASE_DURATION_SECONDS", "4"),
    ];
    let facts = crate::kubelet::container::PodFacts {
        namespace,
        name: pod_name,
        node: "control-plane",
        service_account: pod.service_account_name.as_deref().unwrap_or("default"),
    };
    let container = pod
        .containers
        .first()
        .ok_or_else(|| crate::kubelet::container::KubeletError::NoCommand(pod_name.into()))?;
    start_as_container(env, container, &facts, &overrides)
}

/// A binary of the workspace, built next to the running test (`cargo test --workspace` builds
/// every package's binaries before it runs any test).
pub fn workspace_binary(name: &str) -> std::path::PathBuf {
    let candidate = std::env::current_exe()
        .ok()
        .and_then(|test| Some(test.parent()?.parent()?.join(name)))
        .unwrap_or_else(|| name.into());
    assert!(
        candidate.is_file(),
        "{} is not built: run `cargo build --workspace` (or `make test`) first",
        candidate.display()
    );
    candidate
}

/// Fails unless the cluster has no NMState (or no NMState CRD yet): the operator's singleton
/// rule would delete the one a test creates.
pub async fn expect_no_nmstate(client: &kube::Client) {
    let nmstates = kube::Api::<nmstate_api::NMState>::all(client.clone());
    // No CRD yet (404) means no NMState either.
    let existing = match nmstates.list(&Default::default()).await {
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(0),
        other => other.map(|list| list.items.len()),
    };
    assert!(
        matches!(existing, Ok(0)),
        "another NMState exists ({existing:?}): the singleton rule would delete this test's"
    );
}

/// What a test that runs the operator must remove, also when it fails: every NMState (the
/// operands follow by garbage collection) and the webhook configurations of the operands named
/// with `prefix`, which would otherwise refuse the policies of later tests.
pub fn remove_nmstates(env: &LocalEnv, prefix: &str) {
    let _ = kubectl(env)
        .args(["delete", "nmstates", "--all", "--wait=false"])
        .output();
    let name = operand_name(prefix, "nmstate");
    for kind in ["mutatingwebhookconfiguration", "validatingwebhookconfiguration"] {
        let _ = kubectl(env)
            .args(["delete", kind, &name, "--ignore-not-found", "--wait=false"])
            .output();
    }
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
    // As the operator does: validation rules only for servers that run them.
    let minor = nmstate_api::crd::server_minor(&client.apiserver_version().await?);
    let mut names = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).map_err(crate::LocalEnvError::io("read", &file))?;
        let crd: CustomResourceDefinition =
            serde_yaml::from_str(&text).map_err(|error| crate::LocalEnvError::Node {
                name: file.display().to_string(),
                reason: format!("not a CRD: {error}"),
            })?;
        let crd = nmstate_api::crd::for_server(crd, minor);
        let name = crd.name_any();
        crds.patch(
            &name,
            &PatchParams::apply("nmstate-tests").force(),
            &Patch::Apply(&crd),
        )
        .await?;
        // The wait's list is tried again after an error of the server's own (5xx): kube-apiserver
        // 1.20 once answered it, while eight tests installed the CRDs at once right after it
        // started, with `rpc error: code = Internal desc = unexpected EOF` from etcd.
        let established = async {
            loop {
                match await_condition(crds.clone(), &name, conditions::is_crd_established()).await {
                    Err(error) if is_server_error(&error) => {
                        eprintln!(
                            "install_crds: waiting for {name} to be established: {error}; trying again"
                        );
                        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                    }
                    result => return result,
                }
            }
        };
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

/// Whether a wait failed on an error the API server answered with a 5xx status.
fn is_server_error(error: &kube::runtime::wait::Error) -> bool {
    use kube::runtime::{wait::Error, watcher::Error as Watch};
    match error {
        Error::ProbeFailed(
            Watch::InitialListFailed(kube::Error::Api(status)) | Watch::WatchFailed(kube::Error::Api(status)),
        ) => status.code >= 500,
        _ => false,
    }
}

/// `what` did not happen within the time allowed.
#[derive(Debug, thiserror::Error)]
#[error("{what}: not within {} s", .timeout.as_secs())]
pub struct TimedOut {
    pub what: String,
    pub timeout: std::time::Duration,
}

/// Polls `probe` every 100 ms until it yields a value, for at most `timeout`.
pub async fn eventually<T, F, Fut>(
    what: &str,
    timeout: std::time::Duration,
    mut probe: F,
) -> Result<T, TimedOut>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if let Some(value) = probe().await {
            return Ok(value);
        }
        if std::time::Instant::now() >= deadline {
            return Err(TimedOut {
                what: what.to_string(),
                timeout,
            });
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// A program running inside a sandbox node (e.g. the handler), its output in a log file. It is
/// killed when dropped, and its log is printed when that happens during a failing test.
pub struct NodeProcess {
    child: std::process::Child,
    log: std::path::PathBuf,
}

impl NodeProcess {
    /// Starts `program args` inside `node` with `env` added, appending its output to `log`.
    pub fn start(
        node: &SandboxNode,
        program: &std::path::Path,
        args: &[&str],
        env: &[(&str, &str)],
        log: std::path::PathBuf,
    ) -> Result<NodeProcess> {
        let mut command = node.command(program)?;
        command.args(args).envs(env.iter().copied());
        NodeProcess::spawn(command, program, log)
    }

    /// Starts `program args` on the host (e.g. a cluster-level controller), aimed at `env`'s
    /// API server, with `variables` added, appending its output to `log`.
    pub fn start_on_host(
        env: &LocalEnv,
        program: &std::path::Path,
        args: &[&str],
        variables: &[(&str, &str)],
        log: std::path::PathBuf,
    ) -> Result<NodeProcess> {
        let mut command = std::process::Command::new(program);
        command
            .args(args)
            .env("KUBECONFIG", env.kubeconfig())
            .envs(variables.iter().copied());
        NodeProcess::spawn(command, program, log)
    }

    fn spawn(
        mut command: std::process::Command,
        program: &std::path::Path,
        log: std::path::PathBuf,
    ) -> Result<NodeProcess> {
        let output = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .map_err(crate::LocalEnvError::io("open", &log))?;
        let stderr = output
            .try_clone()
            .map_err(crate::LocalEnvError::io("open", &log))?;
        let child = command
            .stdin(std::process::Stdio::null())
            .stdout(output)
            .stderr(stderr)
            .spawn()
            .map_err(|source| crate::LocalEnvError::Spawn {
                command: program.display().to_string(),
                source,
            })?;
        Ok(NodeProcess { child, log })
    }

    /// Sends `signal` (e.g. SIGSTOP to pause it, SIGCONT to resume it).
    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.id() as i32), signal);
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether it has not exited.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// What it printed so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends SIGTERM and waits up to `within` for it to exit; its exit status, or `None` when it
    /// did not exit in time (it is then killed).
    pub fn terminate(&mut self, within: std::time::Duration) -> Option<std::process::ExitStatus> {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = std::time::Instant::now() + within;
        while std::time::Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        self.kill();
        None
    }

    /// SIGKILL, as a crash would.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!("--- {} ---\n{}", self.log.display(), self.log());
        }
    }
}

/// A TCP port on 127.0.0.1 that nothing listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .unwrap_or(0)
}

/// Creates a namespace with a unique name starting with `prefix` (see [`unique_name`]) and
/// returns its name.
pub async fn create_namespace(client: &kube::Client, prefix: &str) -> Result<String> {
    use k8s_openapi::api::core::v1::Namespace;
    let name = unique_name(prefix);
    let namespace = Namespace {
        metadata: kube::api::ObjectMeta {
            name: Some(name.clone()),
            ..Default::default()
        },
        ..Default::default()
    };
    kube::Api::<Namespace>::all(client.clone())
        .create(&kube::api::PostParams::default(), &namespace)
        .await?;
    Ok(name)
}

/// A memory figure of process `pid` in KiB, from `/proc/<pid>/status` (`field` such as
/// `"VmRSS:"` or `"VmHWM:"`); 0 when it cannot be read.
pub fn proc_status_kib(pid: u32, field: &str) -> u64 {
    load::status_number(
        &std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default(),
        field,
    )
}
