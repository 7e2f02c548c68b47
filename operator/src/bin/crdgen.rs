//! Writes the nmstate.io CRDs, generated from the API types, to `manifests/crds/`.
//!
//! `crdgen [DIR]` writes one file per CRD (default `manifests/crds`); `crdgen --check [DIR]`
//! writes nothing and exits 1 when a file there differs from what the types generate.

use std::{path::PathBuf, process::ExitCode};

fn main() -> ExitCode {
    let mut check = false;
    let mut dir = PathBuf::from("manifests/crds");
    for arg in std::env::args().skip(1) {
        match arg.as_str() {
            "--check" => check = true,
            "-h" | "--help" => {
                println!("usage: crdgen [--check] [DIR]   (default DIR: manifests/crds)");
                return ExitCode::SUCCESS;
            }
            other => dir = PathBuf::from(other),
        }
    }
    let result = if check {
        nmstate_operator::crds::stale_files(&dir).map(|stale| {
            for file in &stale {
                eprintln!("crdgen: {} is stale; regenerate with `make crds`", file.display());
            }
            stale.is_empty()
        })
    } else {
        nmstate_operator::crds::write_all(&dir).map(|written| {
            for file in written {
                println!("wrote {}", file.display());
            }
            true
        })
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(error) => {
            eprintln!("crdgen: {error}");
            ExitCode::FAILURE
        }
    }
}
