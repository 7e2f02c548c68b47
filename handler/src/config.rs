//! The handler's settings, from its environment (as upstream's DaemonSet sets them).

use crate::{apply::probes, network::filter::ReportRules};
use nmstate_api::{
    labels,
    nmstate::{DEFAULT_DNS_PROBE_HOST, DEFAULT_MAX_STATE_BYTES, MAX_MAX_STATE_BYTES, MIN_MAX_STATE_BYTES},
};
use std::{collections::BTreeMap, time::Duration};

/// Where the DaemonSet mounts the per-node lock that keeps a second handler (e.g. from another
/// install) from touching the node at the same time.
pub const DEFAULT_LOCK_FILE: &str = "/var/k8s_nmstate/handler_lock";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error(
        "NODE_NAME is not set: the handler must know which node it runs on. The DaemonSet sets it \
         from the downward API (fieldRef spec.nodeName); when running by hand, export NODE_NAME=<node>"
    )]
    MissingNodeName,
    #[error("{variable}={value:?} is not valid: expected {expected}")]
    Invalid {
        variable: &'static str,
        value: String,
        expected: &'static str,
    },
}

/// Everything the handler reads from its environment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HandlerConfig {
    /// `NODE_NAME`: the node this handler manages.
    pub node_name: String,
    /// `NMSTATE_INSTANCE_NODE_LOCK_FILE`.
    pub lock_file: String,
    /// `PROBE_DNS_HOST` (the name the DNS probe resolves) and `PROBE_TIMEOUT_SECONDS` (how long
    /// each probe may take to pass after a change): the probes of a policy that does not set them.
    pub probe_defaults: probes::Defaults,
    /// `NNCP_MAX_RETRIES`: applies of one policy generation before it is marked failed.
    pub max_retries: u32,
    /// `NNCP_INITIAL_BACKOFF_SECONDS`.
    pub initial_backoff: Duration,
    /// `NNCP_MAX_BACKOFF_SECONDS`.
    pub max_backoff: Duration,
    /// `POD_NAMESPACE` (fallback `HANDLER_NAMESPACE`): where handler pods run.
    pub pod_namespace: Option<String>,
    /// `app.kubernetes.io/*` labels for the objects the handler creates, from `COMPONENT`,
    /// `PART_OF`, `VERSION` and `MANAGED_BY` (the DaemonSet copies its own labels there).
    pub relationship_labels: BTreeMap<String, String>,
    /// `ENABLE_PROFILER` and `PROFILER_PORT` (default 6060): where profiles are served, if at all.
    pub profiler_port: Option<u16>,
    /// `NETWORK_READINESS` (`true` turns the network-ready gate on) and `NETWORK_STARTUP_TAINT`
    /// (the taint it removes): the operator sets them from `NMState.spec.networkReadiness`.
    pub network_readiness: Option<nmstate_api::nmstate::NetworkReadiness>,
    /// `NNS_EXCLUDE_INTERFACES` and `NNS_EXCLUDE_TYPES` (comma-separated patterns) and
    /// `NNS_MAX_BYTES`: what the NodeNetworkState leaves out and its size cap; the operator sets
    /// them from `NMState.spec.stateReporting`.
    pub report: ReportRules,
    /// `LEASE_DURATION_SECONDS` (default 30): how long the handler's heartbeat and its slots in
    /// policy rollouts stay valid without renewal, i.e. how soon a dead or stalled handler's
    /// slot is given to another node.
    pub lease_duration: Duration,
    /// `NNS_CHECK_INTERVAL_SECONDS` (default 60): how often the node state's safety net looks
    /// for what NetworkManager does not signal (whether the kernel notified a change).
    pub state_check_interval: Duration,
}

/// Where the handler's Leases live when neither `POD_NAMESPACE` nor `HANDLER_NAMESPACE` is set
/// (upstream's default handler namespace).
pub const DEFAULT_NAMESPACE: &str = nmstate_api::names::DEFAULT_NAMESPACE;

impl HandlerConfig {
    /// The namespace of the handler's Leases: its own.
    pub fn lease_namespace(&self) -> &str {
        self.pod_namespace.as_deref().unwrap_or(DEFAULT_NAMESPACE)
    }
}

impl HandlerConfig {
    /// Reads the settings through `lookup` (`std::env::var` in the binary), so the rules are
    /// testable without touching the process environment.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let get = |name: &str| lookup(name).filter(|value| !value.trim().is_empty());
        let node_name = get("NODE_NAME").ok_or(ConfigError::MissingNodeName)?;
        let seconds = |variable: &'static str, default: u64| -> Result<Duration, ConfigError> {
            number(variable, get(variable), default).map(Duration::from_secs)
        };
        let config = HandlerConfig {
            node_name,
            lock_file: get("NMSTATE_INSTANCE_NODE_LOCK_FILE")
                .unwrap_or_else(|| DEFAULT_LOCK_FILE.to_string()),
            probe_defaults: probes::Defaults {
                timeout: seconds("PROBE_TIMEOUT_SECONDS", probes::DEFAULT_TIMEOUT.as_secs())?,
                dns_host: get("PROBE_DNS_HOST").unwrap_or_else(|| DEFAULT_DNS_PROBE_HOST.to_string()),
            },
            max_retries: number("NNCP_MAX_RETRIES", get("NNCP_MAX_RETRIES"), 5)?,
            initial_backoff: seconds("NNCP_INITIAL_BACKOFF_SECONDS", 1)?,
            max_backoff: seconds("NNCP_MAX_BACKOFF_SECONDS", 30)?,
            pod_namespace: get("POD_NAMESPACE").or_else(|| get("HANDLER_NAMESPACE")),
            relationship_labels: [
                ("COMPONENT", labels::APP_COMPONENT),
                ("PART_OF", labels::APP_PART_OF),
                ("VERSION", labels::APP_VERSION),
                ("MANAGED_BY", labels::APP_MANAGED_BY),
            ]
            .into_iter()
            .filter_map(|(variable, label)| get(variable).map(|value| (label.to_string(), value)))
            .collect(),
            profiler_port: match boolean("ENABLE_PROFILER", get("ENABLE_PROFILER"))? {
                true => Some(number("PROFILER_PORT", get("PROFILER_PORT"), 6060)?),
                false => None,
            },
            lease_duration: seconds("LEASE_DURATION_SECONDS", 30)?,
            state_check_interval: seconds("NNS_CHECK_INTERVAL_SECONDS", 60)?.max(Duration::from_secs(1)),
            network_readiness: boolean("NETWORK_READINESS", get("NETWORK_READINESS"))?.then(|| {
                nmstate_api::nmstate::NetworkReadiness {
                    startup_taint: get("NETWORK_STARTUP_TAINT"),
                }
            }),
            report: ReportRules {
                exclude_interfaces: patterns("NNS_EXCLUDE_INTERFACES", get("NNS_EXCLUDE_INTERFACES"))?,
                exclude_types: patterns("NNS_EXCLUDE_TYPES", get("NNS_EXCLUDE_TYPES"))?,
                max_bytes: number(
                    "NNS_MAX_BYTES",
                    get("NNS_MAX_BYTES"),
                    DEFAULT_MAX_STATE_BYTES as usize,
                )?,
            },
        };
        if !(MIN_MAX_STATE_BYTES as usize..=MAX_MAX_STATE_BYTES as usize).contains(&config.report.max_bytes) {
            return Err(ConfigError::Invalid {
                variable: "NNS_MAX_BYTES",
                value: config.report.max_bytes.to_string(),
                expected: "a number of bytes from 32768 to 1048576",
            });
        }
        if config.lease_duration < Duration::from_secs(2) {
            return Err(ConfigError::Invalid {
                variable: "LEASE_DURATION_SECONDS",
                value: config.lease_duration.as_secs().to_string(),
                expected: "at least 2 seconds",
            });
        }
        if config.max_backoff < config.initial_backoff {
            return Err(ConfigError::Invalid {
                variable: "NNCP_MAX_BACKOFF_SECONDS",
                value: config.max_backoff.as_secs().to_string(),
                expected: "a number of seconds not below NNCP_INITIAL_BACKOFF_SECONDS",
            });
        }
        Ok(config)
    }
}

/// A boolean as Go's `strconv.ParseBool` reads it (upstream reads these variables with Go).
fn boolean(variable: &'static str, value: Option<String>) -> Result<bool, ConfigError> {
    match value.as_deref().map(str::trim) {
        None => Ok(false),
        Some("1" | "t" | "T" | "true" | "TRUE" | "True") => Ok(true),
        Some("0" | "f" | "F" | "false" | "FALSE" | "False") => Ok(false),
        Some(_) => Err(ConfigError::Invalid {
            variable,
            value: value.unwrap_or_default(),
            expected: "true or false",
        }),
    }
}

/// Comma-separated shell-style patterns; none when unset.
fn patterns(variable: &'static str, value: Option<String>) -> Result<Vec<glob::Pattern>, ConfigError> {
    let Some(value) = value else {
        return Ok(Vec::new());
    };
    value
        .split(',')
        .map(str::trim)
        .filter(|pattern| !pattern.is_empty())
        .map(|pattern| {
            glob::Pattern::new(pattern).map_err(|error| ConfigError::Invalid {
                variable,
                value: format!("{value} ({pattern}: {})", error.msg),
                expected: "comma-separated shell-style patterns (`*` any characters, `?` one)",
            })
        })
        .collect()
}

fn number<T: std::str::FromStr>(
    variable: &'static str,
    value: Option<String>,
    default: T,
) -> Result<T, ConfigError> {
    match value {
        None => Ok(default),
        Some(value) => value.trim().parse().map_err(|_| ConfigError::Invalid {
            variable,
            value,
            expected: "a non-negative whole number",
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn config(pairs: &[(&str, &str)]) -> Result<HandlerConfig, ConfigError> {
        let env: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        HandlerConfig::from_lookup(|name| env.get(name).cloned())
    }

    #[test]
    fn node_name_is_required_and_the_error_says_how_to_set_it() {
        let error = config(&[]).unwrap_err();
        assert_eq!(error, ConfigError::MissingNodeName);
        assert!(error.to_string().contains("export NODE_NAME=<node>"));
        assert_eq!(
            config(&[("NODE_NAME", "  ")]).unwrap_err(),
            ConfigError::MissingNodeName
        );
    }

    #[test]
    fn defaults_are_upstreams() {
        let config = config(&[("NODE_NAME", "node01")]).unwrap();
        assert_eq!(config.lock_file, DEFAULT_LOCK_FILE);
        assert_eq!(config.probe_defaults.dns_host, "root-servers.net");
        assert_eq!(config.probe_defaults.timeout, Duration::from_secs(120));
        assert_eq!(config.max_retries, 5);
        assert_eq!(config.initial_backoff, Duration::from_secs(1));
        assert_eq!(config.max_backoff, Duration::from_secs(30));
        assert_eq!(config.pod_namespace, None);
        assert!(config.relationship_labels.is_empty());
        assert_eq!(config.profiler_port, None);
        assert_eq!(config.lease_duration, Duration::from_secs(30));
        assert_eq!(config.state_check_interval, Duration::from_secs(60));
        assert_eq!(config.lease_namespace(), DEFAULT_NAMESPACE);
        assert_eq!(config.network_readiness, None);
        assert_eq!(config.report, ReportRules::default());
        assert_eq!(config.report.max_bytes, 921_600);
    }

    #[test]
    fn state_reporting_rules_are_read_and_bad_ones_named() {
        let config = config(&[
            ("NODE_NAME", "n"),
            ("NNS_EXCLUDE_INTERFACES", "mv-*, veth?"),
            ("NNS_EXCLUDE_TYPES", "vxlan"),
            ("NNS_MAX_BYTES", "65536"),
        ])
        .unwrap();
        let patterns = |patterns: &[glob::Pattern]| {
            patterns
                .iter()
                .map(|p| p.as_str().to_string())
                .collect::<Vec<_>>()
        };
        assert_eq!(patterns(&config.report.exclude_interfaces), ["mv-*", "veth?"]);
        assert_eq!(patterns(&config.report.exclude_types), ["vxlan"]);
        assert_eq!(config.report.max_bytes, 65_536);

        let error =
            super::tests::config(&[("NODE_NAME", "n"), ("NNS_EXCLUDE_INTERFACES", "eth[")]).unwrap_err();
        assert!(
            error
                .to_string()
                .starts_with("NNS_EXCLUDE_INTERFACES=\"eth[ (eth[: "),
            "{error}"
        );
        for cap in ["1000", "2000000"] {
            let error = super::tests::config(&[("NODE_NAME", "n"), ("NNS_MAX_BYTES", cap)]).unwrap_err();
            assert!(error.to_string().contains("from 32768 to 1048576"), "{error}");
        }
    }

    #[test]
    fn the_profiler_is_off_unless_enabled() {
        let enabled = |pairs: &[(&str, &str)]| {
            let mut env = vec![("NODE_NAME", "n")];
            env.extend_from_slice(pairs);
            config(&env).map(|config| config.profiler_port)
        };
        assert_eq!(enabled(&[("PROFILER_PORT", "7070")]), Ok(None));
        assert_eq!(enabled(&[("ENABLE_PROFILER", "True")]), Ok(Some(6060)));
        assert_eq!(
            enabled(&[("ENABLE_PROFILER", "1"), ("PROFILER_PORT", "7070")]),
            Ok(Some(7070))
        );
        assert_eq!(enabled(&[("ENABLE_PROFILER", "false")]), Ok(None));
        assert!(enabled(&[("ENABLE_PROFILER", "yes")]).is_err());
        assert!(enabled(&[("ENABLE_PROFILER", "true"), ("PROFILER_PORT", "70000")]).is_err());
    }

    #[test]
    fn relationship_labels_come_from_the_pods_own_labels() {
        let config = config(&[
            ("NODE_NAME", "n"),
            ("PART_OF", "kubernetes-nmstate"),
            ("VERSION", ""),
        ])
        .unwrap();
        assert_eq!(
            config.relationship_labels,
            BTreeMap::from([(
                "app.kubernetes.io/part-of".to_string(),
                "kubernetes-nmstate".to_string()
            )])
        );
    }

    #[test]
    fn values_are_read_and_bad_numbers_are_named() {
        let config = config(&[
            ("NODE_NAME", "node01"),
            ("NNCP_MAX_RETRIES", "2"),
            ("NNCP_MAX_BACKOFF_SECONDS", "4"),
            ("HANDLER_NAMESPACE", "nmstate"),
        ])
        .unwrap();
        assert_eq!(
            (config.max_retries, config.max_backoff),
            (2, Duration::from_secs(4))
        );
        assert_eq!(config.pod_namespace.as_deref(), Some("nmstate"));

        let error = super::tests::config(&[("NODE_NAME", "n"), ("NNCP_MAX_RETRIES", "five")]).unwrap_err();
        assert!(
            error
                .to_string()
                .starts_with("NNCP_MAX_RETRIES=\"five\" is not valid"),
            "{error}"
        );
        let error =
            super::tests::config(&[("NODE_NAME", "n"), ("NNCP_MAX_BACKOFF_SECONDS", "0")]).unwrap_err();
        assert!(
            error.to_string().contains("NNCP_INITIAL_BACKOFF_SECONDS"),
            "{error}"
        );
    }
}
