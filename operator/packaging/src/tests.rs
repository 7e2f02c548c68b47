#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

use super::*;
use std::path::Path;

fn version() -> semver::Version {
    semver::Version::new(1, 2, 3)
}

#[test]
fn checked_in_generated_files_are_current() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let stale = files::stale(&root).unwrap();
    assert!(
        stale.is_empty(),
        "stale generated files {stale:?}: run `make generate` and commit the result"
    );
}

#[test]
fn the_default_handler_image_is_this_releases() {
    assert_eq!(
        nmstate_operator::config::DEFAULT_HANDLER_IMAGE,
        image(HANDLER_IMAGE, &files::workspace_version())
    );
}

#[test]
fn the_operator_may_grant_every_rule_of_the_roles_it_renders() {
    let config = nmstate_operator::config::OperatorConfig::defaults();
    let facts = nmstate_operator::render::ClusterFacts {
        server_minor: 33,
        tolerated_infra_taints: 0,
    };
    let cluster = rules::cluster_rules(false).unwrap();
    let namespaced = rules::namespace_rules().unwrap();
    let granted = |rules: &[Value], group: &str, resource: &str, verb: &str| {
        rules.iter().any(|rule| {
            rule["apiGroups"].as_array().unwrap().contains(&json!(group))
                && rule["resources"].as_array().unwrap().contains(&json!(resource))
                && rule["verbs"].as_array().unwrap().contains(&json!(verb))
                && rule.get("resourceNames").is_none()
        })
    };
    let objects = nmstate_operator::render::render(&Default::default(), &config, &facts).unwrap();
    let mut checked = 0;
    for object in objects
        .iter()
        .filter(|o| o["kind"] == "Role" || o["kind"] == "ClusterRole")
    {
        let in_handler_namespace = object["metadata"]["namespace"] == json!(config.handler_namespace);
        for rule in object["rules"].as_array().unwrap() {
            for group in rule["apiGroups"].as_array().unwrap() {
                for resource in rule["resources"].as_array().unwrap() {
                    for verb in rule["verbs"].as_array().unwrap() {
                        let (group, resource, verb) = (
                            group.as_str().unwrap(),
                            resource.as_str().unwrap(),
                            verb.as_str().unwrap(),
                        );
                        let ok = granted(&cluster, group, resource, verb)
                            || (in_handler_namespace && granted(&namespaced, group, resource, verb));
                        assert!(
                            ok,
                            "{} {} needs {verb} on {group}/{resource}",
                            object["kind"], object["metadata"]["name"]
                        );
                        checked += 1;
                    }
                }
            }
        }
    }
    assert!(checked > 20, "only {checked} permissions checked");
    // Secrets are granted in the handler namespace only.
    assert!(!granted(&cluster, "", "secrets", "get"));
    assert!(granted(&namespaced, "", "secrets", "create"));
}

#[test]
fn the_plain_manifest_installs_crds_namespace_rbac_and_the_operator() {
    let objects = plain_manifest(&version()).unwrap();
    let kinds: Vec<&str> = objects.iter().map(|o| o["kind"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        [
            "CustomResourceDefinition",
            "CustomResourceDefinition",
            "CustomResourceDefinition",
            "CustomResourceDefinition",
            "CustomResourceDefinition",
            "Namespace",
            "ServiceAccount",
            "ClusterRole",
            "ClusterRoleBinding",
            "Role",
            "RoleBinding",
            "Deployment"
        ]
    );
    let deployment = objects.last().unwrap();
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(
        container["image"],
        "quay.io/nmstate/kubernetes-nmstate-rs-operator:v1.2.3"
    );
    let env = container["env"].as_array().unwrap();
    let handler_image = env
        .iter()
        .find(|e| e["name"] == "RELATED_IMAGE_HANDLER_IMAGE")
        .unwrap();
    assert_eq!(
        handler_image["value"],
        "quay.io/nmstate/kubernetes-nmstate-rs-handler:v1.2.3"
    );
    assert!(container["resources"]["requests"]["cpu"].is_string());
    assert!(container["resources"]["requests"]["memory"].is_string());
    assert_eq!(
        deployment["metadata"]["labels"]["app.kubernetes.io/version"],
        "1.2.3"
    );
    let manage_crds = env.iter().find(|e| e["name"] == "MANAGE_CRDS").unwrap();
    assert_eq!(manage_crds["value"], "false", "the channels own the CRDs");
}
