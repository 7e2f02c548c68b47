//! The "switch" every sandbox node is cabled to: one network namespace with three bridges and
//! a dnsmasq serving DHCP and DNS on them.
//!
//! | bridge  | gateway (dnsmasq) | node NIC | addresses                                       |
//! |---------|-------------------|----------|-------------------------------------------------|
//! | br-mgmt | 10.77.0.1         | eth0     | static 10.77.0.(10+index), default route, DNS;  |
//! |         |                   |          | DHCP reserves the same address for eth0's MAC   |
//! | br-net1 | 10.77.1.1         | eth1     | DHCPv4 .100-.199, RA + DHCPv6 in fd00:77:1::/64 |
//! | br-net2 | 10.77.2.1         | eth2     | DHCPv4 .100-.199, RA + DHCPv6 in fd00:77:2::/64 |
//!
//! eth0 is the node's primary NIC, like a real node's, so policies can reconfigure eth1 and
//! eth2 without cutting the node off. The secondary networks hand out no default route. On the
//! management network DHCP only answers a node's eth0 MAC (each node reserves its address when
//! it is cabled), with the node's own address and the default route, as a real cluster's DHCP
//! reservations do: a bridge that takes over eth0 and its MAC (`capture-default-bridge`) keeps
//! the node's address.
//!
//! The API server is served on the management gateway, `https://10.77.0.1:6443` (a socat
//! forwarding to the control plane's unix socket), so nodes reach it over eth0 like a kubelet
//! does: a change that cuts a node's network also cuts it off the API server.
//!
//! For real kubelets ([`Workloads::Kubelets`]) the switch is also the pods' router (a route to
//! each node's pod CIDR via its eth0) and the API server's way in: its advertised port is
//! served on the gateway too (the `kubernetes` Service's endpoint), and an HTTP CONNECT proxy
//! ([`crate::egress`]) carries its calls to webhooks and kubelets.

use crate::{
    control_plane::{ControlPlane, NODE_API_PORT, Workloads},
    daemon::{Daemon, run},
    error::{LocalEnvError, Result},
    netns,
};
use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

pub const MGMT_GATEWAY: &str = "10.77.0.1";
pub const DNS_DOMAIN: &str = "sandbox.test";
/// A name the fabric's DNS resolves (to the management gateway).
pub const GATEWAY_NAME: &str = "gw.sandbox.test";

/// The bridge and IPv4 gateway each node NIC is cabled to.
pub const CABLING: [(&str, &str, &str); 3] = [
    ("eth0", "br-mgmt", "10.77.0.1"),
    ("eth1", "br-net1", "10.77.1.1"),
    ("eth2", "br-net2", "10.77.2.1"),
];

#[derive(Clone, Debug)]
pub struct Fabric {
    dir: PathBuf,
    netns: String,
}

impl Fabric {
    pub fn new(env_dir: &Path, prefix: &str) -> Self {
        Fabric {
            dir: env_dir.join("fabric"),
            netns: format!("{prefix}-sw"),
        }
    }

    pub fn netns(&self) -> &str {
        &self.netns
    }

    fn dnsmasq(&self) -> Daemon {
        Daemon::new("dnsmasq", "dnsmasq", &self.dir)
    }

    /// dnsmasq reads every file here when it appears (inotify): one reservation per node.
    fn reservations_dir(&self) -> PathBuf {
        self.dir.join("mgmt-reservations")
    }

    /// Reserves `address` on the management network for the NIC with `mac` (file `node`).
    pub fn reserve_mgmt_address(&self, node: &str, mac: &str, address: &str) -> Result<()> {
        let path = self.reservations_dir().join(node);
        std::fs::write(&path, format!("{mac},{address}\n")).map_err(LocalEnvError::io("write", &path))
    }

    fn api_forwarder(&self) -> Daemon {
        Daemon::new("api-forwarder", "socat", &self.dir)
    }

    /// The API server's own port on the gateway, for pods (the `kubernetes` Service).
    fn advertised_api_forwarder(&self) -> Daemon {
        Daemon::new("api-forwarder-advertised", "socat", &self.dir)
    }

    fn egress_proxy(&self) -> Daemon {
        Daemon::new("egress-proxy", "localenv", &self.dir)
    }

    fn kubelet_daemons(&self) -> [Daemon; 2] {
        [self.advertised_api_forwarder(), self.egress_proxy()]
    }

    pub fn is_running(&self) -> bool {
        netns::exists(&self.netns)
            && self.dnsmasq().running_pid().is_some()
            && self.api_forwarder().running_pid().is_some()
    }

    /// Creates the switch (idempotent: a running one is left alone, a broken one rebuilt) with
    /// what `control_plane`'s workloads need.
    pub fn ensure(&self, control_plane: &ControlPlane) -> Result<()> {
        let kubelets = control_plane.workloads() == Workloads::Kubelets;
        let running = self.is_running()
            && (!kubelets
                || self
                    .kubelet_daemons()
                    .iter()
                    .all(|daemon| daemon.running_pid().is_some()));
        if running {
            return Ok(());
        }
        self.stop()?;
        let api_socket = control_plane.api_socket();
        let reservations = self.reservations_dir();
        std::fs::create_dir_all(&reservations).map_err(LocalEnvError::io("create", &reservations))?;
        netns::add(&self.netns)?;
        let ns = self.netns.as_str();
        run(Command::new("ip").args(["-n", ns, "link", "set", "lo", "up"]))?;
        for (index, (_, bridge, gateway)) in CABLING.iter().enumerate() {
            // A fixed MAC: a bridge otherwise takes its lowest port's, which changes as nodes
            // come and go and leaves the other nodes' ARP entries for the gateway stale.
            let mac = format!("02:77:00:00:00:{index:02x}");
            run(
                Command::new("ip").args(["-n", ns, "link", "add", bridge, "address", &mac, "type", "bridge"])
            )?;
            run(Command::new("ip").args(["-n", ns, "addr", "add", &format!("{gateway}/24"), "dev", bridge]))?;
            if index > 0 {
                let gateway6 = format!("fd00:77:{index}::1/64");
                run(Command::new("ip").args(["-n", ns, "addr", "add", &gateway6, "dev", bridge, "nodad"]))?;
            }
            run(Command::new("ip").args(["-n", ns, "link", "set", bridge, "up"]))?;
        }
        let dnsmasq = self.dnsmasq();
        dnsmasq.spawn(self.dnsmasq_command())?;
        let api_forwarder = self.api_forwarder();
        api_forwarder.spawn(self.api_forward(NODE_API_PORT, &api_socket))?;
        if kubelets {
            self.start_kubelet_parts(control_plane)?;
        }
        std::thread::sleep(Duration::from_millis(200));
        dnsmasq.check_running()?;
        api_forwarder.check_running()?;
        if kubelets {
            for daemon in self.kubelet_daemons() {
                daemon.check_running()?;
            }
        }
        Ok(())
    }

    /// Forwarding on (in this namespace only), the API server's own port on the gateway and
    /// the egress proxy.
    fn start_kubelet_parts(&self, control_plane: &ControlPlane) -> Result<()> {
        let ns = self.netns.as_str();
        run(Command::new("ip").args(["netns", "exec", ns, "sysctl", "-qw", "net.ipv4.ip_forward=1"]))?;
        let port = control_plane
            .endpoints()
            .ok_or_else(|| LocalEnvError::ClusterDown {
                dir: control_plane.dir().to_path_buf(),
            })?
            .apiserver_port;
        self.advertised_api_forwarder()
            .spawn(self.api_forward(port, &control_plane.api_socket()))?;
        let mut proxy = Command::new("ip");
        proxy
            .args(["netns", "exec", ns])
            .arg(crate::localenv_program())
            .arg("egress-proxy")
            .arg("--socket")
            .arg(control_plane.egress_socket());
        self.egress_proxy().spawn(proxy)?;
        Ok(())
    }

    /// socat serving the control plane's unix socket `api_socket` on the gateway's `port`.
    /// `nodelay`, as Go's servers and clients set it: socat writes an answer on as the pieces
    /// come in, and with Nagle's algorithm a second small piece waited for the node's delayed
    /// ACK, 40 ms (in about one rollout handoff of ten at N = 8, a node's GET answered by the API
    /// server in 2 ms reached the handler 42 ms later).
    fn api_forward(&self, port: u16, api_socket: &Path) -> Command {
        let mut forward = Command::new("ip");
        forward
            .args(["netns", "exec", &self.netns, "socat"])
            .arg(format!(
                "TCP-LISTEN:{port},bind={MGMT_GATEWAY},fork,reuseaddr,nodelay"
            ))
            .arg(format!("UNIX-CONNECT:{}", api_socket.display()));
        forward
    }

    /// Routes `pod_cidr` to the node at `node_address` (its eth0).
    pub fn route_pods(&self, pod_cidr: &str, node_address: &str) -> Result<()> {
        run(Command::new("ip").args([
            "-n",
            &self.netns,
            "route",
            "replace",
            pod_cidr,
            "via",
            node_address,
        ]))?;
        Ok(())
    }

    fn dnsmasq_command(&self) -> Command {
        let mut command = Command::new("ip");
        command.args([
            "netns",
            "exec",
            &self.netns,
            "dnsmasq",
            "--keep-in-foreground",
            "--log-facility=-",
        ]);
        // No config file, no upstream servers, no /etc/hosts: only what is declared here.
        command.args([
            "--conf-file=/dev/null",
            "--no-resolv",
            "--no-hosts",
            "--bind-interfaces",
        ]);
        command.args([
            "--except-interface=lo",
            "--user=root",
            "--group=root",
            "--log-dhcp",
        ]);
        command.args(["--dhcp-authoritative", "--no-ping", "--enable-ra"]);
        command.arg(format!("--dhcp-leasefile={}", self.dir.join("leases").display()));
        let listen: Vec<&str> = CABLING.iter().map(|(_, _, gateway)| *gateway).collect();
        command.arg(format!("--listen-address={}", listen.join(",")));
        for (index, (_, bridge, gateway)) in CABLING.iter().enumerate() {
            command.arg(format!("--interface={bridge}"));
            let subnet = gateway.rsplit_once('.').map_or(*gateway, |(subnet, _)| subnet);
            if index == 0 {
                // Reserved addresses only; dnsmasq is the router and name server.
                command.arg(format!(
                    "--dhcp-range=set:mgmt,{subnet}.0,static,255.255.255.0,1h"
                ));
                command.arg(format!("--dhcp-hostsdir={}", self.reservations_dir().display()));
                continue;
            }
            let tag = format!("net{index}");
            command.arg(format!(
                "--dhcp-range=set:{tag},{subnet}.100,{subnet}.199,255.255.255.0,1h"
            ));
            command.arg(format!(
                "--dhcp-range=set:{tag},fd00:77:{index}::100,fd00:77:{index}::1ff,64,1h"
            ));
            // Secondary networks: no default route (IPv4: no router option; IPv6: router
            // advertisements with a zero router lifetime), DNS from the management gateway.
            command.arg(format!("--dhcp-option=tag:{tag},option:router"));
            command.arg(format!("--ra-param={bridge},10,0"));
            command.arg(format!(
                "--dhcp-option=tag:{tag},option:dns-server,{MGMT_GATEWAY}"
            ));
        }
        command.arg(format!("--domain={DNS_DOMAIN}"));
        command.arg(format!("--local=/{DNS_DOMAIN}/"));
        command.arg(format!("--host-record={GATEWAY_NAME},{MGMT_GATEWAY}"));
        command
    }

    /// Stops dnsmasq and the API forwarder (by pid) and deletes the switch namespace with
    /// everything in it.
    pub fn stop(&self) -> Result<()> {
        for daemon in self.kubelet_daemons() {
            daemon.stop(Duration::from_secs(5));
        }
        self.api_forwarder().stop(Duration::from_secs(5));
        self.dnsmasq().stop(Duration::from_secs(5));
        netns::delete(&self.netns)?;
        if self.dir.exists() {
            std::fs::remove_dir_all(&self.dir).map_err(LocalEnvError::io("remove", &self.dir))?;
        }
        Ok(())
    }
}
