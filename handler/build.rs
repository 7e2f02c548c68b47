//! Exposes the version of the nmstate crate this build resolved to (from Cargo.lock) as
//! `NMSTATE_CRATE_VERSION`; node states report it as `handlerNmstateVersion`.

fn main() {
    let lock_path = concat!(env!("CARGO_MANIFEST_DIR"), "/../Cargo.lock");
    println!("cargo::rerun-if-changed={lock_path}");
    let lock = std::fs::read_to_string(lock_path).unwrap_or_default();
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
