//! A simulated node: a network namespace with its own NetworkManager, private dbus-daemon and
//! config/state/profile directories, cabled to the fabric (eth0, eth1, eth2), plus the matching
//! Kubernetes `Node` object.
//!
//! NetworkManager runs in its own mount namespace too: `/etc` is an overlay whose writes land in
//! the node directory (NetworkManager replaces `/etc/resolv.conf` by rename), `/run` is a
//! tmpfs, and `/sys` is read-only except the net-device subtrees (NetworkManager waits for
//! udev forever when `/sys` is writable, and there is no udev here). Nothing on the host
//! changes.

use crate::{
    control_plane::ControlPlane,
    daemon::{Daemon, run},
    error::{LocalEnvError, Result},
    fabric::{CABLING, DNS_DOMAIN, Fabric, MGMT_GATEWAY},
    netns,
};
use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

const NM_START_TIMEOUT_SECONDS: u32 = 30;
/// NetworkManager's well-known name on the node's bus.
const NETWORK_MANAGER_BUS_NAME: &str = "org.freedesktop.NetworkManager";

/// A sandbox node's processes and directories.
#[derive(Clone, Debug)]
pub struct SandboxNode {
    pub name: String,
    pub index: u32,
    pub netns: String,
    switch_netns: String,
    dir: PathBuf,
    node_kubeconfig: PathBuf,
}

impl SandboxNode {
    /// The node `name` of an environment; `index` numbers its veths and its eth0 address.
    pub(crate) fn new(
        env_dir: &Path,
        prefix: &str,
        name: &str,
        index: u32,
        control_plane: &ControlPlane,
    ) -> Self {
        SandboxNode {
            name: name.to_string(),
            index,
            netns: format!("{prefix}-n{index}"),
            switch_netns: format!("{prefix}-sw"),
            dir: env_dir.join("nodes").join(name),
            node_kubeconfig: control_plane.node_kubeconfig(),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The node's primary address (eth0).
    pub fn address(&self) -> String {
        format!("10.77.0.{}", 10 + self.index)
    }

    /// eth0's MAC, fixed by the node's index: the management network's DHCP reserves the
    /// node's address for it.
    pub fn mgmt_mac(&self) -> String {
        let [_, _, high, low] = self.index.to_be_bytes();
        format!("02:77:0a:{high:02x}:{low:02x}:00")
    }

    /// `DBUS_SYSTEM_BUS_ADDRESS` of the node's private bus.
    pub fn bus_address(&self) -> String {
        format!("unix:path={}", self.bus_socket().display())
    }

    pub(crate) fn bus_socket(&self) -> PathBuf {
        self.dir.join("dbus/system_bus_socket")
    }

    /// NetworkManager's keyfile directory (`/etc/NetworkManager/system-connections` inside).
    pub fn profiles_dir(&self) -> PathBuf {
        self.dir.join("nm/etc/system-connections")
    }

    fn daemons(&self) -> [Daemon; 2] {
        [
            Daemon::new("dbus-daemon", "dbus-daemon", &self.dir),
            Daemon::new("NetworkManager", "NetworkManager", &self.dir),
        ]
    }

    pub fn is_running(&self) -> bool {
        netns::exists(&self.netns) && self.daemons().iter().all(|daemon| daemon.running_pid().is_some())
    }

    pub fn network_manager_pid(&self) -> Option<u32> {
        self.daemons()[1].running_pid()
    }

    /// A command that runs inside the node: NetworkManager's network, mount and UTS
    /// namespaces (so it sees the node's links, `/etc/resolv.conf` and hostname), with
    /// `DBUS_SYSTEM_BUS_ADDRESS`, `NODE_NAME`, `KUBECONFIG` (the API server at
    /// `https://10.77.0.1:6443`, reached over eth0) and `NMSTATE_INSTANCE_NODE_LOCK_FILE` set.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Result<Command> {
        let pid = self.network_manager_pid().ok_or_else(|| LocalEnvError::Node {
            name: self.name.clone(),
            reason: "NetworkManager is not running; start the node with `localenv node up`".into(),
        })?;
        let mut command = Command::new("nsenter");
        command
            .arg(format!("--target={pid}"))
            .args(["--net", "--mount", "--uts"]);
        // nsenter would start in the target's directory; relative paths mean the caller's.
        if let Ok(dir) = std::env::current_dir() {
            command.arg(format!("--wd={}", dir.display()));
        }
        command
            .arg("--")
            .arg(program)
            .env("DBUS_SYSTEM_BUS_ADDRESS", self.bus_address())
            .env("NODE_NAME", &self.name)
            // Per node, as the DaemonSet's hostPath is: handlers of different nodes never share it.
            .env(
                "NMSTATE_INSTANCE_NODE_LOCK_FILE",
                self.dir.join("k8s_nmstate/handler_lock"),
            )
            .env("KUBECONFIG", &self.node_kubeconfig);
        Ok(command)
    }

    /// Takes the node's management link (eth0, over which it reaches the API server) down at the
    /// switch, or brings it back: the node is cut off from the cluster as by a pulled cable or a
    /// failed switch port, its own links untouched.
    pub fn set_management_link(&self, up: bool) -> Result<()> {
        let state = if up { "up" } else { "down" };
        run(Command::new("ip").args([
            "-n",
            &self.switch_netns,
            "link",
            "set",
            &self.switch_end(0),
            state,
        ]))
        .map(|_| ())
    }

    /// Listens on TCP `port` on the node's loopback, for as long as the listener lives: a
    /// policy's `tcp` probe of `127.0.0.1:port` passes then, and is refused before.
    pub fn listen_tcp(&self, port: u16) -> Result<std::net::TcpListener> {
        netns::listen_tcp(&self.netns, (std::net::Ipv4Addr::LOCALHOST, port).into())
    }

    /// Builds (or repairs) the node: namespace, cabling, dbus-daemon and NetworkManager with eth0
    /// configured. Waits until NetworkManager finished starting up.
    pub(crate) fn start(&self, fabric: &Fabric) -> Result<()> {
        if self.is_running() {
            return Ok(());
        }
        self.stop()?;
        for sub in [
            "dbus",
            "nm/etc/conf.d",
            "nm/etc/system-connections",
            "nm/run",
            "nm/lib",
            "nm/etc-upper",
            "nm/etc-work",
        ] {
            let path = self.dir.join(sub);
            std::fs::create_dir_all(&path).map_err(LocalEnvError::io("create", &path))?;
        }
        std::fs::write(self.dir.join("index"), format!("{}\n", self.index))
            .map_err(LocalEnvError::io("write", self.dir.join("index")))?;
        self.cable(fabric)?;
        let [dbus, network_manager] = self.daemons();

        self.write_dbus_config()?;
        dbus.spawn(self.in_netns(&[
            "dbus-daemon",
            &format!("--config-file={}", self.dir.join("dbus/system.conf").display()),
            "--nofork",
            "--nopidfile",
            "--nosyslog",
        ]))?;
        let bus_ready = wait_for(|| self.bus_socket().exists(), Duration::from_secs(5));
        dbus.check_running()?;
        if !bus_ready {
            return Err(LocalEnvError::Node {
                name: self.name.clone(),
                reason: format!(
                    "the dbus-daemon socket did not appear; see {}",
                    dbus.log_file.display()
                ),
            });
        }

        self.write_network_manager_config()?;
        self.start_network_manager(&network_manager)
    }

    /// Stops NetworkManager (SIGTERM, as `systemctl restart` does) and starts it again on the
    /// node's bus with its configuration and profiles, once it is online: links and addresses
    /// stay, its in-memory state (checkpoints, D-Bus objects) does not.
    pub fn restart_network_manager(&self) -> Result<()> {
        let [_, network_manager] = self.daemons();
        network_manager.stop(Duration::from_secs(10));
        // The bus lets the old one's name go only once it has read the hang-up: a new one that
        // asks for the name before then exits at once ("already owned"). On a busy host that
        // took longer than the new one's start.
        let released = wait_for(
            || !self.bus_name_owned(NETWORK_MANAGER_BUS_NAME),
            Duration::from_secs(5),
        );
        if !released {
            return Err(LocalEnvError::Node {
                name: self.name.clone(),
                reason: format!("the bus still has a {NETWORK_MANAGER_BUS_NAME} 5 s after it stopped"),
            });
        }
        self.start_network_manager(&network_manager)
    }

    /// Whether a process owns `name` on the node's bus (unknown counts as owned).
    fn bus_name_owned(&self, name: &str) -> bool {
        let asked = Command::new("dbus-send")
            .arg(format!("--bus={}", self.bus_address()))
            .args([
                "--print-reply",
                "--dest=org.freedesktop.DBus",
                "/org/freedesktop/DBus",
                "org.freedesktop.DBus.NameHasOwner",
            ])
            .arg(format!("string:{name}"))
            .output();
        !matches!(asked, Ok(output) if output.status.success()
            && String::from_utf8_lossy(&output.stdout).contains("boolean false"))
    }

    fn start_network_manager(&self, network_manager: &Daemon) -> Result<()> {
        let mut start_nm = self.in_netns(&["unshare", "--mount", "--uts", "--propagation", "private"]);
        start_nm
            .arg(self.dir.join("nm/start-inner.sh"))
            .env("DBUS_SYSTEM_BUS_ADDRESS", self.bus_address());
        network_manager.spawn(start_nm)?;
        let online = run(Command::new("nm-online")
            .args(["-s", "-q", "-t", &NM_START_TIMEOUT_SECONDS.to_string()])
            .env("DBUS_SYSTEM_BUS_ADDRESS", self.bus_address()));
        network_manager.check_running()?;
        online.map_err(|error| LocalEnvError::Node {
            name: self.name.clone(),
            reason: format!(
                "NetworkManager did not finish starting ({error}); see {}",
                network_manager.log_file.display()
            ),
        })?;
        Ok(())
    }

    /// Stops the node's processes (by pid), deletes its namespace and its directory.
    pub(crate) fn stop(&self) -> Result<()> {
        // Containers and their shims first: they hold the node's namespaces.
        crate::kube_node::KubeNode::new(self).stop();
        for daemon in self.daemons().iter().rev() {
            daemon.stop(Duration::from_secs(10));
        }
        // Deleting a namespace tears its veths down asynchronously; deleting the switch ends
        // first removes both ends at once, so the next node with this index can cable in.
        self.remove_switch_ends();
        netns::delete(&self.netns)?;
        if self.dir.exists() {
            std::fs::remove_dir_all(&self.dir).map_err(LocalEnvError::io("remove", &self.dir))?;
        }
        Ok(())
    }

    fn in_netns(&self, args: &[&str]) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.netns]).args(args);
        command
    }

    /// veth pairs created inside the switch namespace with one end moved straight into the
    /// node's namespace, so no link ever appears in the host's namespace.
    fn switch_end(&self, port: usize) -> String {
        format!("n{}e{port}", self.index)
    }

    fn remove_switch_ends(&self) {
        if !netns::exists(&self.switch_netns) {
            return;
        }
        for port in 0..CABLING.len() {
            let end = self.switch_end(port);
            // Absent already is fine: this only makes sure no end of this index lingers.
            let _ = run(Command::new("ip").args(["-n", &self.switch_netns, "link", "del", &end]));
        }
    }

    fn cable(&self, fabric: &Fabric) -> Result<()> {
        self.remove_switch_ends();
        netns::add(&self.netns)?;
        run(Command::new("ip").args(["-n", &self.netns, "link", "set", "lo", "up"]))?;
        let switch = fabric.netns();
        let mgmt_mac = self.mgmt_mac();
        fabric.reserve_mgmt_address(&self.netns, &mgmt_mac, &self.address())?;
        for (port, (nic, bridge, _)) in CABLING.iter().enumerate() {
            let switch_end = self.switch_end(port);
            let mut add = Command::new("ip");
            add.args([
                "-n",
                switch,
                "link",
                "add",
                &switch_end,
                "type",
                "veth",
                "peer",
                "name",
                nic,
            ]);
            if port == 0 {
                add.args(["address", &mgmt_mac]);
            }
            run(add.args(["netns", &self.netns]))?;
            run(Command::new("ip").args(["-n", switch, "link", "set", &switch_end, "master", bridge, "up"]))?;
        }
        Ok(())
    }

    fn write_dbus_config(&self) -> Result<()> {
        // A system-type bus that allows everything; only root can reach it (the directory is
        // private), and NetworkManager runs with polkit off.
        let config = format!(
            r#"<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>{}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <allow own="*"/>
    <allow send_type="method_call"/>
    <allow send_type="signal"/>
    <allow send_type="method_return"/>
    <allow send_type="error"/>
    <allow receive_type="method_call"/>
    <allow receive_type="signal"/>
    <allow receive_type="method_return"/>
    <allow receive_type="error"/>
  </policy>
</busconfig>
"#,
            self.bus_address()
        );
        let dir = self.dir.join("dbus");
        set_mode(&dir, 0o700)?;
        write(&dir.join("system.conf"), &config, 0o644)
    }

    fn write_network_manager_config(&self) -> Result<()> {
        let nm = self.dir.join("nm");
        // `unmanaged-devices` does what NetworkManager's udev rule (85-nm-unmanaged.rules) does on
        // a real node, where a node here has no udev: veths not named eth* (the pods' ends of
        // the pod network) are left alone. Managed, they would be disconnected by the rollback
        // of any checkpoint taken before their pod started, cutting the pod off.
        let conf = format!(
            "# written by localenv\n[main]\nplugins=keyfile\ndhcp=internal\ndns=default\nrc-manager=file\n\
             systemd-resolved=false\nhostname-mode=none\nauth-polkit=false\nno-auto-default=*\n\
             firewall-backend=none\n\n[keyfile]\npath={profiles}\n\
             unmanaged-devices=driver:veth,except:interface-name:eth*\n\n[connectivity]\nenabled=false\n\n\
             [logging]\nlevel=INFO\n",
            profiles = self.profiles_dir().display()
        );
        write(&nm.join("etc/NetworkManager.conf"), &conf, 0o644)?;
        // The primary NIC, as a real node has it: a static address, the default route and DNS.
        let eth0 = format!(
            "[connection]\nid=eth0\ntype=ethernet\ninterface-name=eth0\nautoconnect=true\n\n\
             [ipv4]\nmethod=manual\naddress1={address}/24,{MGMT_GATEWAY}\ndns={MGMT_GATEWAY};\n\
             dns-search={DNS_DOMAIN};\n\n[ipv6]\nmethod=disabled\n",
            address = self.address()
        );
        // NetworkManager ignores keyfiles that others can read.
        write(&self.profiles_dir().join("eth0.nmconnection"), &eth0, 0o600)?;
        let d = nm.display();
        let script = format!(
            r#"#!/bin/sh
# Runs in the node's network namespace, in a new mount and UTS namespace, then becomes
# NetworkManager (same pid).
set -e
mount --bind /sys/class/net /sys/class/net
mount --bind /sys/devices/virtual/net /sys/devices/virtual/net
mount -o remount,bind,ro /sys
mount -t overlay localenv-etc -o lowerdir=/etc,upperdir={d}/etc-upper,workdir={d}/etc-work /etc
mount --bind {d}/etc /etc/NetworkManager
echo {name} > /etc/hostname
mount -t tmpfs -o mode=755 localenv-run /run
mkdir -p /run/NetworkManager
mount --bind {d}/run /run/NetworkManager
mount --bind {d}/lib /var/lib/NetworkManager
hostname {name}
# --debug: its log goes to stderr (NetworkManager.log) as well as to syslog, which nothing reads here.
exec NetworkManager --debug --log-level=INFO \
  --config={d}/etc/NetworkManager.conf --config-dir={d}/etc/conf.d \
  --system-config-dir={d}/etc/conf.d --intern-config={d}/lib/NetworkManager-intern.conf \
  --state-file={d}/lib/NetworkManager.state --pid-file={d}/run/NetworkManager.pid
"#,
            name = self.name
        );
        write(&nm.join("start-inner.sh"), &script, 0o755)
    }
}

fn write(path: &Path, content: &str, mode: u32) -> Result<()> {
    std::fs::write(path, content).map_err(LocalEnvError::io("write", path))?;
    set_mode(path, mode)
}

fn set_mode(path: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(LocalEnvError::io("chmod", path))
}

fn wait_for(mut condition: impl FnMut() -> bool, timeout: Duration) -> bool {
    let deadline = std::time::Instant::now() + timeout;
    while std::time::Instant::now() < deadline {
        if condition() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    condition()
}
