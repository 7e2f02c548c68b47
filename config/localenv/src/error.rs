use std::path::PathBuf;

/// Why the local environment could not be started, used or stopped. Each message says what to
/// do about it.
#[derive(Debug, thiserror::Error)]
pub enum LocalEnvError {
    #[error("{what} not found at {path}: {hint}")]
    MissingTool {
        what: &'static str,
        path: PathBuf,
        hint: &'static str,
    },
    #[error("cannot {action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot run {command}: {source}")]
    Spawn { command: String, source: std::io::Error },
    #[error("`{command}` failed ({status}): {output}")]
    CommandFailed {
        command: String,
        status: String,
        output: String,
    },
    #[error("{name} exited during start-up; last lines of {log}:\n{tail}")]
    DaemonExited {
        name: String,
        log: PathBuf,
        tail: String,
    },
    #[error("{what} was not ready after {seconds} s; see {log}")]
    NotReady {
        what: String,
        seconds: u64,
        log: PathBuf,
    },
    #[error("certificate generation failed: {0}")]
    Certificate(#[from] rcgen::Error),
    #[error("Kubernetes client: {0}")]
    Kube(#[from] kube::Error),
    #[error(transparent)]
    Kubelet(#[from] crate::kubelet::container::KubeletError),
    #[error("kubeconfig {path}: {source}")]
    Kubeconfig {
        path: PathBuf,
        source: kube::config::KubeconfigError,
    },
    #[error("the cluster in {dir} is not running; start it with `make cluster-up`")]
    ClusterDown { dir: PathBuf },
    #[error("node {name}: {reason}")]
    Node { name: String, reason: String },
    #[error("image: {0}")]
    Image(String),
    #[error("make demo: {0}")]
    Demo(String),
    /// Pods that did not come up, with what they say.
    #[error("pods: {0}")]
    Pods(String),
    #[error("{0}")]
    Usage(String),
    #[error("must run as root to create network namespaces")]
    NotRoot,
}

impl LocalEnvError {
    pub(crate) fn io(action: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| LocalEnvError::Io { action, path, source }
    }
}

pub type Result<T, E = LocalEnvError> = std::result::Result<T, E>;
