//! The generated CRD manifests in `manifests/crds/`: one YAML file per CRD, named after it.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum CrdFileError {
    #[error("cannot serialize CRD {name} to YAML: {source}")]
    Serialize { name: String, source: serde_yaml::Error },
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
}

/// The file name and content of every CRD.
pub fn render_all() -> Result<Vec<(String, String)>, CrdFileError> {
    nmstate_api::crd::all().iter().map(render).collect()
}

fn render(crd: &CustomResourceDefinition) -> Result<(String, String), CrdFileError> {
    let name = crd.metadata.name.clone().unwrap_or_default();
    let yaml = serde_yaml::to_string(crd).map_err(|source| CrdFileError::Serialize {
        name: name.clone(),
        source,
    })?;
    let header = "# Generated from the types in api/ by `make crds`; do not edit.\n";
    Ok((format!("{name}.yaml"), format!("{header}{yaml}")))
}

/// Writes every CRD into `dir`; returns the paths written.
pub fn write_all(dir: &Path) -> Result<Vec<PathBuf>, CrdFileError> {
    std::fs::create_dir_all(dir).map_err(|source| CrdFileError::Write {
        path: dir.to_path_buf(),
        source,
    })?;
    render_all()?
        .into_iter()
        .map(|(file, content)| {
            let path = dir.join(file);
            std::fs::write(&path, content).map_err(|source| CrdFileError::Write {
                path: path.clone(),
                source,
            })?;
            Ok(path)
        })
        .collect()
}

/// The files in `dir` that are missing or differ from what the types generate.
pub fn stale_files(dir: &Path) -> Result<Vec<PathBuf>, CrdFileError> {
    Ok(render_all()?
        .into_iter()
        .map(|(file, content)| (dir.join(file), content))
        .filter(|(path, content)| std::fs::read_to_string(path).ok().as_deref() != Some(content.as_str()))
        .map(|(path, _)| path)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checked_in_crds_match_the_types() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests/crds");
        let stale = stale_files(&dir).unwrap();
        assert!(
            stale.is_empty(),
            "manifests/crds is stale ({stale:?}): run `make crds` and commit the result"
        );
    }
}
