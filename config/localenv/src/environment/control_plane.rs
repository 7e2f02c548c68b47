//! The control plane: etcd, kube-apiserver and kube-controller-manager on loopback, on free
//! ports, with their own CA, service-account keys, RBAC authorization and a kubeconfig, of the
//! Kubernetes release [`KubeRelease`] chooses (recorded in the directory, so a running control
//! plane of another release is replaced, not reused).
//!
//! Network namespaces (the sandbox nodes) cannot reach the host's loopback, so a socat bridge
//! also exposes the API server on a unix socket (`api.sock`); the fabric serves that socket on
//! its management gateway, `https://10.77.0.1:6443`, where nodes reach it over eth0.

use crate::{
    daemon::{Daemon, wait_until},
    error::{LocalEnvError, Result},
    pki,
    release::KubeRelease,
};
use std::{
    net::TcpListener,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

/// The port the fabric serves the API server on, at its management gateway.
pub const NODE_API_PORT: u16 = 6443;

const READY_TIMEOUT: Duration = Duration::from_secs(60);
const STOP_GRACE: Duration = Duration::from_secs(10);

/// A process of the control plane that can be stopped and started again in place: same
/// binary, flags, ports, certificates and data, as a crash and a restart by a supervisor would.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Part {
    Etcd,
    #[value(name = "kube-apiserver")]
    ApiServer,
    #[value(name = "kube-controller-manager")]
    ControllerManager,
}

/// How a part is stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    /// SIGTERM, then SIGKILL after a grace period.
    Graceful,
    /// SIGKILL at once.
    Kill,
}

/// Who runs the workloads' pods.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Workloads {
    /// Nobody: the controller manager runs only the controllers tests rely on, and tests run
    /// the programs as processes (in the nodes, or on the host as their pod templates say).
    Processes,
    /// Real kubelets on the nodes ([`crate::kube_node`]): the scheduler and every controller
    /// run, pod CIDRs are allocated, and the API server reaches pods and kubelets through the
    /// fabric ([`crate::fabric`]'s egress proxy), so webhooks are called through their Service.
    Kubelets,
}

impl Workloads {
    fn name(self) -> &'static str {
        match self {
            Workloads::Processes => "processes",
            Workloads::Kubelets => "kubelets",
        }
    }
}

/// The control plane of one local environment directory.
#[derive(Clone, Debug)]
pub struct ControlPlane {
    dir: PathBuf,
}

/// The ports a control plane was started on, kept for restarts in place.
struct Ports {
    etcd: u16,
    apiserver: u16,
    etcd_peer: u16,
}

/// What a started control plane exposes.
#[derive(Clone, Debug)]
pub struct Endpoints {
    pub apiserver_port: u16,
    pub etcd_port: u16,
    pub kubeconfig: PathBuf,
    /// Time from the first process start to a ready API server; `None` when a running control
    /// plane was reused.
    pub startup: Option<Duration>,
}

impl ControlPlane {
    pub fn new(env_dir: &Path) -> Self {
        ControlPlane {
            dir: env_dir.join("cluster"),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn pki_dir(&self) -> PathBuf {
        self.dir.join("pki")
    }

    /// The admin kubeconfig for clients on this host.
    pub fn kubeconfig(&self) -> PathBuf {
        self.dir.join("kubeconfig")
    }

    /// The admin kubeconfig for clients inside a sandbox node (`https://10.77.0.1:6443`).
    pub fn node_kubeconfig(&self) -> PathBuf {
        self.dir.join("kubeconfig-node")
    }

    /// The unix socket that forwards to the API server.
    pub fn api_socket(&self) -> PathBuf {
        self.dir.join("api.sock")
    }

    fn daemon(&self, part: Part) -> Daemon {
        let [etcd, apiserver, controller_manager, _] = self.daemons();
        match part {
            Part::Etcd => etcd,
            Part::ApiServer => apiserver,
            Part::ControllerManager => controller_manager,
        }
    }

    /// Stops one part and keeps its data, so [`ControlPlane::start_part`] can start it again.
    pub fn stop_part(&self, part: Part, how: Stop) {
        let daemon = self.daemon(part);
        match how {
            Stop::Graceful => daemon.stop(STOP_GRACE),
            Stop::Kill => daemon.kill(),
        }
    }

    /// Starts a part stopped by [`ControlPlane::stop_part`] (or dead) again, in place; for the
    /// API server, waits until it is ready. A part that runs is left alone.
    pub async fn start_part(&self, part: Part) -> Result<()> {
        let daemon = self.daemon(part);
        if daemon.running_pid().is_some() {
            return Ok(());
        }
        let (Some(release), Some(ports)) = (self.release(), self.ports()) else {
            return Err(LocalEnvError::ClusterDown {
                dir: self.dir.clone(),
            });
        };
        match part {
            Part::Etcd => {
                daemon.spawn(self.etcd_command(&release.etcd(), ports.etcd, ports.etcd_peer))?;
            }
            Part::ApiServer => {
                daemon.spawn(self.apiserver_command(release, ports.etcd, ports.apiserver)?)?;
                let client = crate::client_from(&self.kubeconfig()).await?;
                wait_until(&daemon, "kube-apiserver /readyz", READY_TIMEOUT, || {
                    let client = client.clone();
                    async move { readyz(&client).await }
                })
                .await?;
            }
            Part::ControllerManager => {
                daemon.spawn(self.controller_manager_command(release))?;
            }
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        daemon.check_running()?;
        Ok(())
    }

    fn ports(&self) -> Option<Ports> {
        let ports = std::fs::read_to_string(self.dir.join("ports")).ok()?;
        let mut values = ports.split_whitespace().map(|value| value.parse::<u16>().ok());
        Some(Ports {
            etcd: values.next()??,
            apiserver: values.next()??,
            etcd_peer: values.next()??,
        })
    }

    fn daemons(&self) -> [Daemon; 4] {
        [
            Daemon::new("etcd", "etcd", &self.dir),
            Daemon::new("kube-apiserver", "kube-apiserver", &self.dir),
            Daemon::new("kube-controller-manager", "kube-controller-manager", &self.dir),
            Daemon::new("api-socket", "socat", &self.dir),
        ]
    }

    fn scheduler(&self) -> Daemon {
        Daemon::new("kube-scheduler", "kube-scheduler", &self.dir)
    }

    /// True when every process of the control plane runs.
    pub fn is_running(&self) -> bool {
        self.daemons().iter().all(|daemon| daemon.running_pid().is_some())
            && (self.workloads() != Workloads::Kubelets || self.scheduler().running_pid().is_some())
    }

    /// Who runs pods in the running (or last started) control plane.
    pub fn workloads(&self) -> Workloads {
        match std::fs::read_to_string(self.dir.join("workloads")).as_deref() {
            Ok("kubelets") => Workloads::Kubelets,
            _ => Workloads::Processes,
        }
    }

    /// The unix socket the API server sends its traffic to pods and nodes to (an HTTP CONNECT
    /// proxy in the fabric serves it), with [`Workloads::Kubelets`].
    pub fn egress_socket(&self) -> PathBuf {
        self.dir.join("egress.sock")
    }

    /// Each process and its pid, or `None` when it is not running.
    pub fn status(&self) -> Vec<(String, Option<u32>)> {
        self.daemons()
            .iter()
            .map(|daemon| (daemon.name.clone(), daemon.running_pid()))
            .collect()
    }

    /// The release the running (or last started) control plane is of.
    pub fn release(&self) -> Option<KubeRelease> {
        KubeRelease::parse(&std::fs::read_to_string(self.dir.join("release")).ok()?)
    }

    pub fn endpoints(&self) -> Option<Endpoints> {
        let ports = self.ports()?;
        Some(Endpoints {
            apiserver_port: ports.apiserver,
            etcd_port: ports.etcd,
            kubeconfig: self.kubeconfig(),
            startup: None,
        })
    }

    /// Stops every process this directory started (by pid) and deletes its data.
    pub fn stop(&self) -> Result<()> {
        // Reverse start order: clients before the API server, the API server before etcd.
        self.scheduler().stop(STOP_GRACE);
        for daemon in self.daemons().iter().rev() {
            daemon.stop(STOP_GRACE);
        }
        if self.dir.exists() {
            std::fs::remove_dir_all(&self.dir).map_err(LocalEnvError::io("remove", &self.dir))?;
        }
        Ok(())
    }

    /// Starts a fresh control plane (after stopping whatever a previous run left) and waits
    /// until the API server is ready.
    pub async fn start(&self, release: KubeRelease, workloads: Workloads) -> Result<Endpoints> {
        let bin = release.bin_dir();
        for tool in ["kube-apiserver", "kube-controller-manager"] {
            if !bin.join(tool).is_file() {
                return Err(LocalEnvError::MissingTool {
                    what: "kube-apiserver build",
                    path: bin.join(tool),
                    hint: release.build_hint(),
                });
            }
        }
        let etcd_program = release.etcd();
        if etcd_program.is_absolute() && !etcd_program.is_file() {
            return Err(LocalEnvError::MissingTool {
                what: "etcd build",
                path: etcd_program,
                hint: release.build_hint(),
            });
        }
        let needed_on_path = if etcd_program.is_absolute() {
            &["socat"][..]
        } else {
            &["etcd", "socat"][..]
        };
        for &tool in needed_on_path {
            if which(tool).is_none() {
                return Err(LocalEnvError::MissingTool {
                    what: "a Debian package",
                    path: PathBuf::from(tool),
                    hint: "install the dependencies with `make deps`",
                });
            }
        }

        self.stop()?;
        std::fs::create_dir_all(&self.dir).map_err(LocalEnvError::io("create", &self.dir))?;
        let token = pki::generate(&self.pki_dir())?;
        let etcd_port = free_port()?;
        let etcd_peer_port = free_port()?;
        let apiserver_port = free_port()?;
        let ports = format!("{etcd_port} {apiserver_port} {etcd_peer_port}\n");
        std::fs::write(self.dir.join("ports"), ports)
            .map_err(LocalEnvError::io("write", self.dir.join("ports")))?;
        std::fs::write(self.dir.join("release"), release.name())
            .map_err(LocalEnvError::io("write", self.dir.join("release")))?;
        std::fs::write(self.dir.join("workloads"), workloads.name())
            .map_err(LocalEnvError::io("write", self.dir.join("workloads")))?;
        self.write_kubeconfig(&self.kubeconfig(), "127.0.0.1", apiserver_port, &token)?;
        let gateway = crate::fabric::MGMT_GATEWAY;
        self.write_kubeconfig(&self.node_kubeconfig(), gateway, NODE_API_PORT, &token)?;

        let started = Instant::now();
        let [etcd, apiserver, controller_manager, api_socket] = self.daemons();
        etcd.spawn(self.etcd_command(&etcd_program, etcd_port, etcd_peer_port))?;
        apiserver.spawn(self.apiserver_command(release, etcd_port, apiserver_port)?)?;

        let client = crate::client_from(&self.kubeconfig()).await?;
        wait_until(&apiserver, "kube-apiserver /readyz", READY_TIMEOUT, || {
            let client = client.clone();
            async move { readyz(&client).await }
        })
        .await
        .map_err(|error| match etcd.check_running() {
            Err(etcd_died) => etcd_died,
            Ok(_) => error,
        })?;
        let startup = started.elapsed();
        create_namespace(&client, HANDLER_NAMESPACE).await?;

        controller_manager.spawn(self.controller_manager_command(release))?;
        api_socket.spawn(self.api_socket_command(apiserver_port))?;
        if workloads == Workloads::Kubelets {
            self.scheduler().spawn(self.scheduler_command(release))?;
        }
        // The controller manager fails fast on bad flags or credentials; give it that moment.
        tokio::time::sleep(Duration::from_millis(300)).await;
        controller_manager.check_running()?;
        if workloads == Workloads::Kubelets {
            self.scheduler().check_running()?;
        }
        api_socket.check_running()?;
        Ok(Endpoints {
            apiserver_port,
            etcd_port,
            kubeconfig: self.kubeconfig(),
            startup: Some(startup),
        })
    }

    fn etcd_command(&self, program: &Path, client_port: u16, peer_port: u16) -> Command {
        let client_url = format!("http://127.0.0.1:{client_port}");
        let peer_url = format!("http://127.0.0.1:{peer_port}");
        let mut command = Command::new(program);
        command
            .arg(format!("--data-dir={}", self.dir.join("etcd-data").display()))
            .arg(format!("--listen-client-urls={client_url}"))
            .arg(format!("--advertise-client-urls={client_url}"))
            .arg(format!("--listen-peer-urls={peer_url}"))
            .arg(format!("--initial-advertise-peer-urls={peer_url}"))
            .arg(format!("--initial-cluster=default={peer_url}"))
            .arg("--log-level=warn")
            .arg("--logger=zap");
        command
    }

    fn apiserver_command(&self, release: KubeRelease, etcd_port: u16, port: u16) -> Result<Command> {
        let pki = self.pki_dir();
        let audit_policy = self.write_audit_policy()?;
        let mut command = Command::new(release.bin_dir().join("kube-apiserver"));
        command
            .args(release.apiserver_flags())
            .arg(format!("--etcd-servers=http://127.0.0.1:{etcd_port}"))
            .arg("--bind-address=127.0.0.1")
            .arg(format!("--secure-port={port}"))
            .arg(format!(
                "--cert-dir={}",
                self.dir.join("apiserver-certs").display()
            ))
            .arg(format!(
                "--tls-cert-file={}",
                pki.join(pki::SERVER_CERT).display()
            ))
            .arg(format!(
                "--tls-private-key-file={}",
                pki.join(pki::SERVER_KEY).display()
            ))
            .arg(format!("--client-ca-file={}", pki.join(pki::CA_CERT).display()))
            .arg(format!("--token-auth-file={}", pki.join(pki::TOKENS).display()))
            .arg(format!(
                "--service-account-key-file={}",
                pki.join(pki::SERVICE_ACCOUNT_PUB).display()
            ))
            .arg(format!(
                "--service-account-signing-key-file={}",
                pki.join(pki::SERVICE_ACCOUNT_KEY).display()
            ))
            .arg("--service-account-issuer=https://kubernetes.default.svc")
            .arg("--authorization-mode=RBAC")
            .arg("--service-cluster-ip-range=10.96.0.0/16")
            .arg("--allow-privileged=true")
            .arg("--profiling=false")
            .arg(format!(
                "--audit-log-path={}",
                self.dir.join("audit.log").display()
            ))
            .arg(format!("--audit-policy-file={}", audit_policy.display()))
            .arg("--v=1");
        if self.workloads() == Workloads::Kubelets {
            // Pods reach the API server at the fabric's gateway (the `kubernetes` Service's
            // endpoint; the fabric forwards that port too), and the API server reaches pods
            // and kubelets through the fabric's egress proxy, webhooks at their endpoints.
            let egress = self.write_egress_config()?;
            command
                .arg(format!("--advertise-address={}", crate::fabric::MGMT_GATEWAY))
                // (the last of a repeated flag wins over the release's `none`)
                .arg("--endpoint-reconciler-type=lease")
                // Node names resolve nowhere; their addresses are routed through the proxy.
                .arg("--kubelet-preferred-address-types=InternalIP")
                .arg(format!("--egress-selector-config-file={}", egress.display()))
                .arg("--enable-aggregator-routing=true");
        } else {
            command.arg("--advertise-address=127.0.0.1");
        }
        Ok(command)
    }

    /// Records who wrote what (metadata level, writes only): benchmarks count API writes from it.
    fn write_audit_policy(&self) -> Result<PathBuf> {
        let path = self.dir.join("audit-policy.yaml");
        let policy = "apiVersion: audit.k8s.io/v1\nkind: Policy\nomitStages: [RequestReceived]\nrules:\n\
                      - level: Metadata\n  verbs: [create, update, patch, delete, deletecollection]\n\
                      - level: None\n";
        std::fs::write(&path, policy).map_err(LocalEnvError::io("write", &path))?;
        Ok(path)
    }

    /// Where the API server's traffic to the cluster (webhooks, kubelets) goes.
    fn write_egress_config(&self) -> Result<PathBuf> {
        let path = self.dir.join("egress.yaml");
        let config = format!(
            "apiVersion: apiserver.k8s.io/v1beta1\nkind: EgressSelectorConfiguration\negressSelections:\n\
             - name: cluster\n  connection:\n    proxyProtocol: HTTPConnect\n    transport:\n      uds:\n        \
             udsName: {}\n",
            self.egress_socket().display()
        );
        std::fs::write(&path, config).map_err(LocalEnvError::io("write", &path))?;
        Ok(path)
    }

    fn scheduler_command(&self, release: KubeRelease) -> Command {
        let mut command = Command::new(release.bin_dir().join("kube-scheduler"));
        command
            .arg(format!("--kubeconfig={}", self.kubeconfig().display()))
            .arg("--leader-elect=false")
            .arg("--secure-port=0")
            .arg("--v=1");
        command
    }

    fn controller_manager_command(&self, release: KubeRelease) -> Command {
        let pki = self.pki_dir();
        let mut command = Command::new(release.bin_dir().join("kube-controller-manager"));
        command
            .args(release.controller_manager_flags())
            .arg(format!("--kubeconfig={}", self.kubeconfig().display()));
        match self.workloads() {
            // Every controller; nodes get pod CIDRs.
            Workloads::Kubelets => command
                .arg("--allocate-node-cidrs=true")
                .arg(format!("--cluster-cidr={}", crate::kube_node::CLUSTER_CIDR))
                .arg("--node-cidr-mask-size=24")
                .arg("--service-cluster-ip-range=10.96.0.0/16"),
            // Only what tests rely on: ownerReference garbage collection and namespace
            // deletion. No pods run here, so workload controllers would only fight the tests
            // over DaemonSet/Deployment status, and the node lifecycle controller would mark
            // the sandbox nodes NotReady for lack of a kubelet.
            Workloads::Processes => {
                command.arg("--controllers=garbagecollector,namespace,serviceaccount,serviceaccount-token")
            }
        };
        command
            .arg(format!(
                "--service-account-private-key-file={}",
                pki.join(pki::SERVICE_ACCOUNT_KEY).display()
            ))
            .arg(format!("--root-ca-file={}", pki.join(pki::CA_CERT).display()))
            .arg("--leader-elect=false")
            .arg("--secure-port=0")
            .arg("--v=1");
        command
    }

    fn api_socket_command(&self, apiserver_port: u16) -> Command {
        let mut command = Command::new("socat");
        command
            .arg(format!(
                "UNIX-LISTEN:{},fork,unlink-early,mode=600",
                self.api_socket().display()
            ))
            // Without Nagle's algorithm, as the fabric's end (`Fabric::api_forward`).
            .arg(format!("TCP:127.0.0.1:{apiserver_port},nodelay"));
        command
    }

    fn write_kubeconfig(&self, path: &Path, host: &str, port: u16, token: &str) -> Result<()> {
        let ca = self.pki_dir().join(pki::CA_CERT);
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: localenv\n  cluster:\n    server: https://{host}:{port}\n    certificate-authority: {ca}\ncontexts:\n- name: localenv\n  context:\n    cluster: localenv\n    user: admin\ncurrent-context: localenv\nusers:\n- name: admin\n  user:\n    token: {token}\n",
            ca = ca.display()
        );
        std::fs::write(path, text).map_err(LocalEnvError::io("write", path))
    }
}

/// The namespace the operator would give the handlers (their Leases live there).
pub const HANDLER_NAMESPACE: &str = "nmstate";

async fn create_namespace(client: &kube::Client, name: &str) -> Result<()> {
    use k8s_openapi::api::core::v1::Namespace;
    let namespaces: kube::Api<Namespace> = kube::Api::all(client.clone());
    let namespace = Namespace {
        metadata: kube::api::ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        ..Default::default()
    };
    match namespaces
        .create(&kube::api::PostParams::default(), &namespace)
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 409 => Ok(()),
        Err(error) => Err(error.into()),
    }
}

async fn readyz(client: &kube::Client) -> bool {
    let request = match http::Request::get("/readyz").body(Vec::new()) {
        Ok(request) => request,
        Err(_) => return false,
    };
    matches!(client.request_text(request).await, Ok(body) if body.trim() == "ok")
}

fn free_port() -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(LocalEnvError::io("bind", "127.0.0.1:0"))?;
    let port = listener
        .local_addr()
        .map_err(LocalEnvError::io("bind", "127.0.0.1:0"))?
        .port();
    Ok(port)
}

/// The full path of `program` on `PATH`.
pub fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_string_lossy()
        .split(':')
        .map(|dir| Path::new(dir).join(program))
        .find(|candidate| candidate.is_file())
}
