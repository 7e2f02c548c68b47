//! The release history (`bundle/releases.yaml`): every released version, oldest first, with
//! its date. The upgrade graph comes from it: each release replaces the one before and skips
//! every older one, so OLM upgrades any earlier version in one step.

use super::InstallError;
use serde::{Deserialize, Serialize};

/// One line of `bundle/releases.yaml`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryLine {
    pub version: semver::Version,
    /// `YYYY-MM-DD`; the CSV's `createdAt`.
    pub date: String,
}

/// A release with its upgrade edges.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReleaseEntry {
    pub version: semver::Version,
    pub date: String,
    /// The release OLM upgrades from (`spec.replaces`).
    pub replaces: Option<semver::Version>,
    /// Every older version (`olm.skipRange`).
    pub skip_range: Option<String>,
}

/// The release being built, with the history up to it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Release {
    pub version: semver::Version,
    pub date: String,
    pub replaces: Option<semver::Version>,
    pub skip_range: Option<String>,
    /// Every release up to and including this one, oldest first.
    pub history: Vec<ReleaseEntry>,
}

/// Reads `bundle/releases.yaml` and picks `version` from it.
pub fn from_history(text: &str, version: &semver::Version) -> Result<Release, InstallError> {
    let lines: Vec<HistoryLine> = serde_yaml::from_str(text)?;
    let mut history: Vec<ReleaseEntry> = Vec::new();
    for line in lines {
        if let Some(last) = history.last()
            && last.version >= line.version
        {
            return Err(InstallError::History(format!(
                "{} is listed after {}: versions must increase",
                line.version, last.version
            )));
        }
        let first = history.first().map(|entry| entry.version.clone());
        history.push(ReleaseEntry {
            replaces: history.last().map(|entry| entry.version.clone()),
            skip_range: first.map(|first| format!(">={first} <{}", line.version)),
            version: line.version,
            date: line.date,
        });
    }
    let position = history
        .iter()
        .position(|entry| &entry.version == version)
        .ok_or_else(|| {
            InstallError::History(format!(
                "{version} (the workspace version) is not in bundle/releases.yaml: run `make release VERSION={version}`"
            ))
        })?;
    history.truncate(position + 1);
    let current = history[position].clone();
    Ok(Release {
        version: current.version,
        date: current.date,
        replaces: current.replaces,
        skip_range: current.skip_range,
        history,
    })
}

/// `text` with `version` added (dated `date`) unless it is there already.
pub fn add_to_history(text: &str, version: &semver::Version, date: &str) -> Result<String, InstallError> {
    let lines: Vec<HistoryLine> = serde_yaml::from_str(text)?;
    if lines.iter().any(|line| &line.version == version) {
        return Ok(text.to_string());
    }
    if let Some(last) = lines.last()
        && &last.version > version
    {
        return Err(InstallError::History(format!(
            "{version} is older than the last release, {}",
            last.version
        )));
    }
    let mut out = text.to_string();
    if !out.ends_with('\n') {
        out.push('\n');
    }
    out.push_str(&format!("- version: {version}\n  date: \"{date}\"\n"));
    Ok(out)
}
