//! `localenv`: start and stop the local control plane and sandbox NetworkManager nodes.

use clap::{Parser, Subcommand};
use nmstate_localenv::{
    LocalEnv, LocalEnvError, Workloads,
    control_plane::{Part, Stop},
};
use std::{collections::BTreeMap, path::PathBuf, process::ExitCode};

#[derive(Parser)]
#[command(
    version,
    about = "Local kube-apiserver + etcd + controller manager, and NetworkManager nodes in network namespaces"
)]
struct Cli {
    /// The environment's directory [default: NMSTATE_LOCALENV_DIR, else target/localenv]
    #[arg(long, global = true)]
    dir: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The control plane.
    Cluster {
        #[command(subcommand)]
        action: ClusterAction,
    },
    /// Sandbox nodes.
    Node {
        #[command(subcommand)]
        action: NodeAction,
    },
    /// The whole product on this machine, with a tour of example policies (`make demo`).
    Demo {
        #[command(subcommand)]
        action: DemoAction,
    },
    /// Build the pause, operator and handler images for the nodes' containerd (OCI archives in
    /// the environment's `images` directory).
    Images {
        /// Where the operator's and handler's binaries are [default: this program's directory]
        #[arg(long)]
        bin_dir: Option<PathBuf>,
    },
    /// The API server's HTTP CONNECT proxy into the sandbox, on a unix socket (the fabric runs
    /// it in its namespace).
    #[command(hide = true)]
    EgressProxy {
        #[arg(long)]
        socket: PathBuf,
    },
}

#[derive(Subcommand)]
enum DemoAction {
    /// Start (or start over) the demo and run the tour; everything is left running.
    Up {
        /// Where the workspace's binaries are [default: this program's directory]
        #[arg(long)]
        bin_dir: Option<PathBuf>,
    },
    /// Stop everything the demo started: processes, nodes, control plane.
    Down,
}

#[derive(Subcommand)]
enum ClusterAction {
    /// Start the control plane (or reuse a running one); prints `export KUBECONFIG=...`.
    Up {
        /// For real kubelets on the nodes (`node up --kubelet`)
        #[arg(long)]
        kubelets: bool,
    },
    /// Stop every node and the control plane, and delete their data.
    Down,
    /// Show what runs.
    Status,
    /// Print `export KUBECONFIG=...` for the running control plane.
    Env,
    /// Stop one part of the control plane, keeping its data and ports.
    Stop {
        part: Part,
        /// SIGKILL at once, as a crash (default: SIGTERM, then SIGKILL after 10 s)
        #[arg(long)]
        kill: bool,
    },
    /// Start a stopped part of the control plane again, in place.
    Start { part: Part },
    /// Stop a part, wait, and start it again in place.
    Restart {
        part: Part,
        /// SIGKILL at once, as a crash
        #[arg(long)]
        kill: bool,
        /// How long it stays down
        #[arg(long, default_value_t = 0)]
        down_seconds: u64,
    },
}

#[derive(Subcommand)]
enum NodeAction {
    /// Start (or repair) a node and register it as a Ready Node object.
    Up {
        name: String,
        /// Extra node labels, KEY=VALUE (repeatable), e.g. node-role.kubernetes.io/worker=
        #[arg(long = "label", value_parser = parse_label)]
        labels: Vec<(String, String)>,
        /// Also run containerd, a kubelet and kube-proxy in it, with the images of
        /// `localenv images` (needs `cluster up --kubelets`)
        #[arg(long)]
        kubelet: bool,
    },
    /// Delete the Node object and tear the node down.
    Down { name: String },
    /// Run a command inside a node (its network, mount and UTS namespaces).
    Exec {
        name: String,
        #[arg(trailing_var_arg = true, required = true)]
        command: Vec<String>,
    },
    /// List the nodes of this environment.
    List,
}

fn parse_label(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(key, value)| (key.to_string(), value.to_string()))
        .ok_or_else(|| format!("expected KEY=VALUE, got {text:?}"))
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            // The readiness poll expects refused connections and 500s while the API server starts.
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,kube_client::client::builder=off".into()),
        )
        .with_writer(std::io::stderr)
        // Colours only on a terminal: container logs and files get plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    let env = cli.dir.map(LocalEnv::new).unwrap_or_else(LocalEnv::from_env);
    match run(&env, cli.command).await {
        Ok(code) => code,
        Err(error) => {
            eprintln!("localenv: {error}");
            ExitCode::FAILURE
        }
    }
}

fn stop_how(kill: bool) -> Stop {
    if kill { Stop::Kill } else { Stop::Graceful }
}

async fn run(env: &LocalEnv, command: Command) -> Result<ExitCode, LocalEnvError> {
    match command {
        Command::Cluster {
            action: ClusterAction::Up { kubelets },
        } => {
            let started = std::time::Instant::now();
            let workloads = if kubelets {
                Workloads::Kubelets
            } else {
                Workloads::Processes
            };
            let endpoints = env.up_for(workloads).await?;
            match endpoints.startup {
                Some(startup) => eprintln!(
                    "localenv: API server ready on https://127.0.0.1:{} ({:.1} s from start to ready, {:.1} s in all)",
                    endpoints.apiserver_port,
                    startup.as_secs_f64(),
                    started.elapsed().as_secs_f64()
                ),
                None => eprintln!(
                    "localenv: reusing the running API server on https://127.0.0.1:{}",
                    endpoints.apiserver_port
                ),
            }
            println!("export KUBECONFIG={}", endpoints.kubeconfig.display());
        }
        Command::Cluster {
            action: ClusterAction::Down,
        } => {
            env.down().await?;
            eprintln!("localenv: stopped everything in {}", env.dir().display());
        }
        Command::Cluster {
            action: ClusterAction::Env,
        } => {
            env.client().await?;
            println!("export KUBECONFIG={}", env.kubeconfig().display());
        }
        Command::Cluster {
            action: ClusterAction::Stop { part, kill },
        } => env.control_plane().stop_part(part, stop_how(kill)),
        Command::Cluster {
            action: ClusterAction::Start { part },
        } => env.control_plane().start_part(part).await?,
        Command::Cluster {
            action:
                ClusterAction::Restart {
                    part,
                    kill,
                    down_seconds,
                },
        } => {
            let control_plane = env.control_plane();
            control_plane.stop_part(part, stop_how(kill));
            tokio::time::sleep(std::time::Duration::from_secs(down_seconds)).await;
            control_plane.start_part(part).await?;
        }
        Command::Cluster {
            action: ClusterAction::Status,
        } => {
            let mut all_up = true;
            for (name, pid) in env.control_plane().status() {
                all_up &= pid.is_some();
                println!(
                    "{name:<24} {}",
                    pid.map_or("stopped".to_string(), |pid| format!("running (pid {pid})"))
                );
            }
            for node in env.nodes() {
                let state = if node.is_running() {
                    "running"
                } else {
                    "broken: run `localenv node up` again"
                };
                println!(
                    "node {:<19} {state} (netns {}, eth0 {})",
                    node.name,
                    node.netns,
                    node.address()
                );
            }
            return Ok(if all_up {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            });
        }
        Command::Node {
            action:
                NodeAction::Up {
                    name,
                    labels,
                    kubelet,
                },
        } => {
            let labels: BTreeMap<String, String> = labels.into_iter().collect();
            let started = std::time::Instant::now();
            let node = env.node_up(&name, &labels).await?;
            if kubelet {
                env.kubelet_up(&name, &env.image_archives()).await?;
            }
            eprintln!(
                "localenv: node {name} is up (netns {}, eth0 {}) in {:.1} s",
                node.netns,
                node.address(),
                started.elapsed().as_secs_f64()
            );
        }
        Command::Images { bin_dir } => {
            let bin_dir = bin_dir.unwrap_or_else(nmstate_localenv::demo::default_bin_dir);
            for archive in env.build_images(&bin_dir)? {
                eprintln!("localenv: {}", archive.display());
            }
        }
        Command::Node {
            action: NodeAction::Down { name },
        } => env.node_down(&name).await?,
        Command::Demo {
            action: DemoAction::Up { bin_dir },
        } => {
            let bin_dir = bin_dir.unwrap_or_else(nmstate_localenv::demo::default_bin_dir);
            nmstate_localenv::demo::up(env, &bin_dir).await?;
        }
        Command::Demo {
            action: DemoAction::Down,
        } => {
            env.down().await?;
            eprintln!(
                "localenv: the demo is stopped (processes, nodes, control plane in {})",
                env.dir().display()
            );
        }
        Command::EgressProxy { socket } => {
            nmstate_localenv::egress::serve(&socket)
                .await
                .map_err(|source| LocalEnvError::Io {
                    action: "serve",
                    path: socket.clone(),
                    source,
                })?;
        }
        Command::Node {
            action: NodeAction::List,
        } => {
            for node in env.nodes() {
                println!("{}\t{}\t{}", node.name, node.netns, node.address());
            }
        }
        Command::Node {
            action: NodeAction::Exec { name, command },
        } => {
            let node = env.node(&name).ok_or_else(|| LocalEnvError::Node {
                name: name.clone(),
                reason: "no such node in this environment".into(),
            })?;
            let (program, args) = command.split_first().ok_or_else(|| LocalEnvError::Node {
                name: name.clone(),
                reason: "no command given".into(),
            })?;
            let status =
                node.command(program)?
                    .args(args)
                    .status()
                    .map_err(|source| LocalEnvError::Spawn {
                        command: program.clone(),
                        source,
                    })?;
            return Ok(ExitCode::from(status.code().unwrap_or(1).clamp(0, 255) as u8));
        }
    }
    Ok(ExitCode::SUCCESS)
}
