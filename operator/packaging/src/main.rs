//! Writes every generated file of the repository: the CRDs, the plain manifest, the Helm chart
//! and the OLM bundle and catalog (see `nmstate_packaging::files`).
//!
//! `generate [ROOT]` writes them under ROOT (default: the current directory);
//! `generate --check [ROOT]` writes nothing and exits 1 when one is stale;
//! `generate --add-release YYYY-MM-DD [ROOT]` first adds the workspace version to
//! `bundle/releases.yaml` with that date (what `make release VERSION=x.y.z` runs).

use nmstate_packaging::{InstallError, files, release};
use std::{
    path::{Path, PathBuf},
    process::ExitCode,
};

enum Mode {
    Write,
    Check,
    AddRelease(String),
}

fn main() -> ExitCode {
    let mut mode = Mode::Write;
    let mut root = PathBuf::from(".");
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--check" => mode = Mode::Check,
            "--add-release" => match args.next() {
                Some(date) => mode = Mode::AddRelease(date),
                None => return usage(),
            },
            "-h" | "--help" => return usage(),
            other => root = PathBuf::from(other),
        }
    }
    match run(&mode, &root) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(error) => {
            eprintln!("generate: {error}");
            ExitCode::FAILURE
        }
    }
}

fn usage() -> ExitCode {
    eprintln!("usage: generate [--check | --add-release YYYY-MM-DD] [ROOT]");
    ExitCode::FAILURE
}

fn run(mode: &Mode, root: &Path) -> Result<bool, InstallError> {
    match mode {
        Mode::Check => {
            let stale = files::stale(root)?;
            for path in &stale {
                eprintln!(
                    "generate: {} is stale; run `make generate` and commit the result",
                    path.display()
                );
            }
            Ok(stale.is_empty())
        }
        Mode::AddRelease(date) => {
            let path = root.join(files::RELEASE_HISTORY);
            let io = |source| InstallError::Io {
                path: path.clone(),
                source,
            };
            let text = match std::fs::read_to_string(&path) {
                Ok(text) => text,
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => String::new(),
                Err(error) => return Err(io(error)),
            };
            let updated = release::add_to_history(&text, &files::workspace_version(), date)?;
            std::fs::write(&path, updated).map_err(io)?;
            write(root)
        }
        Mode::Write => write(root),
    }
}

fn write(root: &Path) -> Result<bool, InstallError> {
    for path in files::write_all(root)? {
        println!("wrote {}", path.display());
    }
    Ok(true)
}
