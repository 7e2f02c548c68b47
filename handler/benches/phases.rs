//! Where an apply's time goes, from the handler's phase lines (`nmstate_handler::phases`, at
//! debug) and the bench's own clock (the same machine's): for each run, the time from creating
//! the policy to the reconcile that applied it, each phase one after the other (and those that
//! ran beside them), the time between phases, and from the Available status written to the
//! bench seeing it.

use k8s_openapi::jiff::Timestamp;
use nmstate_handler::phases::{TARGET, names};
use std::{collections::BTreeMap, time::Duration};

/// One phase line of the handler's log: the phase, when it ended, how long it took.
#[derive(Clone, Debug)]
struct Line {
    phase: String,
    ended: Timestamp,
    ms: f64,
}

/// Reads `phase="…" ms=…` lines of the phases target from a handler log.
fn lines(log: &str) -> Vec<Line> {
    log.lines()
        .filter(|line| line.contains(TARGET))
        .filter_map(|line| {
            let ended: Timestamp = line.split_whitespace().next()?.parse().ok()?;
            let phase = line.split("phase=\"").nth(1)?.split('"').next()?.to_string();
            let ms = line
                .split(" ms=")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()?;
            Some(Line { phase, ended, ms })
        })
        .collect()
}

/// The log target of nmstate's "Retrying on: …" lines (its verification, or a NetworkManager
/// call, tried again after a second or two).
pub const NMSTATE_RETRY_TARGET: &str = "nmstate::query_apply::net_state";
const RETRY: &str = "Retrying on:";
/// What nmstate logs (the project's patch, third_party/README.md) when it merges over the state
/// the handler hands it instead of reading the node first.
const GIVEN_STATE: &str = "Using the given current state instead of retrieving it";

/// How long after the bench saw Available the handler's line for writing it may come.
const LOGGED_AFTER: k8s_openapi::jiff::SignedDuration = k8s_openapi::jiff::SignedDuration::from_millis(100);

/// One run: the policy created at `created`, its enactment seen Available at `seen`.
pub struct Run {
    pub created: Timestamp,
    pub seen: Timestamp,
}

impl Run {
    /// Whether the handler's log `log` shows nmstate retrying within this run.
    pub fn retried(&self, log: &str) -> bool {
        self.logged(log, RETRY)
    }

    /// Whether nmstate merged over the handler's read of the node in this run, rather than
    /// reading the node first.
    pub fn over_given_state(&self, log: &str) -> bool {
        self.logged(log, GIVEN_STATE)
    }

    fn logged(&self, log: &str, text: &str) -> bool {
        crate::common::logged_between(log, text, self.created, self.seen)
    }
}

/// Whether `nmstatectl -v`'s lines show nmstate retrying.
pub fn nmstatectl_retried(lines: &[(Duration, String)]) -> bool {
    lines.iter().any(|(_, line)| line.contains(RETRY))
}

/// Milliseconds per part of each run, by part name, in the order of an apply.
#[derive(Default)]
pub struct Breakdown {
    parts: Vec<(String, Vec<f64>)>,
}

impl Breakdown {
    pub fn add(&mut self, part: &str, ms: f64) {
        match self.parts.iter_mut().find(|(name, _)| name == part) {
            Some((_, samples)) => samples.push(ms),
            None => self.parts.push((part.to_string(), vec![ms])),
        }
    }

    /// The runs' parts, from the handler's log `log`; a run whose lines are missing is left out.
    pub fn of(runs: &[Run], log: &str) -> Breakdown {
        let all = lines(log);
        let mut breakdown = Breakdown::default();
        for run in runs {
            // The bench can see Available before the handler has logged its write's end.
            let logged = run.seen.checked_add(LOGGED_AFTER).unwrap_or(run.seen);
            let window: Vec<&Line> = all
                .iter()
                .filter(|line| line.ended >= run.created && line.ended <= logged)
                .collect();
            // The reconcile that applied: the last to start before nmstate's apply.
            let Some(applied) = window.iter().position(|line| line.phase == names::NMSTATE_APPLY) else {
                continue;
            };
            let Some(start) = window[..applied]
                .iter()
                .rposition(|line| line.phase == names::RECONCILE)
            else {
                continue;
            };
            // The apply ends with its Available status written (the window may hold later lines).
            let end = window
                .iter()
                .rposition(|line| line.phase == names::STATUS_AVAILABLE)
                .filter(|end| *end > start)
                .unwrap_or(window.len() - 1);
            let last = window[end];
            let ms = |from: Timestamp, to: Timestamp| to.duration_since(from).as_secs_f64() * 1000.0;
            let reconciled = window[start].ended;
            breakdown.add("policy created -> reconcile", ms(run.created, reconciled));
            let mut phases: BTreeMap<&str, f64> = BTreeMap::new();
            for line in &window[start + 1..=end] {
                *phases.entry(line.phase.as_str()).or_default() += line.ms;
            }
            let mut timed = 0.0;
            for phase in names::IN_ORDER {
                let ms = phases.get(phase).copied().unwrap_or_default();
                timed += ms;
                breakdown.add(phase, ms);
            }
            for phase in names::BESIDE {
                breakdown.add(
                    &format!("  beside: {phase}"),
                    phases.get(phase).copied().unwrap_or_default(),
                );
            }
            breakdown.add("between the phases", ms(reconciled, last.ended) - timed);
            breakdown.add("Available written -> seen", ms(last.ended, run.seen).max(0.0));
            breakdown.add("total", ms(run.created, run.seen));
        }
        breakdown
    }

    pub fn print(&self, title: &str) {
        println!("{title}");
        for (part, samples) in &self.parts {
            let median = crate::common::median(samples).unwrap_or_default();
            let max = samples.iter().copied().reduce(f64::max).unwrap_or_default();
            println!(
                "  {part:<34} median {median:>7.1} ms   max {max:>7.1} ms   ({} runs)",
                samples.len()
            );
        }
    }
}

/// `nmstatectl apply`'s phases as far as its log shows them: from `lines` (each line of its
/// output with the time since its start it arrived at), the parts start → checkpoint created
/// (its read of the node and validation), → checkpoint destroyed (apply, verification and
/// commit), → exit (`exited`).
pub fn nmstatectl_parts(lines: &[(Duration, String)], exited: Duration, into: &mut Breakdown) {
    let at = |text: &str| {
        lines
            .iter()
            .find(|(_, line)| line.contains(text))
            .map(|(at, _)| at.as_secs_f64() * 1000.0)
    };
    let (Some(created), Some(destroyed)) = (at("Created checkpoint"), at("Destroyed checkpoint")) else {
        return;
    };
    into.add("start -> checkpoint created", created);
    into.add("-> applied, verified, committed", destroyed - created);
    into.add("-> exited", exited.as_secs_f64() * 1000.0 - destroyed);
    into.add("total", exited.as_secs_f64() * 1000.0);
}
