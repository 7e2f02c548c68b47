//! The checked-in OLM bundle and catalog as OLM would take them: the CSV against OLM's own
//! ClusterServiceVersion schema (its CRD's openAPIV3Schema, vendored in tests/data because that
//! CRD does not load on the 1.20 API server these tests have), the operator-framework rules,
//! and a file-based catalog whose channels, edges and bundles agree.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: failing loudly is the point

use nmstate_packaging::{files, olm, validate};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};

fn bundle_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../bundle")
}

fn checked_in_bundle() -> validate::Bundle {
    let dir = bundle_dir();
    let mut files = Vec::new();
    for sub in ["manifests", "metadata"] {
        for entry in std::fs::read_dir(dir.join(sub)).unwrap().flatten() {
            let content = std::fs::read_to_string(entry.path()).unwrap();
            files.push((format!("{sub}/{}", entry.file_name().to_string_lossy()), content));
        }
    }
    validate::Bundle::from_files(files.iter().map(|(p, c)| (p.as_str(), c.as_str()))).unwrap()
}

fn csv_schema() -> jsonschema::Validator {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/clusterserviceversion.schema.json");
    let schema: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    jsonschema::draft4::new(&schema).unwrap()
}

fn schema_errors(csv: &Value) -> Vec<String> {
    csv_schema()
        .iter_errors(csv)
        .map(|error| format!("{}: {error}", error.instance_path()))
        .collect()
}

#[test]
fn the_csv_matches_olms_schema() {
    let bundle = checked_in_bundle();
    assert_eq!(bundle.csv["kind"], "ClusterServiceVersion");
    let errors = schema_errors(&bundle.csv);
    assert!(errors.is_empty(), "{errors:#?}");
}

#[test]
fn olms_schema_refuses_a_broken_csv() {
    let mut csv = checked_in_bundle().csv;
    csv["spec"].as_object_mut().unwrap().remove("displayName");
    csv["spec"]["installModes"][0]["supported"] = json!("yes");
    csv["spec"]["install"]["spec"]["deployments"][0]["spec"]["replicas"] = json!("one");
    let errors = schema_errors(&csv).join("\n");
    for expected in [
        "\"displayName\" is a required property",
        "/spec/installModes/0/supported",
        "/spec/install/spec/deployments/0/spec/replicas",
    ] {
        assert!(errors.contains(expected), "expected {expected:?} in:\n{errors}");
    }
}

#[test]
fn the_checked_in_bundle_passes_the_operatorframework_rules() {
    let errors: Vec<_> = validate::validate(&checked_in_bundle())
        .into_iter()
        .filter(|finding| finding.level == validate::Level::Error)
        .collect();
    assert!(errors.is_empty(), "{errors:#?}");
}

#[test]
fn the_catalog_channels_edges_and_bundles_agree() {
    let path = bundle_dir().join(format!("catalog/{}/catalog.yaml", olm::PACKAGE));
    let text = std::fs::read_to_string(path).unwrap();
    let documents: Vec<Value> = serde_yaml::Deserializer::from_str(&text)
        .map(|document| serde::Deserialize::deserialize(document).unwrap())
        .collect();
    let of = |schema: &'static str| documents.iter().filter(move |d| d["schema"] == schema);
    let package = of("olm.package").next().expect("an olm.package");
    assert_eq!(package["name"], olm::PACKAGE);
    let channels: Vec<&Value> = of("olm.channel").collect();
    assert!(
        channels.iter().any(|c| c["name"] == package["defaultChannel"]),
        "the default channel exists"
    );
    let bundles: Vec<&str> = of("olm.bundle").map(|b| b["name"].as_str().unwrap()).collect();
    let current = olm::csv_name(&files::workspace_version());
    assert!(bundles.contains(&current.as_str()), "{current} is in the catalog");
    for channel in channels {
        let entries = channel["entries"].as_array().unwrap();
        let names: Vec<&str> = entries.iter().map(|e| e["name"].as_str().unwrap()).collect();
        assert!(
            names.contains(&current.as_str()),
            "{current} is in channel {}",
            channel["name"]
        );
        for entry in entries {
            assert!(
                bundles.contains(&entry["name"].as_str().unwrap()),
                "entry {} has a bundle",
                entry["name"]
            );
            if let Some(replaces) = entry["replaces"].as_str() {
                assert!(
                    names.contains(&replaces),
                    "{} replaces {replaces}, which the channel lacks",
                    entry["name"]
                );
            }
        }
        // One head: every entry but the newest is replaced by another.
        let replaced: Vec<&str> = entries.iter().filter_map(|e| e["replaces"].as_str()).collect();
        let heads: Vec<&&str> = names.iter().filter(|name| !replaced.contains(name)).collect();
        assert_eq!(
            heads,
            [&current.as_str()],
            "channel {} has one head",
            channel["name"]
        );
    }
    let csv = checked_in_bundle().csv;
    assert_eq!(csv["metadata"]["name"], current);
}
