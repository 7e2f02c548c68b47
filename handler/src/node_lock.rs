//! One handler per node: an exclusive lock on a file on the node (`NMSTATE_INSTANCE_NODE_LOCK_FILE`,
//! a hostPath in the DaemonSet). A second handler, e.g. from a second installation, waits until
//! the first is gone instead of applying changes next to it.

use nix::fcntl::{Flock, FlockArg};
use std::{fs::File, path::Path, time::Duration};
use tracing::{info, warn};

/// How often a waiting handler tries the lock again (upstream's interval).
const RETRY: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
#[error("cannot open the node lock {path}: {source}")]
pub struct LockError {
    path: String,
    source: std::io::Error,
}

/// Holds the node lock until dropped.
pub struct NodeLock(#[allow(dead_code)] Flock<File>);

/// Takes the node lock, waiting (and saying so) while another handler holds it.
pub async fn acquire(path: &Path) -> Result<NodeLock, LockError> {
    acquire_retrying_every(path, RETRY).await
}

async fn acquire_retrying_every(path: &Path, retry: Duration) -> Result<NodeLock, LockError> {
    let error = |source| LockError {
        path: path.display().to_string(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(error)?;
    }
    let mut file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(error)?;
    let mut waiting = false;
    loop {
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => {
                if waiting {
                    info!(lock = %path.display(), "acquired the node lock");
                }
                return Ok(NodeLock(lock));
            }
            Err((unlocked, errno)) => {
                if !waiting {
                    warn!(lock = %path.display(), "another handler holds the node lock ({errno}); waiting for it");
                    waiting = true;
                }
                file = unlocked;
                tokio::time::sleep(retry).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_second_holder_waits_until_the_first_is_gone() {
        let path = std::env::temp_dir().join(format!("node-lock-test-{}/handler_lock", std::process::id()));
        let retry = Duration::from_millis(20);
        let first = acquire_retrying_every(&path, retry).await.unwrap();
        let second = tokio::spawn({
            let path = path.clone();
            async move { acquire_retrying_every(&path, retry).await.map(|_| ()) }
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(
            !second.is_finished(),
            "the second handler must wait while the first holds the lock"
        );
        drop(first);
        tokio::time::timeout(Duration::from_secs(2), second)
            .await
            .expect("acquired after release")
            .unwrap()
            .unwrap();
        std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
    }
}
