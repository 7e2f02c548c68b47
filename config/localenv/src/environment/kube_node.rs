//! A sandbox node as a real Kubernetes node: containerd, a kubelet and kube-proxy of the
//! control plane's release, started in the node's network, mount and UTS namespaces (those of
//! its NetworkManager), so that a hostNetwork pod lands in the node's network namespace and a
//! hostPath means the node's file system: `/run/dbus/system_bus_socket` is the node's own bus.
//!
//! Nothing on the host changes. In the node's mount namespace `/var` is an overlay whose writes
//! land in the node's directory, with containerd's and the kubelet's state bound from there (an
//! overlay cannot hold containerd's overlay snapshots); the host's cgroup hierarchies are
//! mounted again (`ip netns exec` left a fresh sysfs without them); the kernel settings the
//! kubelet writes at start (`vm.overcommit_memory`, `kernel.panic`…, global on the host) are the
//! node's own files bound over `/proc/sys`. Each kubelet has its own cgroup root, so the nodes'
//! kubelets never collect each other's pods. Teardown kills what runs in that cgroup root (the
//! containers and shims, which would otherwise outlive the node) and removes it.

use crate::{
    control_plane::ControlPlane,
    daemon::{Daemon, run},
    error::{LocalEnvError, Result},
    images,
    node::SandboxNode,
};
use std::{
    path::{Path, PathBuf},
    time::Duration,
};

/// Pods' addresses: each node gets a /24 of it from the controller manager (`spec.podCIDR`).
pub const CLUSTER_CIDR: &str = "10.244.0.0/16";
/// What the kubelet sets on the host at start unless told to only check: these files, with the
/// kubelet's values, are bound over `/proc/sys` inside the node instead.
const KUBELET_SYSCTLS: [(&str, &str); 6] = [
    ("vm/overcommit_memory", "1"),
    ("vm/panic_on_oom", "0"),
    ("kernel/panic", "10"),
    ("kernel/panic_on_oops", "1"),
    ("kernel/keys/root_maxkeys", "1000000"),
    ("kernel/keys/root_maxbytes", "25000000"),
];
const CONTAINERD_SOCKET: &str = "/run/containerd/containerd.sock";

/// The Kubernetes part of one sandbox node. `bin_dir`, where a method takes it, holds the
/// release's kubelet, kube-proxy, containerd, its shim and ctr.
pub struct KubeNode<'a> {
    node: &'a SandboxNode,
}

impl<'a> KubeNode<'a> {
    pub fn new(node: &'a SandboxNode) -> Self {
        KubeNode { node }
    }

    fn dir(&self) -> PathBuf {
        self.node.dir().join("kube")
    }

    /// The node's cgroup root under every hierarchy (the kubelet's `cgroupRoot`).
    pub fn cgroup_root(&self) -> String {
        format!("/localenv-{}", self.node.netns)
    }

    fn daemons(&self) -> [Daemon; 3] {
        let dir = self.dir();
        [
            // nsenter execs the program, so the pid runs it.
            Daemon::new("containerd", "containerd", &dir),
            Daemon::new("kubelet", "kubelet", &dir),
            Daemon::new("kube-proxy", "kube-proxy", &dir),
        ]
    }

    pub fn is_running(&self) -> bool {
        self.daemons().iter().all(|daemon| daemon.running_pid().is_some())
    }

    /// Starts containerd (with `images` imported), the kubelet and kube-proxy; the kubelet
    /// registers the node (or takes over its Node object). Returns once all three run; the Node
    /// turns Ready once its pod network is configured ([`KubeNode::configure_pod_network`]).
    /// A node already running only imports `images` again (rebuilt binaries reach it).
    pub fn start(&self, bin_dir: &Path, control_plane: &ControlPlane, images: &[PathBuf]) -> Result<()> {
        if self.is_running() {
            return self.import(bin_dir, images);
        }
        self.stop();
        let dir = self.dir();
        std::fs::create_dir_all(&dir).map_err(LocalEnvError::io("create", &dir))?;
        self.prepare_cgroups()?;
        // Once per node: the mounts stay in its mount namespace across restarts of its daemons.
        let mounted = dir.join("mounted");
        if !mounted.exists() {
            run(self.node.command("sh")?.arg("-c").arg(self.mounts_script()?))?;
            write(&mounted, "")?;
        }
        let [containerd, kubelet, proxy] = self.daemons();

        let config = dir.join("containerd.toml");
        write(&config, &containerd_config())?;
        let mut command = self.node.command(bin_dir.join("containerd"))?;
        command.arg("--config").arg(&config);
        command.env(
            "PATH",
            format!("{}:/usr/sbin:/usr/bin:/sbin:/bin", bin_dir.display()),
        );
        self.join_cgroup(containerd.spawn(command)?)?;
        self.wait_for_containerd(bin_dir, &containerd)?;
        self.import(bin_dir, images)?;

        let config = dir.join("kubelet.yaml");
        write(&config, &self.kubelet_config())?;
        let mut command = self.node.command(bin_dir.join("kubelet"))?;
        command
            .arg(format!("--config={}", config.display()))
            .arg(format!(
                "--kubeconfig={}",
                control_plane.node_kubeconfig().display()
            ))
            .arg(format!("--hostname-override={}", self.node.name))
            .arg(format!("--node-ip={}", self.node.address()))
            .arg("--v=1");
        self.join_cgroup(kubelet.spawn(command)?)?;

        let config = dir.join("kube-proxy.yaml");
        write(&config, &self.proxy_config(&control_plane.node_kubeconfig()))?;
        let mut command = self.node.command(bin_dir.join("kube-proxy"))?;
        command.arg(format!("--config={}", config.display())).arg("--v=1");
        self.join_cgroup(proxy.spawn(command)?)?;
        std::thread::sleep(Duration::from_millis(300));
        for daemon in [&containerd, &kubelet, &proxy] {
            daemon.check_running()?;
        }
        Ok(())
    }

    /// Writes the node's CNI configuration (bridge and host-local on `pod_cidr`, the Node's
    /// `spec.podCIDR`); the kubelet reports the node Ready once it sees it.
    pub fn configure_pod_network(&self, pod_cidr: &str) -> Result<()> {
        let config = serde_json::json!({
            "cniVersion": "1.0.0",
            "name": "pods",
            "plugins": [
                {
                    "type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": false, "hairpinMode": true,
                    "ipam": {"type": "host-local", "ranges": [[{"subnet": pod_cidr}]], "routes": [{"dst": "0.0.0.0/0"}]},
                },
                {"type": "portmap", "capabilities": {"portMappings": true}},
            ],
        });
        let path = self.dir().join("10-pods.conflist");
        write(&path, &config.to_string())?;
        run(self
            .node
            .command("cp")?
            .arg(&path)
            .arg("/etc/cni/net.d/10-pods.conflist"))?;
        Ok(())
    }

    /// Stops kube-proxy, the kubelet and containerd, kills whatever still runs in the node's
    /// cgroup root (containers, shims) and removes it. The mounts go with the node's mount
    /// namespace once nothing holds it.
    pub fn stop(&self) {
        for daemon in self.daemons().iter().rev() {
            daemon.stop(Duration::from_secs(10));
        }
        remove_cgroup_tree(&self.cgroup_root());
    }

    /// Moves a daemon of the node (and so what it starts later: containerd's shims) into the
    /// node's cgroup root, where teardown finds and kills it.
    fn join_cgroup(&self, pid: u32) -> Result<()> {
        for (mount_point, _) in host_cgroup_mounts()? {
            let dir = PathBuf::from(format!("{mount_point}{}/node", self.cgroup_root()));
            std::fs::create_dir_all(&dir).map_err(LocalEnvError::io("create", &dir))?;
            if mount_point.ends_with("/cpuset") {
                copy_cpuset(Path::new(&mount_point), &dir)?;
            }
            let procs = dir.join("cgroup.procs");
            std::fs::write(&procs, pid.to_string()).map_err(LocalEnvError::io("write", &procs))?;
        }
        Ok(())
    }

    /// Imports image archives into the node's containerd (an image already there with the same
    /// content is left as it is).
    fn import(&self, bin_dir: &Path, images: &[PathBuf]) -> Result<()> {
        for image in images {
            let mut import = self.ctr(bin_dir)?;
            import.args(["images", "import"]).arg(image);
            run(&mut import)?;
        }
        Ok(())
    }

    /// Gives the imported image `from` a second name `to` in the node's containerd, as pushing
    /// a new tag of the same image to a registry would.
    pub fn tag_image(&self, bin_dir: &Path, from: &str, to: &str) -> Result<()> {
        let mut tag = self.ctr(bin_dir)?;
        tag.args(["images", "tag", "--force", from, to]);
        run(&mut tag)?;
        Ok(())
    }

    /// Removes the name `reference` (the image stays while another name holds it).
    pub fn untag_image(&self, bin_dir: &Path, reference: &str) -> Result<()> {
        let mut remove = self.ctr(bin_dir)?;
        remove.args(["images", "rm", reference]);
        run(&mut remove)?;
        Ok(())
    }

    fn ctr(&self, bin_dir: &Path) -> Result<std::process::Command> {
        let mut command = self.node.command(bin_dir.join("ctr"))?;
        command.args(["--address", CONTAINERD_SOCKET, "--namespace", "k8s.io"]);
        Ok(command)
    }

    fn wait_for_containerd(&self, bin_dir: &Path, containerd: &Daemon) -> Result<()> {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while std::time::Instant::now() < deadline {
            // Before nsenter has executed containerd, the pid runs nsenter: ask first.
            std::thread::sleep(Duration::from_millis(100));
            let mut version = self.ctr(bin_dir)?;
            if run(version.arg("version")).is_ok() {
                return Ok(());
            }
            containerd.check_running()?;
        }
        Err(LocalEnvError::NotReady {
            what: format!("containerd on {}", self.node.name),
            seconds: 20,
            log: containerd.log_file.clone(),
        })
    }

    /// The cgroup root in every v1 hierarchy (and the unified one), cpuset's CPUs and memory
    /// nodes copied from the parent so that tasks can join it.
    fn prepare_cgroups(&self) -> Result<()> {
        for (mount_point, _) in host_cgroup_mounts()? {
            let path = PathBuf::from(format!("{mount_point}{}", self.cgroup_root()));
            std::fs::create_dir_all(&path).map_err(LocalEnvError::io("create", &path))?;
            if mount_point.ends_with("/cpuset") {
                copy_cpuset(Path::new(&mount_point), &path)?;
            }
        }
        Ok(())
    }

    /// The mounts, run once inside the node's mount namespace (see the module's documentation).
    fn mounts_script(&self) -> Result<String> {
        let dir = self.dir();
        let d = dir.display();
        let nm_lib = self.node.dir().join("nm/lib");
        let mut script = format!(
            "set -e\n\
             mkdir -p {d}/var-upper {d}/var-work {d}/containerd {d}/kubelet {d}/sysctl\n\
             mount -t overlay localenv-var -o lowerdir=/var,upperdir={d}/var-upper,workdir={d}/var-work /var\n\
             mount --bind {nm_lib} /var/lib/NetworkManager\n\
             mkdir -p /var/lib/containerd /var/lib/kubelet /var/log/pods /var/k8s_nmstate\n\
             mount --bind {d}/containerd /var/lib/containerd\n\
             mount --bind {d}/kubelet /var/lib/kubelet\n\
             mount --make-rshared /var/lib/kubelet\n\
             mkdir -p /run/dbus /etc/cni/net.d\n\
             touch /run/dbus/system_bus_socket\n\
             mount --bind {bus} /run/dbus/system_bus_socket\n\
             tr -d - < /proc/sys/kernel/random/uuid > /etc/machine-id\n\
             mount -t tmpfs -o mode=755 cgroup /sys/fs/cgroup\n",
            nm_lib = nm_lib.display(),
            bus = self.node.bus_socket().display(),
        );
        for (mount_point, options) in host_cgroup_mounts()? {
            script.push_str(&format!("mkdir -p {mount_point}\n"));
            if options.is_empty() {
                script.push_str(&format!("mount -t cgroup2 cgroup2 {mount_point}\n"));
            } else {
                script.push_str(&format!("mount -t cgroup -o {options} cgroup {mount_point}\n"));
            }
        }
        for (key, value) in KUBELET_SYSCTLS {
            let file = dir.join("sysctl").join(key.replace('/', "."));
            script.push_str(&format!(
                "echo {value} > {file}\nmount --bind {file} /proc/sys/{key}\n",
                file = file.display()
            ));
        }
        Ok(script)
    }

    fn kubelet_config(&self) -> String {
        format!(
            "apiVersion: kubelet.config.k8s.io/v1beta1\n\
             kind: KubeletConfiguration\n\
             # This host runs cgroup v1, which kubelet 1.35+ refuses unless told.\n\
             failCgroupV1: false\n\
             cgroupDriver: cgroupfs\n\
             cgroupRoot: {root}\n\
             containerRuntimeEndpoint: unix://{CONTAINERD_SOCKET}\n\
             # Only the API server reaches it (its egress proxy is the way into the sandbox), with\n\
             # no client certificate: anyone who reaches it may read logs, as in kind's defaults\n\
             # before it had certificates.\n\
             authentication:\n  anonymous: {{enabled: true}}\n  webhook: {{enabled: false}}\n\
             authorization: {{mode: AlwaysAllow}}\n\
             # Nothing can be pulled again and the disk is the host's: no image GC, no eviction.\n\
             enforceNodeAllocatable: []\n\
             imageGCHighThresholdPercent: 100\n\
             imageGCLowThresholdPercent: 99\n\
             evictionHard: {{imagefs.available: \"0%\", nodefs.available: \"0%\", nodefs.inodesFree: \"0%\"}}\n\
             failSwapOn: false\n\
             localStorageCapacityIsolation: false\n\
             resolvConf: /etc/resolv.conf\n\
             clusterDomain: cluster.local\n\
             # Host-wide on this machine: the node's own files are bound over /proc/sys.\n\
             protectKernelDefaults: false\n",
            root = self.cgroup_root()
        )
    }

    fn proxy_config(&self, kubeconfig: &Path) -> String {
        format!(
            "apiVersion: kubeproxy.config.k8s.io/v1alpha1\n\
             kind: KubeProxyConfiguration\n\
             mode: iptables\n\
             hostnameOverride: {name}\n\
             clusterCIDR: {CLUSTER_CIDR}\n\
             clientConnection: {{kubeconfig: {kubeconfig}}}\n\
             # The conntrack table is the host's: leave its size and timeouts alone.\n\
             conntrack: {{maxPerCore: 0, min: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}}\n\
             metricsBindAddress: 127.0.0.1:10249\n\
             healthzBindAddress: 127.0.0.1:10256\n",
            name = self.node.name,
            kubeconfig = kubeconfig.display(),
        )
    }
}

fn containerd_config() -> String {
    format!(
        "version = 3\n\
         root = \"/var/lib/containerd\"\n\
         state = \"/run/containerd\"\n\
         [grpc]\n  address = \"{CONTAINERD_SOCKET}\"\n\
         [plugins.'io.containerd.cri.v1.images']\n  snapshotter = \"overlayfs\"\n\
         # Nothing is pulled here: the sandbox image is the one imported.\n\
         [plugins.'io.containerd.cri.v1.images'.pinned_images]\n  sandbox = \"{pause}\"\n\
         [plugins.'io.containerd.cri.v1.runtime']\n\
         # Root here lacks CAP_SYS_RESOURCE: no container gets an OOM score below containerd's.\n  \
         restrict_oom_score_adj = true\n\
         [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]\n  \
         SystemdCgroup = false\n  BinaryName = \"/usr/sbin/runc\"\n\
         [plugins.'io.containerd.cri.v1.runtime'.cni]\n  bin_dirs = [\"/usr/lib/cni\"]\n  conf_dir = \"/etc/cni/net.d\"\n",
        // The pod sandbox image every node pins.
        pause = images::reference("pause")
    )
}

/// The host's cgroup hierarchies under `/sys/fs/cgroup`: (mount point, options), the options
/// empty for the unified (v2) one.
fn host_cgroup_mounts() -> Result<Vec<(String, String)>> {
    let path = Path::new("/proc/self/mountinfo");
    let text = std::fs::read_to_string(path).map_err(LocalEnvError::io("read", path))?;
    Ok(text
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let separator = fields.iter().position(|field| *field == "-")?;
            let (mount_point, kind) = (fields.get(4)?, fields.get(separator + 1)?);
            let super_options = fields.get(separator + 3)?;
            if !mount_point.starts_with("/sys/fs/cgroup/") {
                return None;
            }
            match *kind {
                "cgroup2" => Some((mount_point.to_string(), String::new())),
                "cgroup" => {
                    let options = super_options.strip_prefix("rw,").unwrap_or(super_options);
                    Some((mount_point.to_string(), options.to_string()))
                }
                _ => None,
            }
        })
        .collect())
}

/// A v1 cpuset cgroup starts with no CPUs and no memory nodes: tasks can only join once it has
/// its parent's.
fn copy_cpuset(parent: &Path, cgroup: &Path) -> Result<()> {
    for file in ["cpuset.cpus", "cpuset.mems"] {
        let from = parent.join(file);
        let value = std::fs::read_to_string(&from).map_err(LocalEnvError::io("read", &from))?;
        let to = cgroup.join(file);
        std::fs::write(&to, value.trim()).map_err(LocalEnvError::io("write", &to))?;
    }
    Ok(())
}

/// Kills every task under `root` in each hierarchy and removes its cgroups, deepest first.
fn remove_cgroup_tree(root: &str) {
    let Ok(mounts) = host_cgroup_mounts() else { return };
    for (mount_point, _) in mounts {
        let top = PathBuf::from(format!("{mount_point}{root}"));
        if !top.exists() {
            continue;
        }
        let mut dirs = Vec::new();
        collect_dirs(&top, &mut dirs);
        for _ in 0..50 {
            let mut alive = false;
            for dir in &dirs {
                for pid in std::fs::read_to_string(dir.join("cgroup.procs"))
                    .unwrap_or_default()
                    .lines()
                {
                    if let Ok(pid) = pid.trim().parse::<i32>() {
                        alive = true;
                        let _ = nix::sys::signal::kill(
                            nix::unistd::Pid::from_raw(pid),
                            nix::sys::signal::Signal::SIGKILL,
                        );
                    }
                }
            }
            if !alive {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        // Deepest first: a cgroup with children cannot be removed.
        for dir in dirs.iter().rev() {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

fn collect_dirs(dir: &Path, out: &mut Vec<PathBuf>) {
    out.push(dir.to_path_buf());
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|kind| kind.is_dir()) {
                collect_dirs(&entry.path(), out);
            }
        }
    }
}

fn write(path: &Path, content: &str) -> Result<()> {
    std::fs::write(path, content).map_err(LocalEnvError::io("write", path))
}
