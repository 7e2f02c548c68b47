//! Every example and fixture object survives a trip through the types without losing or
//! changing a field.

use crate::{NMState, NodeNetworkConfigurationEnactment, NodeNetworkConfigurationPolicy, NodeNetworkState};
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use serde_json::Value;
use std::path::{Path, PathBuf};

fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "yaml"))
        .collect();
    files.sort();
    files
}

fn documents(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap();
    serde_yaml::Deserializer::from_str(&text)
        .map(|document| Value::deserialize(document).unwrap())
        .filter(|value| !value.is_null())
        .collect()
}

/// Parses `original` as `T`, writes it back, and compares. Deprecated versions share the stored
/// version's schema, so a `v1beta1` object is read with the `v1` type and only its
/// `apiVersion` differs.
fn round_trip<T: Serialize + DeserializeOwned>(original: &Value, origin: &str) {
    let typed: T = serde_json::from_value(original.clone())
        .unwrap_or_else(|error| panic!("{origin}: does not parse as the API type: {error}"));
    let mut written = serde_json::to_value(&typed).unwrap();
    written["apiVersion"] = original["apiVersion"].clone();
    assert_eq!(&written, original, "{origin}: a field was lost or changed");
}

/// Round-trips `original` through the type of its kind; returns the kind.
fn round_trip_any(original: &Value, origin: &str) -> String {
    let kind = original["kind"].as_str().unwrap_or_default().to_string();
    match kind.as_str() {
        "NMState" => round_trip::<NMState>(original, origin),
        "NodeNetworkConfigurationPolicy" => round_trip::<NodeNetworkConfigurationPolicy>(original, origin),
        "NodeNetworkConfigurationEnactment" => {
            round_trip::<NodeNetworkConfigurationEnactment>(original, origin)
        }
        "NodeNetworkState" => round_trip::<NodeNetworkState>(original, origin),
        "NodeNetworkIPPool" => round_trip::<crate::ip_pool::NodeNetworkIPPool>(original, origin),
        other => panic!("{origin}: unexpected kind {other:?}"),
    }
    kind
}

#[test]
fn every_example_round_trips() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let mut count = 0;
    for file in yaml_files(&dir) {
        for document in documents(&file) {
            round_trip_any(&document, &file.display().to_string());
            count += 1;
        }
    }
    assert!(
        count >= 20,
        "expected the examples directory to hold the upstream examples, found {count}"
    );
}

#[test]
fn every_kind_with_full_status_round_trips() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let mut kinds: Vec<String> = yaml_files(&dir)
        .iter()
        .flat_map(|file| {
            documents(file)
                .into_iter()
                .map(|document| round_trip_any(&document, &file.display().to_string()))
                .collect::<Vec<_>>()
        })
        .collect();
    kinds.sort();
    kinds.dedup();
    assert_eq!(
        kinds,
        [
            "NMState",
            "NodeNetworkConfigurationEnactment",
            "NodeNetworkConfigurationPolicy",
            "NodeNetworkState"
        ]
    );
}

#[test]
fn a_dropped_field_is_detected() {
    // The comparison itself must be able to fail: a field the types do not know is reported.
    let mut object =
        documents(&Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/nncp-v1beta1.yaml")).remove(0);
    object["spec"]["unknownField"] = Value::from(1);
    let outcome =
        std::panic::catch_unwind(|| round_trip::<NodeNetworkConfigurationPolicy>(&object, "mutated"));
    assert!(outcome.is_err());
}
