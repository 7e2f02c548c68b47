//! Daemons started by the local environment: spawned detached with their output in a log file
//! and their pid in a pid file, and stopped by that pid only (never by name), after checking
//! that the pid still runs the same program.

use crate::error::{LocalEnvError, Result};
use nix::{sys::signal, unistd::Pid};
use std::{
    fs::File,
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

/// A daemon known by its pid file and the file name of its executable.
#[derive(Clone, Debug)]
pub struct Daemon {
    pub name: String,
    /// The executable's file name as `/proc/<pid>/exe` shows it, e.g. `kube-apiserver`.
    pub executable: String,
    pub pid_file: PathBuf,
    pub log_file: PathBuf,
}

impl Daemon {
    pub fn new(name: &str, executable: &str, dir: &Path) -> Self {
        Daemon {
            name: name.to_string(),
            executable: executable.to_string(),
            pid_file: dir.join(format!("{name}.pid")),
            log_file: dir.join(format!("{name}.log")),
        }
    }

    /// Starts `command` in its own process group (so a terminal's Ctrl-C or the end of the
    /// starting process leaves it running), output appended to the log file.
    pub fn spawn(&self, mut command: Command) -> Result<u32> {
        let log = File::options()
            .create(true)
            .append(true)
            .open(&self.log_file)
            .map_err(LocalEnvError::io("open", &self.log_file))?;
        let log_err = log
            .try_clone()
            .map_err(LocalEnvError::io("open", &self.log_file))?;
        let child = command
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .process_group(0)
            .spawn()
            .map_err(|source| LocalEnvError::Spawn {
                command: format!("{command:?}"),
                source,
            })?;
        let pid = child.id();
        std::fs::write(&self.pid_file, format!("{pid}\n"))
            .map_err(LocalEnvError::io("write", &self.pid_file))?;
        // The child is reaped by whoever outlives it; dropping `Child` neither waits nor kills.
        drop(child);
        Ok(pid)
    }

    /// The pid, if the pid file names a live (not zombie) process running this executable.
    pub fn running_pid(&self) -> Option<u32> {
        let pid: u32 = std::fs::read_to_string(&self.pid_file)
            .ok()?
            .trim()
            .parse()
            .ok()?;
        is_running(pid, &self.executable).then_some(pid)
    }

    /// Fails with the log's last lines when the daemon is not running.
    pub fn check_running(&self) -> Result<u32> {
        self.running_pid().ok_or_else(|| LocalEnvError::DaemonExited {
            name: self.name.clone(),
            log: self.log_file.clone(),
            tail: log_tail(&self.log_file, 15),
        })
    }

    /// SIGTERM, then SIGKILL after `grace`, to the daemon's process group (it leads one, see
    /// [`Daemon::spawn`]), so what it forked goes too (the API forwarder's per-connection
    /// socats); removes the pid file. Does nothing when the pid file is missing or names
    /// another program.
    pub fn stop(&self, grace: Duration) {
        self.signal_and_wait(grace);
    }

    /// Kills the process group at once (SIGKILL), as a crash would; removes the pid file.
    pub fn kill(&self) {
        self.signal_and_wait(Duration::ZERO);
    }

    fn signal_and_wait(&self, grace: Duration) {
        if let Some(pid) = self.running_pid() {
            let target = Pid::from_raw(pid as i32);
            // Signalled while the leader runs, so the group id cannot belong to anyone else.
            let signal_all = |signal| {
                if signal::killpg(target, signal).is_err() {
                    let _ = signal::kill(target, signal);
                }
            };
            if !grace.is_zero() {
                signal_all(signal::Signal::SIGTERM);
            }
            let deadline = Instant::now() + grace;
            while is_running(pid, &self.executable) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            if is_running(pid, &self.executable) {
                if !grace.is_zero() {
                    tracing::warn!(daemon = %self.name, pid, "did not stop on SIGTERM, sending SIGKILL");
                }
                signal_all(signal::Signal::SIGKILL);
                let deadline = Instant::now() + Duration::from_secs(5);
                while is_running(pid, &self.executable) && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }
        let _ = std::fs::remove_file(&self.pid_file);
    }
}

/// True when `pid` runs `executable` and is not a zombie. Zombies count as stopped: on hosts
/// whose PID 1 is not an init, orphaned daemons may stay unreaped for a while.
pub fn is_running(pid: u32, executable: &str) -> bool {
    let exe = match std::fs::read_link(format!("/proc/{pid}/exe")) {
        Ok(exe) => exe,
        Err(_) => return false,
    };
    let name = exe
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default();
    let name = name.trim_end_matches(" (deleted)");
    if name != executable {
        return false;
    }
    // /proc/<pid>/stat: "pid (comm) state ..."; the state follows the last ')'.
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().next());
    !matches!(state, Some("Z") | Some("X") | None)
}

/// The last `lines` lines of a log file (empty when it cannot be read).
pub fn log_tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Runs a command to completion; an error carries its combined output.
pub fn run(command: &mut Command) -> Result<String> {
    let output = command
        .stdin(Stdio::null())
        .output()
        .map_err(|source| LocalEnvError::Spawn {
            command: format!("{command:?}"),
            source,
        })?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(LocalEnvError::CommandFailed {
            command: format!("{command:?}"),
            status: output.status.to_string(),
            output: text.trim().to_string(),
        })
    }
}

/// Polls `ready` every 100 ms until it returns true, the daemon dies, or `timeout` passes.
pub async fn wait_until<F, Fut>(daemon: &Daemon, what: &str, timeout: Duration, mut ready: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if ready().await {
            return Ok(());
        }
        daemon.check_running()?;
        if Instant::now() >= deadline {
            return Err(LocalEnvError::NotReady {
                what: what.to_string(),
                seconds: timeout.as_secs(),
                log: daemon.log_file.clone(),
            });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pid_counts_as_running_only_with_the_same_executable() {
        let me = std::process::id();
        let exe = std::env::current_exe().unwrap();
        let name = exe.file_name().unwrap().to_string_lossy().into_owned();
        assert!(is_running(me, &name));
        assert!(
            !is_running(me, "kube-apiserver"),
            "a reused pid must not be mistaken for a daemon"
        );
        assert!(!is_running(u32::MAX, &name));
    }

    #[test]
    fn stopping_a_daemon_whose_pid_file_names_another_program_kills_nothing() {
        let dir = std::env::temp_dir().join(format!("localenv-process-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let daemon = Daemon::new("etcd", "etcd", &dir);
        std::fs::write(&daemon.pid_file, format!("{}\n", std::process::id())).unwrap();
        daemon.stop(Duration::from_millis(10)); // would SIGTERM this test if it trusted the pid
        assert!(!daemon.pid_file.exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
