//! The operator's settings, from its environment (names as upstream's operator Deployment).

/// This release's handler image (every channel also sets `RELATED_IMAGE_HANDLER_IMAGE`).
pub const DEFAULT_HANDLER_IMAGE: &str = concat!(
    "quay.io/nmstate/kubernetes-nmstate-rs-handler:v",
    env!("CARGO_PKG_VERSION")
);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("{variable}={value:?} is not valid: expected {expected}")]
    Invalid {
        variable: &'static str,
        value: String,
        expected: &'static str,
    },
}

/// Everything the operator reads from its environment: the inputs of rendering besides the
/// NMState spec.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OperatorConfig {
    /// `HANDLER_NAMESPACE`: where the handler, webhook and certificates run.
    pub handler_namespace: String,
    /// `OPERATOR_NAMESPACE`: where the operator itself runs.
    pub operator_namespace: String,
    /// `MONITORING_NAMESPACE`: where Prometheus runs.
    pub monitoring_namespace: String,
    /// `RELATED_IMAGE_HANDLER_IMAGE`.
    pub handler_image: String,
    /// `HANDLER_IMAGE_PULL_POLICY`.
    pub handler_image_pull_policy: String,
    /// `HANDLER_PREFIX`: prepended (with `-`) to the names of rendered objects.
    pub handler_prefix: String,
    /// The handler settings the operator passes on when they are set in its own environment
    /// (as upstream): [`FORWARDED_TO_HANDLER`], in that order.
    pub handler_env: Vec<(String, String)>,
    /// `MANAGE_CRDS`: which CRDs the operator applies.
    pub crds: CrdManagement,
    /// `WEBHOOK_URL` (`https://<host>:<port>`): where the API server calls the webhook when it
    /// runs outside the cluster's Service network (a development environment without a
    /// kubelet or kube-proxy); by default the webhook configurations name the Service.
    pub webhook_url: Option<WebhookUrl>,
}

/// An out-of-cluster webhook address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WebhookUrl {
    pub host: String,
    pub port: u16,
}

impl WebhookUrl {
    fn parse(value: &str) -> Option<WebhookUrl> {
        let authority = value.strip_prefix("https://")?.trim_end_matches('/');
        let (host, port) = match authority.rsplit_once(':') {
            Some((host, port)) => (host, port.parse().ok()?),
            None => (authority, 443),
        };
        let valid = !host.is_empty() && !host.contains('/') && !host.contains('@');
        valid.then(|| WebhookUrl {
            host: host.to_string(),
            port,
        })
    }

    /// The URL of the webhook serving `path`.
    pub fn with_path(&self, path: &str) -> String {
        format!("https://{}:{}{path}", self.host, self.port)
    }
}

/// Which CRDs the operator applies (server-side, forced). Each CRD has one owner that upgrades
/// it, because two server-side appliers of one CRD refuse each other's changes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CrdManagement {
    /// `true` (the default, as upstream): the operand CRDs, on every reconcile.
    Operands,
    /// `false`: none; the installer owns them all (the OLM bundle, the plain manifest).
    None,
    /// `nmstate`: only its own, at start. The Helm chart upgrades the operand CRDs from its
    /// templates but can only install the NMState CRD once, from `crds/` (an NMState created by
    /// the same release needs its CRD before Helm builds the release).
    NMState,
}

/// The handler's probe timeout, one of [`FORWARDED_TO_HANDLER`]; the render reads it too.
pub const PROBE_TIMEOUT_SECONDS: &str = "PROBE_TIMEOUT_SECONDS";

/// Operator environment variables copied into the handler's.
pub const FORWARDED_TO_HANDLER: [&str; 4] = [
    "NNCP_MAX_RETRIES",
    "NNCP_INITIAL_BACKOFF_SECONDS",
    "NNCP_MAX_BACKOFF_SECONDS",
    PROBE_TIMEOUT_SECONDS,
];

impl OperatorConfig {
    /// What rendered names start with: `<HANDLER_PREFIX>-`, or nothing.
    pub fn name_prefix(&self) -> String {
        nmstate_api::names::operand_prefix(&self.handler_prefix)
    }

    /// The settings of an operator whose environment sets none of them.
    pub fn defaults() -> OperatorConfig {
        OperatorConfig {
            handler_namespace: "nmstate".into(),
            operator_namespace: "nmstate".into(),
            monitoring_namespace: "monitoring".into(),
            handler_image: DEFAULT_HANDLER_IMAGE.into(),
            handler_image_pull_policy: "IfNotPresent".into(),
            handler_prefix: String::new(),
            handler_env: Vec::new(),
            crds: CrdManagement::Operands,
            webhook_url: None,
        }
    }

    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let get = |name: &str| {
            lookup(name)
                .map(|value| value.trim().to_string())
                .filter(|value| !value.is_empty())
        };
        let defaults = OperatorConfig::defaults();
        let handler_namespace = get("HANDLER_NAMESPACE").unwrap_or(defaults.handler_namespace);
        let pull_policy = get("HANDLER_IMAGE_PULL_POLICY").unwrap_or(defaults.handler_image_pull_policy);
        if !["Always", "IfNotPresent", "Never"].contains(&pull_policy.as_str()) {
            return Err(ConfigError::Invalid {
                variable: "HANDLER_IMAGE_PULL_POLICY",
                value: pull_policy,
                expected: "Always, IfNotPresent or Never",
            });
        }
        let crds = match get("MANAGE_CRDS").as_deref() {
            None | Some("true") => CrdManagement::Operands,
            Some("false") => CrdManagement::None,
            Some("nmstate") => CrdManagement::NMState,
            Some(other) => {
                return Err(ConfigError::Invalid {
                    variable: "MANAGE_CRDS",
                    value: other.to_string(),
                    expected: "true, false or nmstate",
                });
            }
        };
        let webhook_url = match get("WEBHOOK_URL") {
            None => None,
            Some(value) => Some(WebhookUrl::parse(&value).ok_or(ConfigError::Invalid {
                variable: "WEBHOOK_URL",
                value,
                expected: "https://<host>[:<port>]",
            })?),
        };
        Ok(OperatorConfig {
            webhook_url,
            crds,
            operator_namespace: get("OPERATOR_NAMESPACE").unwrap_or_else(|| handler_namespace.clone()),
            monitoring_namespace: get("MONITORING_NAMESPACE").unwrap_or(defaults.monitoring_namespace),
            handler_image: get("RELATED_IMAGE_HANDLER_IMAGE").unwrap_or(defaults.handler_image),
            handler_image_pull_policy: pull_policy,
            handler_prefix: get("HANDLER_PREFIX").unwrap_or_default(),
            handler_env: FORWARDED_TO_HANDLER
                .iter()
                .filter_map(|name| get(name).map(|value| (name.to_string(), value)))
                .collect(),
            handler_namespace,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_follow_upstreams_manifests() {
        let config = OperatorConfig::from_lookup(|_| None).unwrap();
        assert_eq!(config.handler_namespace, "nmstate");
        assert_eq!(config.operator_namespace, "nmstate");
        assert_eq!(config.handler_image_pull_policy, "IfNotPresent");
        assert_eq!(config.handler_image, DEFAULT_HANDLER_IMAGE);
    }

    #[test]
    fn a_bad_pull_policy_is_named() {
        let error = OperatorConfig::from_lookup(|name| {
            (name == "HANDLER_IMAGE_PULL_POLICY").then(|| "Sometimes".into())
        })
        .unwrap_err();
        assert!(
            error.to_string().contains("Always, IfNotPresent or Never"),
            "{error}"
        );
    }
}
