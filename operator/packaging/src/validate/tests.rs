#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

use super::*;
use crate::{olm, release};
use serde_json::json;

/// The bundle this release generates, read back from its files as OLM reads them (built once).
fn generated() -> Bundle {
    static GENERATED: std::sync::OnceLock<Bundle> = std::sync::OnceLock::new();
    GENERATED.get_or_init(read_generated).clone()
}

fn read_generated() -> Bundle {
    let history = "- version: 0.1.0\n  date: \"2026-01-01\"\n- version: 0.2.0\n  date: \"2026-02-01\"\n";
    let release = release::from_history(history, &semver::Version::new(0, 2, 0)).unwrap();
    let files = olm::bundle(&release).unwrap();
    Bundle::from_files(
        files
            .iter()
            .map(|(path, content)| (path.as_str(), content.as_str())),
    )
    .unwrap()
}

fn errors_of(bundle: &Bundle) -> Vec<String> {
    validate(bundle)
        .into_iter()
        .filter(|finding| finding.level == Level::Error)
        .map(|finding| format!("{}: {}", finding.rule, finding.message))
        .collect()
}

/// `edit` breaks the generated bundle; the validator must say `expected`.
fn refused(edit: impl FnOnce(&mut Bundle), expected: &str) {
    let mut bundle = generated();
    edit(&mut bundle);
    let errors = errors_of(&bundle);
    assert!(
        errors.iter().any(|error| error.contains(expected)),
        "expected an error containing {expected:?}, got {errors:#?}"
    );
}

#[test]
fn the_generated_bundle_passes_with_one_known_warning() {
    let findings = validate(&generated());
    let messages: Vec<String> = findings
        .iter()
        .map(|f| format!("{:?} {}: {}", f.level, f.rule, f.message))
        .collect();
    assert_eq!(
        messages,
        [
            "Warning csv: provided API NMState v1beta1 should have an example annotation",
            "Warning csv: provided API NodeNetworkConfigurationPolicy v1beta1 should have an example annotation",
        ],
        "deprecated versions get no example"
    );
}

#[test]
fn the_upgrade_edges_come_from_the_history() {
    let csv = generated().csv;
    assert_eq!(csv["spec"]["replaces"], "kubernetes-nmstate-operator.v0.1.0");
    assert_eq!(csv["metadata"]["annotations"]["olm.skipRange"], ">=0.1.0 <0.2.0");
    assert_eq!(csv["metadata"]["annotations"]["createdAt"], "2026-02-01");
}

#[test]
fn csv_name_and_replaces_must_be_dns_names() {
    refused(
        |b| b.csv["metadata"]["name"] = json!("Kubernetes_NMState.v0.2.0"),
        "is not a DNS-1123 subdomain",
    );
    refused(|b| b.csv["spec"]["replaces"] = json!("-old"), "spec.replaces");
}

#[test]
fn required_fields_are_required() {
    refused(
        |b| {
            b.csv["spec"]
                .as_object_mut()
                .unwrap()
                .remove("displayName")
                .map(drop)
                .unwrap_or(())
        },
        "spec.displayName is required",
    );
    refused(
        |b| {
            b.csv["spec"]
                .as_object_mut()
                .unwrap()
                .remove("install")
                .map(drop)
                .unwrap_or(())
        },
        "spec.install is required",
    );
}

#[test]
fn install_modes_must_be_valid_unique_and_supported() {
    refused(
        |b| b.csv["spec"]["installModes"] = json!([]),
        "spec.installModes is empty",
    );
    refused(
        |b| b.csv["spec"]["installModes"][0]["type"] = json!("AllNamespaces"),
        "listed twice",
    );
    refused(
        |b| b.csv["spec"]["installModes"][3]["supported"] = json!(false),
        "no install mode is supported",
    );
    refused(
        |b| b.csv["spec"]["installModes"][0]["type"] = json!("Everywhere"),
        "is not one of",
    );
}

#[test]
fn versions_and_ranges_must_be_semver() {
    refused(
        |b| b.csv["spec"]["minKubeVersion"] = json!("1.20"),
        "minKubeVersion",
    );
    refused(|b| b.csv["spec"]["version"] = json!("0.2"), "spec.version");
    refused(
        |b| b.csv["metadata"]["annotations"]["olm.skipRange"] = json!("from 0.1"),
        "olm.skipRange",
    );
}

#[test]
fn examples_must_be_json_of_owned_apis() {
    refused(
        |b| b.csv["metadata"]["annotations"]["alm-examples"] = json!("[{"),
        "alm-examples is not a JSON array",
    );
    refused(
        |b| {
            b.csv["metadata"]["annotations"]["alm-examples"] =
                json!(r#"[{"apiVersion": "nmstate.io/v2", "kind": "NMState"}]"#)
        },
        "must have a provided API",
    );
}

#[test]
fn owned_crds_and_bundle_crds_must_match() {
    refused(
        |b| {
            b.manifests
                .retain(|m| m["metadata"]["name"] != "nodenetworkstates.nmstate.io")
        },
        "owned CRD nodenetworkstates.nmstate.io v1beta1",
    );
    refused(
        |b| {
            b.csv["spec"]["customresourcedefinitions"]["owned"]
                .as_array_mut()
                .unwrap()
                .retain(|c| c["kind"] != "NodeNetworkState")
        },
        "in the bundle but not owned",
    );
    refused(
        |b| {
            let crd = b.manifests[0].clone();
            b.manifests.push(crd)
        },
        "in the bundle twice",
    );
    refused(
        |b| {
            b.manifests.push(json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "nmstate-operator"}}))
        },
        "clashes with the CSV's",
    );
}

#[test]
fn operatorhub_metadata_must_be_complete() {
    refused(
        |b| b.csv["spec"]["provider"]["name"] = json!(""),
        "spec.provider.name is required",
    );
    refused(
        |b| b.csv["spec"]["maintainers"][0]["email"] = json!("nobody"),
        "valid email",
    );
    refused(
        |b| b.csv["spec"]["links"][0]["url"] = json!("github.com/x"),
        "valid URL",
    );
    refused(|b| b.csv["spec"]["icon"] = json!([]), "exactly one icon");
    refused(
        |b| b.csv["spec"]["icon"][0]["mediatype"] = json!("image/bmp"),
        "icon mediatype",
    );
    refused(
        |b| b.csv["spec"]["icon"][0]["base64data"] = json!("%%%"),
        "not base64",
    );
    refused(
        |b| b.csv["metadata"]["annotations"]["capabilities"] = json!("Magic"),
        "capabilities",
    );
    refused(
        |b| b.csv["metadata"]["annotations"]["categories"] = json!("Networking, Plumbing"),
        "Plumbing",
    );
    refused(
        |b| b.annotations["operators.operatorframework.io.bundle.channel.default.v1"] = json!("nightly"),
        "default channel",
    );
    refused(
        |b| b.annotations["operators.operatorframework.io.bundle.channels.v1"] = json!(""),
        "names no channel",
    );
}

#[test]
fn good_practices_are_checked() {
    let mut bundle = generated();
    bundle.csv["spec"]["install"]["spec"]["clusterPermissions"][0]["rules"][0] = json!({"apiGroups": ["apiextensions.k8s.io"], "resources": ["customresourcedefinitions"], "verbs": ["create"]});
    let warnings: Vec<String> = validate(&bundle).into_iter().map(|f| f.message).collect();
    assert!(
        warnings.iter().any(|w| w.contains("may create CRDs")),
        "{warnings:?}"
    );
    refused(
        |b| b.csv["spec"]["customresourcedefinitions"]["owned"][0]["description"] = json!(""),
        "has no description",
    );
    refused(
        |b| {
            b.csv["spec"]["install"]["spec"]["deployments"][0]["spec"]["template"]["spec"]["containers"][0]
                ["resources"] = json!({"limits": {"memory": "1Gi"}})
        },
        "has no cpu request",
    );
    refused(
        |b| b.csv["metadata"]["name"] = json!("nmstate.v0.2.0"),
        "is not <package>.v<spec.version>",
    );
}
