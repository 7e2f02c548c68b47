//! Exposes the version of the nmstate crate this build resolved to (from Cargo.lock) as
//! `NMSTATE_CRATE_VERSION`; node states report it as `handlerNmstateVersion`.

fn main() {
    // Read when the script runs, not when it is compiled (`env!`): a script built in one
    // checkout and reused from a shared target directory by another read the first one's
    // lock file, or none once that checkout was gone ("unknown").
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_default();
    let lock_path = format!("{manifest_dir}/../Cargo.lock");
    println!("cargo::rerun-if-changed={lock_path}");
    let lock = std::fs::read_to_string(&lock_path).unwrap_or_default();
    let version = lock
        .split("[[package]]")
        .find(|package| package.lines().any(|line| line.trim() == "name = \"nmstate\""))
        .and_then(|package| {
            package
                .lines()
                .find_map(|line| line.trim().strip_prefix("version = \""))
        })
        .map(|version| version.trim_end_matches('"').to_string())
        .unwrap_or_else(|| "unknown".to_string());
    println!("cargo::rustc-env=NMSTATE_CRATE_VERSION={version}");
}
