//! Which Kubernetes a local environment runs: the current release, built from the Go module
//! proxy by `config/kube/build.sh` (the version `config/kube/go.mod` pins), or the oldest
//! supported one, v1.20.2 built from Debian's source package by `config/localenv/scripts/build-kube.sh`.
//! Chosen by `NMSTATE_KUBE_RELEASE` (`current` or `oldest`); each has its binaries, its etcd and
//! the flags its components take.

use crate::error::{LocalEnvError, Result};
use std::path::PathBuf;

/// The variable that chooses the release.
pub const RELEASE_VARIABLE: &str = "NMSTATE_KUBE_RELEASE";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KubeRelease {
    /// The release `config/kube/go.mod` pins (what users run today).
    Current,
    /// v1.20.2, the oldest server the operator supports.
    Oldest,
}

impl KubeRelease {
    /// The release `NMSTATE_KUBE_RELEASE` names; the current one when it is not set.
    pub fn from_env() -> Result<KubeRelease> {
        match std::env::var(RELEASE_VARIABLE).as_deref() {
            Err(_) | Ok("") | Ok("current") => Ok(KubeRelease::Current),
            Ok("oldest") => Ok(KubeRelease::Oldest),
            Ok(other) => Err(LocalEnvError::Usage(format!(
                "{RELEASE_VARIABLE}={other:?}: use `current` (the release config/kube/go.mod pins) \
                 or `oldest` (v1.20.2)"
            ))),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            KubeRelease::Current => "current",
            KubeRelease::Oldest => "oldest",
        }
    }

    pub fn parse(name: &str) -> Option<KubeRelease> {
        [KubeRelease::Current, KubeRelease::Oldest]
            .into_iter()
            .find(|release| release.name() == name.trim())
    }

    /// Where its binaries are: `KUBE_BIN_DIR` if set, else where its build script caches them
    /// (`kube-current` is the link `config/kube/build.sh` keeps to the pinned release's build).
    pub fn bin_dir(self) -> PathBuf {
        if let Some(dir) = std::env::var_os("KUBE_BIN_DIR") {
            return PathBuf::from(dir);
        }
        let cache = crate::cache_dir();
        match self {
            KubeRelease::Current => cache.join("kube-current"),
            KubeRelease::Oldest => cache.join("kube-1.20.2-r3/bin"),
        }
    }

    /// The command that builds it, for messages.
    pub fn build_hint(self) -> &'static str {
        match self {
            KubeRelease::Current => "build it once with `make kube-build` (config/kube/build.sh)",
            KubeRelease::Oldest => "build it once with `make kube-build-oldest` (about 7 minutes)",
        }
    }

    /// etcd: built with the current release (the one Debian 12 ships, 3.4, is older than
    /// current Kubernetes supports); Debian's for v1.20.2.
    pub fn etcd(self) -> PathBuf {
        match self {
            KubeRelease::Current => self.bin_dir().join("etcd"),
            KubeRelease::Oldest => PathBuf::from("etcd"),
        }
    }

    /// Flags that differ by release. v1.20 has insecure ports, on by default then (removed in
    /// 1.24). Current releases refuse a loopback advertise address for the `kubernetes`
    /// Service's endpoints, which no pod here uses: no endpoint reconciler.
    pub fn apiserver_flags(self) -> &'static [&'static str] {
        match self {
            KubeRelease::Current => &["--endpoint-reconciler-type=none"],
            KubeRelease::Oldest => &["--insecure-port=0"],
        }
    }

    pub fn controller_manager_flags(self) -> &'static [&'static str] {
        match self {
            KubeRelease::Current => &[],
            KubeRelease::Oldest => &["--port=0"],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn releases_are_named_and_parsed_back() {
        for release in [KubeRelease::Current, KubeRelease::Oldest] {
            assert_eq!(KubeRelease::parse(release.name()), Some(release));
        }
        assert_eq!(KubeRelease::parse("oldest\n"), Some(KubeRelease::Oldest));
        assert_eq!(KubeRelease::parse("1.20"), None);
        assert_eq!(
            KubeRelease::Current.apiserver_flags(),
            ["--endpoint-reconciler-type=none"]
        );
        assert_eq!(KubeRelease::Oldest.apiserver_flags(), ["--insecure-port=0"]);
    }
}
