//! `nmstate-handler`: the per-node handler of kubernetes-nmstate.

use clap::{Parser, Subcommand, ValueEnum};
use k8s_openapi::api::core::v1::Node;
use kube::Api;
use nmstate_handler::{
    apply::{self, ApplyError, probes},
    config::{ConfigError, HandlerConfig},
    enactment::{self, events as policy_events},
    network::{
        bridge_vlan,
        network_manager::{self, NetworkManagerError},
        node_support::NodeSupport,
        state::{self as node_state, NodeStateError, StateCache},
    },
    node_lock::{self, LockError},
    node_state_reporter::{self, NodeStateReporter, ReportError},
    profiler,
    rollout::{Rollout, heartbeat},
};
use nmstate_runtime::{events::Events, process};
use std::{path::PathBuf, process::ExitCode, sync::Arc, time::Duration};
use tracing::{info, warn};

const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (nmstate ",
    env!("NMSTATE_CRATE_VERSION"),
    ")"
);

/// Counts every allocation (one atomic add each), so the profiler's heap figures are exact.
/// The node agent's choice alone: the other programs keep the system allocator.
#[global_allocator]
static ALLOCATOR: profiler::CountingAllocator = profiler::counting_allocator();

#[derive(Parser)]
#[command(name = "nmstate-handler", version = VERSION, about = "kubernetes-nmstate node handler: reports the node's \
    network state and applies NodeNetworkConfigurationPolicies through NetworkManager")]
struct Cli {
    /// kubeconfig to use [default: KUBECONFIG, ~/.kube/config, else the in-cluster service account]
    #[arg(long, global = true, env = "KUBECONFIG")]
    kubeconfig: Option<PathBuf>,
    /// Log verbosity (`--v` is accepted for upstream compatibility); RUST_LOG overrides it
    #[arg(long, global = true, value_enum, default_value_t = LogLevel::Info, alias = "v")]
    log_level: LogLevel,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogLevel {
    Info,
    Debug,
}

#[derive(Subcommand)]
enum Command {
    /// Run the handler for the node named by NODE_NAME (the default command).
    Run,
    /// Print the node's current network state as YAML, optionally only some interfaces
    /// (like `nmstatectl show`); exits non-zero when NetworkManager cannot be read.
    Show { interfaces: Vec<String> },
    /// Apply a desired state (YAML or JSON file) to this node the way a policy is applied: under
    /// a NetworkManager checkpoint, checked by the probes (ping, ping6 and dns if they pass
    /// before the change, api-server and node-readiness always), then committed, or rolled back
    /// when a probe fails.
    Apply {
        file: PathBuf,
        /// How long each probe may take to pass
        #[arg(long, env = "PROBE_TIMEOUT_SECONDS", default_value_t = 120)]
        probe_timeout_seconds: u64,
    },
}

#[derive(Debug, thiserror::Error)]
enum HandlerError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    NodeState(#[from] NodeStateError),
    #[error(transparent)]
    NetworkManager(#[from] NetworkManagerError),
    #[error(transparent)]
    Client(#[from] process::ClientError),
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("Node {0:?} does not exist: NODE_NAME must be the name of this node's Node object")]
    UnknownNode(String),
    #[error("cannot serialize the state as YAML: {0}")]
    Yaml(#[from] serde_yaml::Error),
    #[error("internal error: {0}")]
    Join(#[from] tokio::task::JoinError),
    #[error(transparent)]
    Report(#[from] ReportError),
    #[error(transparent)]
    Apply(#[from] ApplyError),
    #[error(transparent)]
    Lock(#[from] LockError),
    #[error("cannot read {path}: {source}")]
    ReadFile { path: PathBuf, source: std::io::Error },
    #[error("{0} stopped on its own; exiting so that the handler is restarted")]
    Ended(&'static str),
    #[error("cannot start the async runtime: {0}")]
    Runtime(std::io::Error),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(cli.log_level);
    let result = match &cli.command {
        // nmstate's blocking API builds its own runtime: call it outside of tokio.
        Some(Command::Show { interfaces }) => show(interfaces),
        Some(Command::Apply {
            file,
            probe_timeout_seconds,
        }) => in_runtime(apply_file(
            &cli,
            file,
            Duration::from_secs(*probe_timeout_seconds),
        )),
        Some(Command::Run) | None => in_runtime(run(&cli)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!("{error}");
            ExitCode::FAILURE
        }
    }
}

/// How long the exit waits for blocking work still running once `work` is done. By then a
/// change in progress was finished; what can be left is a call to NetworkManager that a stop
/// gave up on (nmstate's, in a blocking thread): a read of the node, or at start-up the rollback
/// of a checkpoint left behind, which the next start does again if it did not happen. Dropping
/// the runtime would wait for it without end: nmstate sets no timeout on its D-Bus calls, so a
/// hung NetworkManager held up the exit until the kubelet's SIGKILL.
const EXIT_WAIT: Duration = Duration::from_secs(1);

fn in_runtime(work: impl std::future::Future<Output = Result<(), HandlerError>>) -> Result<(), HandlerError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(HandlerError::Runtime)?;
    let result = runtime.block_on(work);
    runtime.shutdown_timeout(EXIT_WAIT);
    result
}

fn init_tracing(level: LogLevel) {
    process::init_tracing(match level {
        LogLevel::Info => "info",
        LogLevel::Debug => "debug",
    });
}

fn show(interfaces: &[String]) -> Result<(), HandlerError> {
    let state = node_state::only_interfaces(node_state::retrieve()?, interfaces);
    print!("{}", serde_yaml::to_string(&state)?);
    Ok(())
}

async fn run(cli: &Cli) -> Result<(), HandlerError> {
    // First: until it listens, the handler (its container's PID 1) ignores SIGTERM, and its
    // start-up may wait a long time (for the node's lock, the API server, NetworkManager).
    let shutdown = process::shutdown_signal();
    tokio::pin!(shutdown);
    let running = tokio::select! {
        running = start(cli) => running?,
        () = &mut shutdown => {
            info!("stopped during start-up");
            return Ok(());
        }
    };
    running.serve(shutdown).await
}

/// The handler once started: what it runs, and what it holds while it does.
struct Running {
    stop: tokio::sync::watch::Sender<bool>,
    reporting: tokio::task::JoinHandle<Result<(), ReportError>>,
    enacting: tokio::task::JoinHandle<()>,
    _heartbeat: Option<AbortOnDrop>,
    _node_lock: node_lock::NodeLock,
}

impl Running {
    /// Runs until `shutdown` completes, or until a part stops on its own (an error).
    async fn serve(mut self, shutdown: impl Future<Output = ()>) -> Result<(), HandlerError> {
        tokio::select! {
            () = shutdown => info!("stopping: finishing the change in progress, if any"),
            result = &mut self.reporting => return result?.map_err(Into::into),
            result = &mut self.enacting => {
                result?;
                return Err(HandlerError::Ended("policy enactment"));
            }
        }
        let _ = self.stop.send(true);
        // A change in progress is committed or rolled back before the handler exits, so a
        // graceful stop leaves no uncommitted checkpoint behind.
        let (enacting, reporting) = tokio::join!(
            await_stop(&mut self.enacting, "the policy enactment (a change in progress)"),
            await_stop(&mut self.reporting, "the node-state reporter"),
        );
        enacting?;
        reporting??;
        info!("stopped");
        Ok(())
    }
}

/// How long a part may take to stop before the log says the handler waits for it.
const STOP_NOTICE: std::time::Duration = std::time::Duration::from_secs(3);

/// Awaits `part`, saying once that the stop waits for `what` when it takes longer than
/// [`STOP_NOTICE`]: a stop that hangs names what it hangs on.
async fn await_stop<T>(
    part: &mut tokio::task::JoinHandle<T>,
    what: &str,
) -> Result<T, tokio::task::JoinError> {
    tokio::select! {
        result = &mut *part => return result,
        () = tokio::time::sleep(STOP_NOTICE) => info!("stopping: still waiting for {what}"),
    }
    part.await
}

/// Starts the handler: the node's lock, a checkpoint left behind, the API server and
/// NetworkManager, then the node-state reporter and the policies' enactment.
async fn start(cli: &Cli) -> Result<Running, HandlerError> {
    let config = HandlerConfig::from_lookup(|name| std::env::var(name).ok())?;
    info!(node = %config.node_name, version = VERSION, "starting");
    if let Some(port) = config.profiler_port {
        tokio::spawn(nmstate_handler::profiler::serve(port, &ALLOCATOR));
    }
    let node_lock = node_lock::acquire(std::path::Path::new(&config.lock_file)).await?;
    // A checkpoint still open now was left by a handler that died mid-apply (this one holds
    // the node's lock): its change was never committed and may be what cuts the node off from
    // the API server. Rolled back before anything else, not when NetworkManager's own timeout
    // runs out (four probe timeouts: 8 minutes by default).
    match apply::rollback_stale_checkpoint().await {
        Ok(true) => warn!("rolled back a change an earlier handler left uncommitted"),
        Ok(false) => {}
        Err(error) => warn!("cannot roll back a checkpoint an earlier handler may have left: {error}"),
    }
    let client = process::kube_client(cli.kubeconfig.clone()).await?;
    let server = client.apiserver_version().await?;
    info!(server = %server.git_version, "connected to the API server");
    let nodes: Api<Node> = Api::all(client.clone());
    let Some(node) = nodes.get_opt(&config.node_name).await? else {
        return Err(HandlerError::UnknownNode(config.node_name));
    };
    enactment::objects::mark_interrupted(&client, &config.node_name).await;
    let network_manager = network_manager::version(None).await?;
    info!(version = %network_manager, "found NetworkManager");
    // An unsupported NetworkManager is reported on the node state; no policy is applied.
    let unsupported = network_manager::check_supported(&network_manager)
        .err()
        .map(|error| error.to_string());
    if let Some(reason) = &unsupported {
        warn!("{reason}; the node's network state is reported, but no policy is applied on it");
    }
    // Before the node is first read: the probe's bridge comes and goes, and a change notified
    // during that read would leave the read unused by the first apply.
    let vlan_filtering = bridge_vlan::kernel_supports_vlan_filtering()
        .await
        .unwrap_or_else(|error| {
            warn!("cannot tell whether the kernel filters VLANs on bridges ({error}); assuming it does not");
            false
        });
    if !vlan_filtering {
        warn!("{}", bridge_vlan::SKIPPED_NOTE);
    }
    let state = tokio::task::spawn_blocking(node_state::retrieve).await??;
    let interfaces = state["interfaces"].as_array().map_or(0, Vec::len);
    info!(interfaces, "read the node's network state from NetworkManager");

    let (stop, stopping) = tokio::sync::watch::channel(false);
    let stopped = |mut stopping: tokio::sync::watch::Receiver<bool>| async move {
        let _ = stopping.wait_for(|stop| *stop).await;
    };
    let node_state_cache = Arc::new(StateCache::default());
    let mut reporter = NodeStateReporter::new(
        client.clone(),
        config.node_name.clone(),
        config.relationship_labels.clone(),
        network_manager.clone(),
    )
    .with_rules(config.report.clone())
    .with_check_interval(config.state_check_interval)
    .with_cache(node_state_cache.clone());
    if let Some(reason) = unsupported.clone() {
        reporter = reporter.with_unsupported(reason);
    }
    let (report_now, report_requests) = node_state_reporter::ReportNow::channel();
    let reporting = tokio::spawn(node_state_reporter::run(
        reporter,
        report_requests,
        stopped(stopping.clone()),
    ));
    let capabilities = network_manager::capabilities(None).await?;
    if !capabilities.ipv4_forwarding {
        info!(
            "NetworkManager {network_manager} cannot set ipv4.forwarding per interface (it needs {}): \
             policies that change it are refused on this node",
            network_manager::IPV4_FORWARDING_SINCE
        );
    }
    let support = NodeSupport {
        network_manager,
        capabilities,
        vlan_filtering,
        link_kinds: Default::default(),
    };
    let rollout = Rollout::new(
        client.clone(),
        config.lease_namespace(),
        &config.node_name,
        config.lease_duration,
    );
    rollout.release_left_over().await;
    // Only a node that applies policies counts as running a handler.
    let heartbeat = unsupported.is_none().then(|| {
        let heartbeat = heartbeat::run(
            client.clone(),
            config.lease_namespace().to_string(),
            node,
            config.lease_duration,
        );
        AbortOnDrop(tokio::spawn(heartbeat))
    });
    let events = Events::new(
        client.clone(),
        &policy_events::component(&config.node_name),
        &config.node_name,
        nmstate_api::crd::server_minor(&server),
    );
    let context = Arc::new(enactment::Context {
        client,
        events,
        config,
        support,
        report_now,
        node_state: node_state_cache,
        in_desired_state: Default::default(),
        rollout,
        reported_invalid_max_unavailable: Default::default(),
        settled: tokio::sync::broadcast::Sender::new(64),
        status_refused: Default::default(),
    });
    let enacting = match unsupported {
        None => tokio::spawn(enactment::run(context, stopped(stopping))),
        Some(_) => tokio::spawn(stopped(stopping)),
    };
    Ok(Running {
        stop,
        reporting,
        enacting,
        _heartbeat: heartbeat,
        _node_lock: node_lock,
    })
}

/// Stops a background task when the handler stops.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn apply_file(cli: &Cli, file: &std::path::Path, probe_timeout: Duration) -> Result<(), HandlerError> {
    let config = HandlerConfig::from_lookup(|name| std::env::var(name).ok())?;
    let text = std::fs::read_to_string(file).map_err(|source| HandlerError::ReadFile {
        path: file.to_path_buf(),
        source,
    })?;
    let desired: serde_json::Value = serde_yaml::from_str(&text)?;
    let client = process::kube_client(cli.kubeconfig.clone()).await?;
    let defaults = probes::Defaults {
        timeout: probe_timeout,
        ..config.probe_defaults
    };
    let prober = probes::Prober {
        client,
        node: config.node_name.clone(),
    };
    let prepared = apply::prepare(probes::Probes::select(prober, probes::plan(None, &defaults))).await?;
    let mut reports = Vec::new();
    let changed = apply::change(&desired, prepared, &apply::NoRollout, None, |_| {}, &mut reports).await?;
    changed.commit(&apply::NoRollout).await?;
    Ok(())
}
