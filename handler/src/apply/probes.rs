//! Checks that a node still works after a network change.
//!
//! [`plan`] decides, purely, which probes a policy gets from its `spec.probes` and the handler's
//! defaults; [`Probes::select`] keeps, of the probes that look outside the node (the gateways'
//! pings and DNS), those that pass before the change, all pre-checked at once; [`Probes::run`]
//! runs the selected probes after the change, all at once, each retried every second until it
//! passes or its timeout runs out, and reports each.

use crate::apply::external_probes::{self, Family};
use futures::{StreamExt, stream::FuturesUnordered};
use k8s_openapi::api::core::v1::{Namespace, Node};
use kube::{Api, Client};
use nmstate_api::probes::{PolicyProbes, ProbeName, ProbeReport, ProbeResult, tcp_probe_name};
use std::time::Duration;
use tokio::time::Instant;

/// Upstream's timeout for each probe.
pub const DEFAULT_TIMEOUT: Duration =
    Duration::from_secs(nmstate_api::probes::DEFAULT_TIMEOUT_SECONDS as u64);
const INTERVAL: Duration = Duration::from_secs(1);
/// One attempt may not take longer than this: a connection over a broken path hangs. It also
/// bounds the pre-check before the change.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);

/// What one probe checks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Check {
    /// The default gateway of this family answers a ping through its interface.
    Gateway(Family),
    /// One of the node's DNS servers resolves `host`.
    Dns { host: String },
    /// A TCP connection to `host`:`port` opens.
    Tcp { host: String, port: u16 },
    /// The API server answers (`GET /api/v1/namespaces/default`, as upstream).
    ApiServer,
    /// This node's `Ready` condition is `True`.
    NodeReadiness,
}

impl Check {
    /// The name messages and reports give it.
    pub fn name(&self) -> String {
        match self {
            Check::Gateway(Family::Ipv4) => ProbeName::Ping.to_string(),
            Check::Gateway(Family::Ipv6) => ProbeName::Ping6.to_string(),
            Check::Dns { .. } => ProbeName::Dns.to_string(),
            Check::Tcp { host, port } => tcp_probe_name(host, *port),
            Check::ApiServer => ProbeName::ApiServer.to_string(),
            Check::NodeReadiness => ProbeName::NodeReadiness.to_string(),
        }
    }
}

/// The handler's defaults, for what a policy leaves out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Defaults {
    pub timeout: Duration,
    pub dns_host: String,
}

/// Which probes a policy gets, before anything is checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    pub timeout: Duration,
    /// Each probe in the order they run, and whether it is used.
    pub probes: Vec<(Check, Use)>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Use {
    /// Used if one attempt passes before the change: a probe that never worked on this node
    /// would only cost its timeout and roll back a good change.
    IfPassingBefore,
    Always,
    /// Turned off by the policy.
    Off,
}

/// The probes `policy` asks for: by default upstream's (the gateway and DNS if they pass before
/// the change, then the API server and node readiness), with each gateway family apart; the
/// policy may turn the gateway and DNS off, name the DNS host, add TCP probes and set the timeout.
pub fn plan(policy: Option<&PolicyProbes>, defaults: &Defaults) -> Plan {
    let none = PolicyProbes::default();
    let policy = policy.unwrap_or(&none);
    let external = |enabled: bool| if enabled { Use::IfPassingBefore } else { Use::Off };
    let mut probes = vec![
        (Check::Gateway(Family::Ipv4), external(policy.gateway_enabled())),
        (Check::Gateway(Family::Ipv6), external(policy.gateway_enabled())),
        (
            Check::Dns {
                host: policy.dns_host().unwrap_or(&defaults.dns_host).to_string(),
            },
            external(policy.dns_enabled()),
        ),
    ];
    for tcp in policy.tcp.iter().flatten() {
        let check = Check::Tcp {
            host: tcp.host.clone(),
            port: tcp.port,
        };
        probes.push((check, Use::Always));
    }
    probes.push((Check::ApiServer, Use::Always));
    probes.push((Check::NodeReadiness, Use::Always));
    let timeout = policy
        .timeout_seconds
        .map_or(defaults.timeout, |seconds| Duration::from_secs(seconds.into()));
    Plan { timeout, probes }
}

/// Runs checks against the cluster and the node.
#[derive(Clone)]
pub struct Prober {
    pub client: Client,
    pub node: String,
}

impl Prober {
    /// One attempt of `check`.
    pub async fn check(&self, check: &Check) -> Result<(), String> {
        match check {
            Check::Gateway(family) => {
                external_probes::ping_default_gateway(*family, ATTEMPT_TIMEOUT / 2).await
            }
            Check::Dns { host } => {
                external_probes::resolve_through_node_servers(host, ATTEMPT_TIMEOUT / 2).await
            }
            Check::Tcp { host, port } => external_probes::connect(host, *port).await,
            Check::ApiServer => Api::<Namespace>::all(self.client.clone())
                .get("default")
                .await
                .map(|_| ())
                .map_err(|error| error.to_string()),
            Check::NodeReadiness => {
                let node = Api::<Node>::all(self.client.clone())
                    .get(&self.node)
                    .await
                    .map_err(|error| error.to_string())?;
                let ready = node
                    .status
                    .and_then(|status| status.conditions)
                    .unwrap_or_default()
                    .iter()
                    .any(|condition| condition.type_ == "Ready" && condition.status == "True");
                if ready {
                    Ok(())
                } else {
                    Err("the node is not Ready".to_string())
                }
            }
        }
    }

    /// One attempt, cut off after [`ATTEMPT_TIMEOUT`].
    async fn attempt(&self, check: &Check) -> Result<(), String> {
        match tokio::time::timeout(ATTEMPT_TIMEOUT, self.check(check)).await {
            Ok(result) => result,
            Err(_) => Err(format!("no answer within {} s", ATTEMPT_TIMEOUT.as_secs())),
        }
    }

    /// Retries `check` every second until it passes or `timeout` runs out; the last reason it
    /// failed.
    pub async fn run(&self, check: &Check, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        loop {
            let reason = match self.attempt(check).await {
                Ok(()) => return Ok(()),
                Err(reason) => reason,
            };
            if Instant::now() + INTERVAL >= deadline {
                return Err(reason);
            }
            tokio::time::sleep(INTERVAL).await;
        }
    }
}

/// One probe's outcome after the change, and how long it took.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Attempted {
    result: Result<(), String>,
    took: u64,
}

#[derive(Debug, PartialEq, Eq)]
enum Decision {
    /// Some probes are still needed to know.
    Running,
    Passed,
    /// The probe at this index fails, and none before it in the plan's order does.
    Failed(usize),
}

/// Whether the probes' outcomes so far decide the change, and how: the first failing probe in
/// the plan's order, once every selected probe before it is done; a failure further down waits
/// for those, so the probe named does not depend on which fails sooner (all of a cut-off node's
/// probes fail, at about the same time).
fn decided(selected: &[bool], outcomes: &[Option<Attempted>]) -> Decision {
    for (index, (selected, outcome)) in selected.iter().zip(outcomes).enumerate() {
        match outcome {
            _ if !selected => {}
            None => return Decision::Running,
            Some(Attempted { result: Err(_), .. }) => return Decision::Failed(index),
            Some(_) => {}
        }
    }
    Decision::Passed
}

/// What the enactment shows of one probe.
fn report(name: String, decision: &Result<(), String>, outcome: Option<Attempted>) -> ProbeReport {
    match (decision, outcome) {
        (Err(reason), _) => ProbeReport {
            name,
            selected: false,
            message: Some(reason.clone()),
            ..ProbeReport::default()
        },
        (Ok(()), None) => ProbeReport {
            name,
            selected: true,
            result: Some(ProbeResult::NotRun.to_string()),
            ..ProbeReport::default()
        },
        (Ok(()), Some(Attempted { result, took })) => {
            let (result, message) = match result {
                Ok(()) => (ProbeResult::Passed, None),
                Err(reason) => (ProbeResult::Failed, Some(reason)),
            };
            ProbeReport {
                name,
                selected: true,
                result: Some(result.to_string()),
                duration_milliseconds: Some(took),
                message,
            }
        }
    }
}

/// A probe that failed after the change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeFailure {
    pub probe: String,
    pub reason: String,
}

/// The probes of one apply, selected.
pub struct Probes {
    prober: Prober,
    timeout: Duration,
    /// Each probe of the plan; `Err` holds why it was left out.
    probes: Vec<(Check, Result<(), String>)>,
}

impl Probes {
    /// Pre-checks, all at once, the probes `plan` uses only if they pass before the change.
    pub async fn select(prober: Prober, plan: Plan) -> Self {
        let decided = plan.probes.into_iter().map(|(check, usage)| {
            let prober = &prober;
            async move {
                let decision = match usage {
                    Use::Always => Ok(()),
                    Use::Off => Err("turned off by the policy".to_string()),
                    Use::IfPassingBefore => prober
                        .attempt(&check)
                        .await
                        .map_err(|reason| format!("not used: it fails before the change: {reason}")),
                };
                if let Err(reason) = &decision {
                    tracing::info!(probe = %check.name(), "{reason}");
                }
                (check, decision)
            }
        });
        let probes = futures::future::join_all(decided).await;
        Probes {
            prober,
            timeout: plan.timeout,
            probes,
        }
    }

    /// How long each probe may take to pass after the change.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    fn selected(&self) -> impl Iterator<Item = &Check> {
        self.probes
            .iter()
            .filter(|(_, decision)| decision.is_ok())
            .map(|(check, _)| check)
    }

    /// Runs the selected probes all at once: a report of each probe, and the failure, if any.
    /// The failure is the first failing probe in the plan's order, as if they had run in turn
    /// ([`decided`]); the probes still running then are cut short and reported as not run.
    pub async fn run(&self) -> (Vec<ProbeReport>, Option<ProbeFailure>) {
        let mut outcomes: Vec<Option<Attempted>> = vec![None; self.probes.len()];
        let mut running: FuturesUnordered<_> = self
            .probes
            .iter()
            .enumerate()
            .filter(|(_, (_, decision))| decision.is_ok())
            .map(|(index, (check, _))| async move {
                tracing::debug!(probe = %check.name(), "probe");
                let started = Instant::now();
                let result = self.prober.run(check, self.timeout).await;
                let took = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
                (index, Attempted { result, took })
            })
            .collect();
        let selected: Vec<bool> = self.probes.iter().map(|(_, decision)| decision.is_ok()).collect();
        let mut failed = None;
        while let Some((index, attempted)) = running.next().await {
            outcomes[index] = Some(attempted);
            if let Decision::Failed(index) = decided(&selected, &outcomes) {
                failed = Some(index);
                break;
            }
        }
        drop(running);
        let failure = failed.and_then(|index| {
            let reason = outcomes[index].as_ref()?.result.as_ref().err()?;
            Some(ProbeFailure {
                probe: self.probes[index].0.name(),
                reason: reason.clone(),
            })
        });
        let reports = self
            .probes
            .iter()
            .zip(outcomes)
            .map(|((check, decision), outcome)| report(check.name(), decision, outcome))
            .collect();
        (reports, failure)
    }

    /// Waits, up to each probe's timeout, for the selected probes to pass again: after a
    /// rollback, so the state then reported is the settled one (as upstream).
    pub async fn settle(&self) {
        for check in self.selected() {
            let _ = self.prober.run(check, self.timeout).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nmstate_api::probes::{DnsProbe, GatewayProbe, TcpProbe};

    fn defaults() -> Defaults {
        Defaults {
            timeout: DEFAULT_TIMEOUT,
            dns_host: "root-servers.net".into(),
        }
    }

    fn dns(host: &str) -> Check {
        Check::Dns { host: host.into() }
    }

    #[test]
    fn a_policy_without_probes_gets_upstreams_with_each_gateway_family_apart() {
        let plan = plan(None, &defaults());
        assert_eq!(plan.timeout, DEFAULT_TIMEOUT);
        assert_eq!(
            plan.probes,
            vec![
                (Check::Gateway(Family::Ipv4), Use::IfPassingBefore),
                (Check::Gateway(Family::Ipv6), Use::IfPassingBefore),
                (dns("root-servers.net"), Use::IfPassingBefore),
                (Check::ApiServer, Use::Always),
                (Check::NodeReadiness, Use::Always),
            ]
        );
        let names: Vec<String> = plan.probes.iter().map(|(check, _)| check.name()).collect();
        assert_eq!(names, ["ping", "ping6", "dns", "api-server", "node-readiness"]);
        assert_eq!(self::plan(Some(&PolicyProbes::default()), &defaults()), plan);
    }

    #[test]
    fn a_policy_sets_the_timeout_turns_probes_off_names_the_dns_host_and_adds_tcp() {
        let table: [(PolicyProbes, Plan); 3] = [
            (
                PolicyProbes {
                    timeout_seconds: Some(30),
                    gateway: Some(GatewayProbe { enabled: Some(false) }),
                    ..PolicyProbes::default()
                },
                Plan {
                    timeout: Duration::from_secs(30),
                    probes: vec![
                        (Check::Gateway(Family::Ipv4), Use::Off),
                        (Check::Gateway(Family::Ipv6), Use::Off),
                        (dns("root-servers.net"), Use::IfPassingBefore),
                        (Check::ApiServer, Use::Always),
                        (Check::NodeReadiness, Use::Always),
                    ],
                },
            ),
            (
                PolicyProbes {
                    dns: Some(DnsProbe {
                        enabled: None,
                        host: Some("example.test".into()),
                    }),
                    tcp: Some(vec![
                        TcpProbe {
                            host: "10.0.0.1".into(),
                            port: 53,
                        },
                        TcpProbe {
                            host: "fd00::1".into(),
                            port: 443,
                        },
                    ]),
                    ..PolicyProbes::default()
                },
                Plan {
                    timeout: DEFAULT_TIMEOUT,
                    probes: vec![
                        (Check::Gateway(Family::Ipv4), Use::IfPassingBefore),
                        (Check::Gateway(Family::Ipv6), Use::IfPassingBefore),
                        (dns("example.test"), Use::IfPassingBefore),
                        (
                            Check::Tcp {
                                host: "10.0.0.1".into(),
                                port: 53,
                            },
                            Use::Always,
                        ),
                        (
                            Check::Tcp {
                                host: "fd00::1".into(),
                                port: 443,
                            },
                            Use::Always,
                        ),
                        (Check::ApiServer, Use::Always),
                        (Check::NodeReadiness, Use::Always),
                    ],
                },
            ),
            (
                PolicyProbes {
                    gateway: Some(GatewayProbe { enabled: Some(true) }),
                    dns: Some(DnsProbe {
                        enabled: Some(false),
                        host: Some("ignored.test".into()),
                    }),
                    ..PolicyProbes::default()
                },
                Plan {
                    timeout: DEFAULT_TIMEOUT,
                    probes: vec![
                        (Check::Gateway(Family::Ipv4), Use::IfPassingBefore),
                        (Check::Gateway(Family::Ipv6), Use::IfPassingBefore),
                        (dns("ignored.test"), Use::Off),
                        (Check::ApiServer, Use::Always),
                        (Check::NodeReadiness, Use::Always),
                    ],
                },
            ),
        ];
        for (policy, expected) in table {
            assert_eq!(plan(Some(&policy), &defaults()), expected, "{policy:?}");
        }
    }

    #[test]
    fn the_first_failing_probe_in_order_decides_once_those_before_it_are_done() {
        let passed = || {
            Some(Attempted {
                result: Ok(()),
                took: 1,
            })
        };
        let failed = || {
            Some(Attempted {
                result: Err("down".into()),
                took: 1,
            })
        };
        type Case<'a> = (&'a [bool], Vec<Option<Attempted>>, Decision);
        let all = [true, true, true];
        let table: [Case; 7] = [
            (&all, vec![None, None, None], Decision::Running),
            (&all, vec![passed(), passed(), None], Decision::Running),
            (&all, vec![passed(), passed(), passed()], Decision::Passed),
            (&all, vec![None, failed(), None], Decision::Running),
            (&all, vec![passed(), failed(), None], Decision::Failed(1)),
            (&all, vec![failed(), failed(), None], Decision::Failed(0)),
            (
                &[false, true, true],
                vec![None, passed(), failed()],
                Decision::Failed(2),
            ),
        ];
        for (selected, outcomes, expected) in table {
            assert_eq!(
                decided(selected, &outcomes),
                expected,
                "{selected:?} {outcomes:?}"
            );
        }
    }

    #[test]
    fn tcp_probes_are_named_by_their_address() {
        let tcp = |host: &str, port| Check::Tcp {
            host: host.into(),
            port,
        };
        assert_eq!(tcp("10.77.0.1", 53).name(), "tcp 10.77.0.1:53");
        assert_eq!(tcp("fd00:77::1", 443).name(), "tcp [fd00:77::1]:443");
        assert_eq!(tcp("gw.sandbox.test", 53).name(), "tcp gw.sandbox.test:53");
    }
}
