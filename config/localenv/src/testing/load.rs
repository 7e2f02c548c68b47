//! What else the machine is doing while a benchmark measures: printed beside its figures, so a
//! noisy run shows as noisy instead of passing for a regression.

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

/// A process's CPU time so far, in clock ticks, and its name.
fn cpu_ticks() -> BTreeMap<u32, (u64, String)> {
    let mut ticks = BTreeMap::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return ticks;
    };
    for entry in entries.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        if let Some(parsed) = parse_stat(&stat) {
            ticks.insert(pid, parsed);
        }
    }
    ticks
}

/// `(utime + stime, comm)` from a `/proc/PID/stat` line. The name is in parentheses and may
/// itself hold spaces and parentheses, so the fields are counted from the last `)`.
fn parse_stat(stat: &str) -> Option<(u64, String)> {
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let name = stat.get(open + 1..close)?.to_string();
    let fields: Vec<&str> = stat.get(close + 1..)?.split_whitespace().collect();
    // After the name: state is field 3 of the line, utime 14 and stime 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime, name))
}

/// The machine's load from its start to a report: the load averages at both ends, and the
/// processes that used more than 5 % of a CPU meanwhile, busiest first, the benchmark's own
/// process left out (the programs it measures are listed: they show what the run cost).
pub struct MachineLoad {
    started: Instant,
    loadavg: String,
    ticks: BTreeMap<u32, (u64, String)>,
    /// [`fixed_work`]'s time at the start.
    speed: Duration,
}

/// How long one thread takes for a fixed piece of work (JSON written and read back, as the
/// programs measured do all the time), the best of five tries: the machine's speed during a
/// run. A process's CPU time for the same work varied 2.5–3.5 times within an hour on the 2-core
/// machine this project is built on (docs/benchmarks.md, the idle handler); printed beside the
/// figures, a slow spell shows as one instead of passing for a regression.
pub fn fixed_work() -> Duration {
    let document = serde_json::Value::Array(
        (0..200)
            .map(|i| serde_json::json!({"name": format!("eth{i}"), "type": "ethernet", "state": "up",
                "mtu": 1500 + i, "ipv4": {"enabled": true, "address": [{"ip": format!("10.0.{}.{}", i / 250, i % 250), "prefix-length": 24}]}}))
            .collect(),
    );
    (0..5)
        .map(|_| {
            let started = Instant::now();
            for _ in 0..20 {
                let text = serde_json::to_string(std::hint::black_box(&document)).unwrap_or_default();
                let read: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
                std::hint::black_box(read);
            }
            started.elapsed()
        })
        .min()
        .unwrap_or_default()
}

impl MachineLoad {
    pub fn start() -> Self {
        MachineLoad {
            started: Instant::now(),
            loadavg: loadavg(),
            ticks: cpu_ticks(),
            speed: fixed_work(),
        }
    }

    /// For example `load average 0.41 0.38 0.52 at the start, 1.90 0.80 0.61 at the end; busy
    /// over 42 s: kube-apiserver 31%, cc1plus 12%; a fixed piece of work (testing::fixed_work)
    /// took 14.2 ms at the start, 14.6 ms at the end`.
    pub fn report(&self) -> String {
        let window = self.started.elapsed().as_secs_f64().max(0.001);
        let hertz = clock_ticks_per_second();
        let own = std::process::id();
        let mut busy: Vec<(f64, String)> = cpu_ticks()
            .iter()
            .filter(|(pid, _)| **pid != own)
            .filter_map(|(pid, (ticks, name))| {
                // A process started meanwhile used all its time within the window.
                let earlier = self.ticks.get(pid).map_or(0, |(earlier, _)| *earlier);
                let share = ticks.saturating_sub(earlier) as f64 / hertz / window;
                (share > 0.05).then(|| (share, name.clone()))
            })
            .collect();
        busy.sort_by(|a, b| b.0.total_cmp(&a.0));
        let busy: Vec<String> = busy
            .iter()
            .map(|(share, name)| format!("{name} {:.0}%", share * 100.0))
            .collect();
        let ms = |duration: Duration| duration.as_secs_f64() * 1000.0;
        format!(
            "load average {} at the start, {} at the end; busy over {window:.0} s: {}; a fixed \
             piece of work (testing::fixed_work) took {:.1} ms at the start, {:.1} ms at the end",
            self.loadavg,
            loadavg(),
            if busy.is_empty() {
                "nothing".to_string()
            } else {
                busy.join(", ")
            },
            ms(self.speed),
            ms(fixed_work()),
        )
    }
}

/// What a process has used so far: CPU time (all its threads, living or not), and how often
/// each living thread went to sleep and woke again (voluntary context switches): an idle
/// process's cost.
#[derive(Clone, Debug, PartialEq)]
pub struct ProcessUsage {
    pub cpu_seconds: f64,
    /// Voluntary context switches per thread id.
    switches: BTreeMap<u32, u64>,
    /// Each thread's name (`comm`).
    names: BTreeMap<u32, String>,
}

impl ProcessUsage {
    /// `None` when the process is gone.
    pub fn of(pid: u32) -> Option<Self> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let (ticks, _) = parse_stat(&stat)?;
        let mut switches = BTreeMap::new();
        let mut names = BTreeMap::new();
        for task in std::fs::read_dir(format!("/proc/{pid}/task")).ok()?.flatten() {
            let Ok(tid) = task.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let status = std::fs::read_to_string(task.path().join("status")).unwrap_or_default();
            switches.insert(tid, status_number(&status, "voluntary_ctxt_switches:"));
            let name = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
            names.insert(tid, name.trim().to_string());
        }
        Some(ProcessUsage {
            cpu_seconds: ticks as f64 / clock_ticks_per_second(),
            switches,
            names,
        })
    }

    /// The wake-ups since `earlier`, of the threads living now (a thread that ended meanwhile
    /// takes its last ones with it: the count is a floor).
    pub fn wakeups_since(&self, earlier: &ProcessUsage) -> u64 {
        self.switches
            .iter()
            .map(|(tid, now)| now.saturating_sub(earlier.switches.get(tid).copied().unwrap_or(0)))
            .sum()
    }

    /// [`Self::wakeups_since`] by thread name, the busiest first.
    pub fn wakeups_by_thread_since(&self, earlier: &ProcessUsage) -> Vec<(String, u64)> {
        let mut by_name: BTreeMap<&str, u64> = BTreeMap::new();
        for (tid, now) in &self.switches {
            let since = now.saturating_sub(earlier.switches.get(tid).copied().unwrap_or(0));
            let name = self.names.get(tid).map_or("?", String::as_str);
            *by_name.entry(name).or_default() += since;
        }
        let mut sorted: Vec<(String, u64)> = by_name
            .into_iter()
            .map(|(name, wakeups)| (name.to_string(), wakeups))
            .collect();
        sorted.sort_by_key(|(_, wakeups)| std::cmp::Reverse(*wakeups));
        sorted
    }
}

/// The number of `field` (such as `"VmRSS:"`, in KiB, or `"voluntary_ctxt_switches:"`) in the
/// text of a `/proc/.../status` file; 0 when it is not there.
pub(super) fn status_number(status: &str, field: &str) -> u64 {
    status
        .lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// A clock tick is 1/100 s on Linux unless the kernel says otherwise.
fn clock_ticks_per_second() -> f64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .filter(|hertz| *hertz > 0)
        .unwrap_or(100) as f64
}

fn loadavg() -> String {
    let text = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    text.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_stat_line_gives_its_cpu_time_and_name_even_with_parentheses_in_the_name() {
        let cases = [
            (
                "1234 (kube-apiserver) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 12 0 100 0 0",
                300,
                "kube-apiserver",
            ),
            (
                "77 (a) b (c)) R 1 77 77 0 -1 0 0 0 0 0 7 3 0 0 20 0 1 0 5 0 0",
                10,
                "a) b (c)",
            ),
        ];
        for (line, ticks, name) in cases {
            assert_eq!(parse_stat(line), Some((ticks, name.to_string())), "{line}");
        }
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn a_process_usage_counts_its_threads_wakeups() {
        let status = "Name:\tx\nvoluntary_ctxt_switches:\t42\nnonvoluntary_ctxt_switches:\t7\n";
        assert_eq!(status_number(status, "voluntary_ctxt_switches:"), 42);
        assert_eq!(status_number("Name:\tx\n", "voluntary_ctxt_switches:"), 0);
        assert_eq!(status_number("VmRSS:\t   15872 kB\n", "VmRSS:"), 15872);
        let sleeper = std::process::Command::new("sh")
            .args(["-c", "for i in 1 2 3 4 5; do sleep 0.05; done; sleep 5"])
            .spawn()
            .unwrap();
        let start = ProcessUsage::of(sleeper.id()).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(400));
        let usage = ProcessUsage::of(sleeper.id()).unwrap();
        let mut sleeper = sleeper;
        let _ = sleeper.kill();
        let _ = sleeper.wait();
        // sh waited for each of its five children.
        assert!(usage.wakeups_since(&start) >= 5, "{start:?} {usage:?}");
        assert_eq!(usage.wakeups_since(&usage), 0);
        assert!(ProcessUsage::of(u32::MAX).is_none());
    }

    #[test]
    fn the_report_names_a_busy_process_started_meanwhile() {
        let spinner = std::process::Command::new("sh")
            .args(["-c", "while :; do :; done"])
            .spawn()
            .unwrap();
        let load = MachineLoad::start();
        std::thread::sleep(std::time::Duration::from_millis(500));
        let report = load.report();
        let mut spinner = spinner;
        let _ = spinner.kill();
        let _ = spinner.wait();
        assert!(report.starts_with("load average "), "{report}");
        assert!(report.contains("sh "), "{report}");
        assert!(
            report.contains("a fixed piece of work (testing::fixed_work) took "),
            "{report}"
        );
        println!("{report}");
    }
}
