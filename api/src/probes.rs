//! The checks a policy's change must pass on each node before it is committed: what a policy may
//! ask for (`spec.probes`), and what the enactment reports of each (`status.probes`).
//!
//! Left out, a policy gets upstream's probes: `ping` and `dns` when they pass before the change,
//! then `api-server` and `node-readiness`, each for up to 120 s (`NMState.spec.probeConfiguration`
//! sets the DNS name cluster-wide).

use crate::condition::wire_strings;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// How long each probe may keep failing unless the policy (`timeoutSeconds`) or the handler's
/// `PROBE_TIMEOUT_SECONDS` says otherwise: upstream's 120 s.
pub const DEFAULT_TIMEOUT_SECONDS: u32 = 120;

/// The longest `timeoutSeconds` a policy may set: the checkpoint NetworkManager rolls back by
/// itself lasts four times as long, and a node waits that long when its handler dies mid-apply.
pub const MAX_TIMEOUT_SECONDS: u32 = 900;
/// At most this many TCP probes per policy.
pub const MAX_TCP_PROBES: usize = 16;

/// A policy's probes. Every field is optional; what is left out keeps its default.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PolicyProbes {
    /// How long each probe may keep failing after the change before the change is rolled back,
    /// in seconds (1–900). Default: the handler's, 120.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = MAX_TIMEOUT_SECONDS))]
    pub timeout_seconds: Option<u32>,
    /// The ping of the default gateways: IPv4 (`ping`) and IPv6 (`ping6`) apart, each used only
    /// if it passes before the change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<GatewayProbe>,
    /// A DNS query through the node's name servers (`dns`), used only if it passes before the
    /// change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns: Option<DnsProbe>,
    /// TCP connections that must open after the change (`tcp <host>:<port>`), for networks that
    /// drop ICMP or DNS. Always run, even if one fails before the change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = MAX_TCP_PROBES))]
    pub tcp: Option<Vec<TcpProbe>>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct GatewayProbe {
    /// `false` turns the ping of both gateways off. Default `true`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct DnsProbe {
    /// `false` turns the DNS probe off. Default `true`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// The name to resolve. Default: `NMState.spec.probeConfiguration.dns.host`
    /// (`root-servers.net`, asked for its NS records; any other name is asked for an address).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub host: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct TcpProbe {
    /// An IP address, or a name the node resolves.
    #[schemars(length(min = 1, max = 253))]
    pub host: String,
    #[schemars(range(min = 1, max = 65535))]
    pub port: u16,
}

impl PolicyProbes {
    pub fn gateway_enabled(&self) -> bool {
        self.gateway.as_ref().and_then(|gateway| gateway.enabled) != Some(false)
    }

    pub fn dns_enabled(&self) -> bool {
        self.dns.as_ref().and_then(|dns| dns.enabled) != Some(false)
    }

    /// The DNS name the policy asks for, if it sets one.
    pub fn dns_host(&self) -> Option<&str> {
        self.dns.as_ref()?.host.as_deref()
    }
}

/// How one probe went in the last apply on a node.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProbeReport {
    /// The probe's name, as failure messages give it: `ping`, `ping6`, `dns`,
    /// `tcp <host>:<port>`, `api-server`, `node-readiness`.
    pub name: String,
    /// Whether it ran after the change. A probe is left out when the policy turns it off or,
    /// for `ping`, `ping6` and `dns`, when it fails before the change.
    pub selected: bool,
    /// `Passed`, `Failed`, or `NotRun` (an earlier probe failed first); absent when not
    /// selected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<String>,
    /// How long it took after the change, retries included.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_milliseconds: Option<u64>,
    /// Why it failed or was left out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

wire_strings! {
    /// The probes' names.
    ProbeName {
        /// The IPv4 default gateway answers a ping (upstream's name).
        Ping = "ping",
        /// The IPv6 default gateway answers a ping.
        Ping6 = "ping6",
        Dns = "dns",
        ApiServer = "api-server",
        NodeReadiness = "node-readiness",
    }
}

/// The name of the TCP probe to `host`:`port`.
pub fn tcp_probe_name(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("tcp [{host}]:{port}")
    } else {
        format!("tcp {host}:{port}")
    }
}

wire_strings! {
    /// [`ProbeReport::result`].
    ProbeResult {
        Passed = "Passed",
        Failed = "Failed",
        NotRun = "NotRun",
    }
}
