use super::*;
use serde_json::json;

fn config() -> OperatorConfig {
    OperatorConfig::from_lookup(|name| {
        (name == "RELATED_IMAGE_HANDLER_IMAGE").then(|| "example.com/nmstate:1".into())
    })
    .unwrap()
}

fn facts() -> ClusterFacts {
    ClusterFacts {
        server_minor: 33,
        tolerated_infra_taints: 0,
    }
}

fn spec(value: Value) -> NMStateSpec {
    serde_json::from_value(value).unwrap()
}

fn find<'a>(objects: &'a [Value], kind: &str, name: &str) -> &'a Value {
    objects
        .iter()
        .find(|object| object["kind"] == kind && object["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

fn env<'a>(container: &'a Value, name: &str) -> &'a Value {
    container["env"]
        .as_array()
        .unwrap()
        .iter()
        .find(|variable| variable["name"] == name)
        .map(|variable| &variable["value"])
        .unwrap_or_else(|| panic!("no env {name}"))
}

#[test]
fn the_default_spec_renders_every_operand() {
    let objects = render(&spec(json!({})), &config(), &facts()).unwrap();
    let names: Vec<String> = objects
        .iter()
        .map(|object| {
            format!(
                "{}/{}",
                object["kind"].as_str().unwrap(),
                object["metadata"]["name"].as_str().unwrap()
            )
        })
        .collect();
    for expected in [
        "CustomResourceDefinition/nodenetworkconfigurationpolicies.nmstate.io",
        "CustomResourceDefinition/nodenetworkconfigurationenactments.nmstate.io",
        "CustomResourceDefinition/nodenetworkstates.nmstate.io",
        "CustomResourceDefinition/nodenetworkippools.nmstate.io",
        "Namespace/nmstate",
        "ServiceAccount/nmstate-handler",
        "ClusterRole/nmstate-handler",
        "Role/nmstate-handler-events",
        "ServiceAccount/nmstate-webhook",
        "ServiceAccount/nmstate-cluster",
        "MutatingWebhookConfiguration/nmstate",
        "ValidatingWebhookConfiguration/nmstate",
        "Service/nmstate-webhook",
        "Deployment/nmstate-webhook",
        "PodDisruptionBudget/nmstate-webhook",
        "Deployment/nmstate-metrics",
        "DaemonSet/nmstate-handler",
        "NetworkPolicy/default-deny-labelled-operand",
        "NetworkPolicy/allow-webhook-ingress",
        "NetworkPolicy/allow-metrics-ingress",
        "NetworkPolicy/allow-operand-egress",
    ] {
        assert!(
            names.contains(&expected.to_string()),
            "{expected} missing from {names:?}"
        );
    }
    assert!(
        !names.iter().any(|name| name.contains("nmstates.nmstate.io")),
        "Helm/OLM install NMState's own CRD"
    );
    let namespace = find(&objects, "Namespace", "nmstate");
    assert_eq!(
        namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"],
        "privileged"
    );
}

#[test]
fn the_handler_daemonset_runs_on_the_host() {
    let objects = render(&spec(json!({})), &config(), &facts()).unwrap();
    let daemonset = find(&objects, "DaemonSet", "nmstate-handler");
    let pod = &daemonset["spec"]["template"]["spec"];
    assert_eq!(pod["hostNetwork"], true);
    assert_eq!(pod["serviceAccountName"], "nmstate-handler");
    assert_eq!(pod["nodeSelector"], json!({"kubernetes.io/os": "linux"}));
    assert_eq!(pod["tolerations"], json!([{"operator": "Exists"}]));
    assert!(pod.get("affinity").is_none());
    assert_eq!(
        daemonset["spec"]["updateStrategy"]["rollingUpdate"]["maxUnavailable"],
        "10%"
    );
    let container = &pod["containers"][0];
    assert_eq!(container["image"], "example.com/nmstate:1");
    assert_eq!(container["securityContext"]["privileged"], true);
    assert_eq!(
        container["env"][0]["valueFrom"]["fieldRef"]["fieldPath"],
        "spec.nodeName"
    );
    assert_eq!(env(container, "PROBE_DNS_HOST"), "root-servers.net");
    assert_eq!(env(container, "RUST_LOG"), "info");
    let selector = &daemonset["spec"]["selector"]["matchLabels"];
    for (key, value) in selector.as_object().unwrap() {
        assert_eq!(&pod["containers"][0]["name"], "nmstate-handler");
        assert_eq!(&daemonset["spec"]["template"]["metadata"]["labels"][key], value);
    }
}

/// Each knob changes what it should.
#[test]
fn knobs_reach_their_fields() {
    let toleration =
        json!([{"key": "dedicated", "operator": "Equal", "value": "net", "effect": "NoSchedule"}]);
    let affinity = json!({"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [{"matchExpressions": [{"key": "a", "operator": "Exists"}]}]}}});
    let cases: Vec<(Value, &str, &str, &str, Value)> = vec![
        (
            json!({"nodeSelector": {"role": "net"}}),
            "DaemonSet",
            "nmstate-handler",
            "/spec/template/spec/nodeSelector",
            json!({"role": "net"}),
        ),
        (
            json!({"tolerations": toleration}),
            "DaemonSet",
            "nmstate-handler",
            "/spec/template/spec/tolerations",
            toleration.clone(),
        ),
        (
            json!({"affinity": affinity}),
            "DaemonSet",
            "nmstate-handler",
            "/spec/template/spec/affinity",
            affinity.clone(),
        ),
        (
            json!({"infraNodeSelector": {"infra": ""}}),
            "Deployment",
            "nmstate-webhook",
            "/spec/template/spec/nodeSelector",
            json!({"infra": ""}),
        ),
        (
            json!({"infraTolerations": toleration}),
            "Deployment",
            "nmstate-metrics",
            "/spec/template/spec/tolerations",
            toleration.clone(),
        ),
        (
            json!({"infraAffinity": affinity}),
            "Deployment",
            "nmstate-webhook",
            "/spec/template/spec/affinity",
            affinity.clone(),
        ),
    ];
    for (knob, kind, name, pointer, expected) in cases {
        let objects = render(&spec(knob.clone()), &config(), &facts()).unwrap();
        assert_eq!(
            find(&objects, kind, name).pointer(pointer).unwrap(),
            &expected,
            "{knob}"
        );
    }
    let objects = render(
        &spec(
            json!({"probeConfiguration": {"dns": {"host": "example.org"}}, "logLevel": "debug",
                     "selfSignConfiguration": {"certRotateInterval": "48h"}}),
        ),
        &config(),
        &facts(),
    )
    .unwrap();
    let handler =
        &find(&objects, "DaemonSet", "nmstate-handler")["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(env(handler, "PROBE_DNS_HOST"), "example.org");
    assert_eq!(env(handler, "RUST_LOG"), "debug");
    let webhook =
        &find(&objects, "Deployment", "nmstate-webhook")["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(env(webhook, "CERT_ROTATE_INTERVAL"), "48h");
    assert_eq!(
        env(webhook, "CA_ROTATE_INTERVAL"),
        "",
        "left to the webhook's default"
    );
}

#[test]
fn the_network_ready_gate_reaches_the_handler_with_the_rights_it_needs() {
    let handler_rules =
        |objects: &[Value]| find(objects, "ClusterRole", "nmstate-handler")["rules"].to_string();
    let handler_env = |objects: &[Value]| {
        find(objects, "DaemonSet", "nmstate-handler")["spec"]["template"]["spec"]["containers"][0]["env"]
            .to_string()
    };
    let off = render(&spec(json!({})), &config(), &facts()).unwrap();
    assert!(!handler_env(&off).contains("NETWORK_READINESS"));
    assert!(
        !handler_rules(&off).contains("nodes/status"),
        "no rights the gate needs without it"
    );
    let condition_only = render(&spec(json!({"networkReadiness": {}})), &config(), &facts()).unwrap();
    let container =
        &find(&condition_only, "DaemonSet", "nmstate-handler")["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(env(container, "NETWORK_READINESS"), "true");
    assert!(!handler_env(&condition_only).contains("NETWORK_STARTUP_TAINT"));
    assert!(handler_rules(&condition_only).contains("nodes/status"));
    assert!(!handler_rules(&condition_only).contains(r#""resources":["nodes"],"verbs":["patch"]"#));
    let with_taint = json!({"networkReadiness": {"startupTaint": "nmstate.io/network-unready"}});
    let objects = render(&spec(with_taint), &config(), &facts()).unwrap();
    let container =
        &find(&objects, "DaemonSet", "nmstate-handler")["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(
        env(container, "NETWORK_STARTUP_TAINT"),
        "nmstate.io/network-unready"
    );
    assert!(handler_rules(&objects).contains(r#""resources":["nodes"],"verbs":["patch"]"#));
}

#[test]
fn handlers_are_held_to_their_own_node_from_1_30() {
    let restriction = |minor: u32| {
        let facts = ClusterFacts {
            server_minor: minor,
            ..facts()
        };
        let objects = render(&spec(json!({})), &config(), &facts).unwrap();
        objects
            .into_iter()
            .filter(|object| {
                object["kind"]
                    .as_str()
                    .unwrap()
                    .starts_with("ValidatingAdmissionPolicy")
            })
            .collect::<Vec<_>>()
    };
    assert!(restriction(29).is_empty(), "no node name in tokens before 1.30");
    let objects = restriction(30);
    let policy = find(
        &objects,
        "ValidatingAdmissionPolicy",
        "nmstate-handler-node-restriction",
    );
    assert_eq!(
        policy["spec"]["matchConditions"][0]["expression"],
        "request.userInfo.username == 'system:serviceaccount:nmstate:nmstate-handler'"
    );
    let binding = find(
        &objects,
        "ValidatingAdmissionPolicyBinding",
        "nmstate-handler-node-restriction",
    );
    assert_eq!(binding["spec"]["policyName"], "nmstate-handler-node-restriction");
    assert_eq!(binding["spec"]["validationActions"], json!(["Deny"]));
}

#[test]
fn state_reporting_reaches_the_handler_only_when_set() {
    let handler_env = |objects: &[Value]| {
        find(objects, "DaemonSet", "nmstate-handler")["spec"]["template"]["spec"]["containers"][0]["env"]
            .to_string()
    };
    let off = render(&spec(json!({})), &config(), &facts()).unwrap();
    assert!(
        !handler_env(&off).contains("NNS_"),
        "the handler's defaults apply"
    );
    let reporting = json!({"stateReporting": {
        "excludeInterfaces": ["mv-*", "veth?"], "excludeTypes": ["vxlan"], "maxBytes": 131072,
    }});
    let objects = render(&spec(reporting), &config(), &facts()).unwrap();
    let container =
        &find(&objects, "DaemonSet", "nmstate-handler")["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(env(container, "NNS_EXCLUDE_INTERFACES"), "mv-*,veth?");
    assert_eq!(env(container, "NNS_EXCLUDE_TYPES"), "vxlan");
    assert_eq!(env(container, "NNS_MAX_BYTES"), "131072");
    let only_cap = render(
        &spec(json!({"stateReporting": {"maxBytes": 65536}})),
        &config(),
        &facts(),
    )
    .unwrap();
    assert!(!handler_env(&only_cap).contains("NNS_EXCLUDE"));
}

#[test]
fn a_stopping_handler_has_time_for_its_probes() {
    let objects = render(&spec(json!({})), &OperatorConfig::defaults(), &facts()).unwrap();
    let pod = &find(&objects, "DaemonSet", "nmstate-handler")["spec"]["template"]["spec"];
    assert_eq!(
        pod["terminationGracePeriodSeconds"], 150,
        "the probes' default 120 s and 30 s to commit"
    );
}

#[test]
fn the_operators_retry_settings_reach_the_handler() {
    let config = OperatorConfig::from_lookup(|name| match name {
        "NNCP_MAX_RETRIES" => Some("9".into()),
        "PROBE_TIMEOUT_SECONDS" => Some("60".into()),
        _ => None,
    })
    .unwrap();
    let objects = render(&spec(json!({})), &config, &facts()).unwrap();
    let handler =
        &find(&objects, "DaemonSet", "nmstate-handler")["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(env(handler, "NNCP_MAX_RETRIES"), "9");
    assert_eq!(env(handler, "PROBE_TIMEOUT_SECONDS"), "60");
    let pod = &find(&objects, "DaemonSet", "nmstate-handler")["spec"]["template"]["spec"];
    assert_eq!(
        pod["terminationGracePeriodSeconds"], 90,
        "the probes' 60 s and 30 s to commit"
    );
    let names: Vec<&str> = handler["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    assert!(
        !names.contains(&"NNCP_MAX_BACKOFF_SECONDS"),
        "unset ones are left to the handler's defaults"
    );
}

#[test]
fn infra_defaults_and_webhook_replicas_follow_upstream() {
    let objects = render(&spec(json!({})), &config(), &facts()).unwrap();
    let webhook = find(&objects, "Deployment", "nmstate-webhook");
    let pod = &webhook["spec"]["template"]["spec"];
    assert_eq!(pod["nodeSelector"], json!({"kubernetes.io/os": "linux"}));
    assert_eq!(pod["tolerations"].as_array().unwrap().len(), 2);
    assert_eq!(webhook["spec"]["replicas"], 1);
    assert_eq!(
        find(&objects, "PodDisruptionBudget", "nmstate-webhook")["spec"]["minAvailable"],
        0
    );
    let two = ClusterFacts {
        tolerated_infra_taints: 2,
        ..facts()
    };
    let objects = render(&spec(json!({})), &config(), &two).unwrap();
    assert_eq!(
        find(&objects, "Deployment", "nmstate-webhook")["spec"]["replicas"],
        2
    );
    let budget = find(&objects, "PodDisruptionBudget", "nmstate-webhook");
    assert_eq!(budget["spec"]["minAvailable"], 1);
    assert_eq!(budget["apiVersion"], "policy/v1");
}

#[test]
fn old_servers_get_what_they_know() {
    let old = ClusterFacts {
        server_minor: 20,
        ..facts()
    };
    let objects = render(&spec(json!({})), &config(), &old).unwrap();
    assert_eq!(
        find(&objects, "PodDisruptionBudget", "nmstate-webhook")["apiVersion"],
        "policy/v1beta1"
    );
    let policies = find(
        &objects,
        "CustomResourceDefinition",
        "nodenetworkconfigurationpolicies.nmstate.io",
    );
    assert!(!policies.to_string().contains("x-kubernetes-validations"));
}

#[test]
fn a_prefix_renames_every_operand_but_the_namespace() {
    let config =
        OperatorConfig::from_lookup(|name| (name == "HANDLER_PREFIX").then(|| "blue".into())).unwrap();
    let objects = render(&spec(json!({})), &config, &facts()).unwrap();
    let daemonset = find(&objects, "DaemonSet", "blue-nmstate-handler");
    assert_eq!(
        daemonset["spec"]["template"]["spec"]["serviceAccountName"],
        "blue-nmstate-handler"
    );
    let configuration = find(&objects, "ValidatingWebhookConfiguration", "blue-nmstate");
    assert_eq!(
        configuration["webhooks"][0]["clientConfig"]["service"]["name"],
        "blue-nmstate-webhook"
    );
    let webhook =
        &find(&objects, "Deployment", "blue-nmstate-webhook")["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(env(webhook, "WEBHOOK_CONFIGURATION"), "blue-nmstate");
    find(&objects, "Namespace", "nmstate");
    // Upstream's selectors carry the prefix too; selectors are immutable, so taking over
    // upstream's workloads needs the same ones.
    assert_eq!(
        daemonset["spec"]["selector"]["matchLabels"],
        json!({"name": "blue-nmstate-handler"})
    );
    let service = find(&objects, "Service", "blue-nmstate-webhook");
    assert_eq!(
        service["spec"]["selector"],
        json!({"name": "blue-nmstate-webhook"})
    );
}

/// Every workload the operator renders can be run as a process from its template (what the
/// tests that run the operator that way rely on): a command it knows, and no environment it
/// cannot provide.
#[test]
fn every_rendered_workload_is_runnable_without_a_kubelet() {
    use nmstate_localenv::kubelet::{PodFacts, invocation};
    let objects = render(&spec(json!({})), &config(), &facts()).unwrap();
    let mut programs = Vec::new();
    for workload in objects
        .iter()
        .filter(|o| o["kind"] == "DaemonSet" || o["kind"] == "Deployment")
    {
        let pod = &workload["spec"]["template"]["spec"];
        let container: k8s_openapi::api::core::v1::Container =
            serde_json::from_value(pod["containers"][0].clone()).unwrap();
        let facts = PodFacts {
            namespace: "nmstate",
            name: "pod-1",
            node: "node01",
            service_account: pod["serviceAccountName"].as_str().unwrap(),
        };
        let run = invocation(&container, &facts).unwrap();
        if workload["kind"] == "DaemonSet" {
            assert!(
                run.env.contains(&("NODE_NAME".into(), "node01".into())),
                "{run:?}"
            );
        }
        programs.push((run.program, run.args));
    }
    programs.sort();
    let expected: Vec<(String, Vec<String>)> = vec![
        ("nmstate-cluster".into(), vec![]),
        ("nmstate-handler".into(), vec!["run".into()]),
        ("nmstate-webhook".into(), vec![]),
    ];
    assert_eq!(programs, expected);
}

/// WEBHOOK_URL points the API server at a webhook outside the Service network (a development
/// environment), and gives the webhook a certificate for that host and the port to listen on.
#[test]
fn a_webhook_url_replaces_the_service() {
    let url = |value: &str| {
        let value = value.to_string();
        OperatorConfig::from_lookup(move |name| (name == "WEBHOOK_URL").then(|| value.clone()))
    };
    let objects = render(
        &spec(json!({})),
        &url("https://127.0.0.1:9444/").unwrap(),
        &facts(),
    )
    .unwrap();
    let validating = find(&objects, "ValidatingWebhookConfiguration", "nmstate");
    assert_eq!(
        validating["webhooks"][0]["clientConfig"],
        json!({"url": "https://127.0.0.1:9444/nodenetworkconfigurationpolicies-validate"})
    );
    let mutating = find(&objects, "MutatingWebhookConfiguration", "nmstate");
    for webhook in mutating["webhooks"].as_array().unwrap() {
        assert!(
            webhook["clientConfig"]["url"]
                .as_str()
                .unwrap()
                .starts_with("https://127.0.0.1:9444/")
        );
    }
    let webhook =
        &find(&objects, "Deployment", "nmstate-webhook")["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(env(webhook, "WEBHOOK_EXTRA_NAMES"), "127.0.0.1");
    assert_eq!(env(webhook, "WEBHOOK_BIND_ADDRESS"), "0.0.0.0:9444");
    // The port it listens on is the one its pod declares, probes and the NetworkPolicy allows.
    assert_eq!(webhook["ports"][0]["containerPort"], 9444);
    assert_eq!(webhook["readinessProbe"]["httpGet"]["port"], "webhook-server");
    let ingress = find(&objects, "NetworkPolicy", "allow-webhook-ingress");
    assert_eq!(ingress["spec"]["ingress"][0]["ports"][0]["port"], 9444);

    let default = render(&spec(json!({})), &config(), &facts()).unwrap();
    let validating = find(&default, "ValidatingWebhookConfiguration", "nmstate");
    assert_eq!(validating["webhooks"][0]["clientConfig"]["service"]["port"], 443);
    let webhook =
        &find(&default, "Deployment", "nmstate-webhook")["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(webhook["ports"][0]["containerPort"], 9443);

    for bad in [
        "http://127.0.0.1:9443",
        "https://:9443",
        "https://host:port",
        "127.0.0.1",
    ] {
        let error = url(bad).unwrap_err().to_string();
        assert!(error.contains("https://<host>[:<port>]"), "{bad}: {error}");
    }
}
