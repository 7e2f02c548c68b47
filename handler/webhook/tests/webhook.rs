//! The admission webhook against the real API server, which calls it over TLS with the CA
//! bundle the webhook's own certificate writer published: every validation rule through
//! `kubectl apply`, the mutations, certificate rotations under load, malformed input, and an
//! outage.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: failing loudly is the point

#[path = "webhook/fixture.rs"]
mod fixture;
#[path = "webhook/malformed.rs"]
mod malformed;

use fixture::{Fixture, fresh_tls_request, rendered};
use nmstate_api::labels::WEBHOOK_MUTATING_TIMESTAMP;
use nmstate_localenv::testing::eventually;
use nmstate_localenv::testing::proc_status_kib;
use nmstate_webhook::server::PATHS;
use serde_json::{Value, json};
use std::{
    collections::BTreeSet,
    time::{Duration, Instant},
};

/// kubectl's report of a refusal ends with the webhook's message.
fn assert_refused(result: Result<String, String>, message: &str) {
    let error = result.expect_err("refused");
    let reported = error
        .split_once("denied the request: ")
        .map(|(_, message)| message)
        .unwrap_or_else(|| panic!("not a webhook refusal: {error}"));
    assert_eq!(reported, message, "kubectl printed: {error}");
}

/// A rule the CRD's CEL rules and the webhook both enforce. A server that runs CEL (1.25+)
/// checks the schema before it calls validating webhooks, so there the CRD refuses, with its
/// message; on older servers the webhook does, with its own.
fn assert_refused_by_both(result: Result<String, String>, runs_cel: bool, webhook: &str, cel: &str) {
    if runs_cel {
        let error = result.expect_err("refused");
        assert!(
            error.contains(cel) && !error.contains("denied the request"),
            "refused by the CRD's rule ({cel}): {error}"
        );
    } else {
        assert_refused(result, webhook);
    }
}

fn bridge(name: &str) -> Value {
    json!({"desiredState": {"interfaces": [{"name": name, "type": "linux-bridge", "state": "up"}]}})
}

async fn settle(fixture: &Fixture, name: &str) {
    let status = json!({"status": {"conditions": [
        {"type": "Available", "status": "True", "reason": "SuccessfullyConfigured"},
    ]}});
    fixture.merge(name, &status, true).await.unwrap();
}

/// Upstream checks the name, in-progress, capture and label-value rules with its
/// ValidatingAdmissionPolicy `nncp-validation-policy` (1.30+). None is rendered here (README,
/// "Admission"); this is the test of that choice: on the current server each of those rules still
/// refuses with upstream's message, through the CRD's CEL rules and the webhook.
#[tokio::test]
async fn each_rule_accepts_and_refuses_through_kubectl() {
    let fixture = Fixture::start(&[]).await;
    let id = fixture.id.clone();
    let server = fixture.client.apiserver_version().await.unwrap();
    let runs_cel = nmstate_api::crd::server_minor(&server) >= 25;

    // Policy names are label values.
    let long = format!("{id}-{}", "n".repeat(63 - id.len() - 1));
    let mut named = fixture.policy("x", bridge("br1"));
    named["metadata"]["name"] = json!(long);
    fixture.kubectl_apply(&named).unwrap();
    let too_long = format!("{long}n");
    named["metadata"]["name"] = json!(too_long);
    assert_refused_by_both(
        fixture.kubectl_apply(&named),
        runs_cel,
        &format!(
            "invalid policy name: \"{too_long}\": must be no more than 63 characters or match label value format"
        ),
        "invalid policy name: must be no more than 63 characters or match label value format",
    );

    // No spec change while the last one is in progress.
    let policy = fixture.policy("progress", bridge("br1"));
    fixture.kubectl_apply(&policy).unwrap();
    let changed = fixture.policy("progress", bridge("br2"));
    assert_refused(
        fixture.kubectl_apply(&changed),
        &format!("policy {id}-progress is still in progress"),
    );
    settle(&fixture, &format!("{id}-progress")).await;
    fixture.kubectl_apply(&changed).unwrap();

    // capture is immutable.
    let mut spec = bridge("br1");
    spec["capture"] = json!({"gw": "routes.running.destination==\"0.0.0.0/0\""});
    fixture
        .kubectl_apply(&fixture.policy("capture", spec.clone()))
        .unwrap();
    settle(&fixture, &format!("{id}-capture")).await;
    let mut other_state = spec.clone();
    other_state["desiredState"]["interfaces"][0]["name"] = json!("br3");
    fixture
        .kubectl_apply(&fixture.policy("capture", other_state.clone()))
        .unwrap();
    settle(&fixture, &format!("{id}-capture")).await;
    other_state["capture"]["gw"] = json!("routes.running.destination==\"::/0\"");
    assert_refused_by_both(
        fixture.kubectl_apply(&fixture.policy("capture", other_state)),
        runs_cel,
        "invalid policy operation: capture field cannot be modified",
        "invalid policy operation: capture field cannot be modified",
    );

    // nodeSelector keys and values are label keys and values.
    let mut selector = bridge("br1");
    selector["nodeSelector"] = json!({SELECTOR_KEY: id, "kubernetes.io/hostname": "node-1"});
    fixture
        .kubectl_apply(&fixture.policy("selector", selector))
        .unwrap();
    let bad_key = json!({"desiredState": {}, "nodeSelector": {"bad key!": "x"}});
    assert_refused_by_both(
        fixture.kubectl_apply(&fixture.policy("badkey", bad_key)),
        runs_cel,
        "invalid label key: \"bad key!\": name part must consist of alphanumeric characters, '-', '_' or \
         '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or \
         '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')",
        "nodeSelector keys must be valid qualified names",
    );
    let bad_value = json!({"desiredState": {}, "nodeSelector": {"role": "a b"}});
    assert_refused_by_both(
        fixture.kubectl_apply(&fixture.policy("badvalue", bad_value)),
        runs_cel,
        "invalid label value: \"a b\": at key: \"role\": a valid label must be an empty string or consist of \
         alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character \
         (e.g. 'MyValue',  or 'my_value',  or '12345', regex used for validation is \
         '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')",
        "nodeSelector values must be valid label values",
    );

    // maxUnavailable is a count or a percentage.
    let mut limited = bridge("br1");
    limited["maxUnavailable"] = json!("25%");
    fixture
        .kubectl_apply(&fixture.policy("limit", limited.clone()))
        .unwrap();
    limited["maxUnavailable"] = json!("half");
    assert_refused_by_both(
        fixture.kubectl_apply(&fixture.policy("badlimit", limited)),
        runs_cel,
        "invalid spec.maxUnavailable: \"half\": must be a non-negative integer or a percentage from \"0%\" \
         to \"100%\" such as \"50%\"",
        "maxUnavailable must be a non-negative integer or a percentage from 0% to 100%",
    );

    // desiredState is an nmstate state; the message is nmstate's.
    let wrong =
        json!({"desiredState": {"interfaces": [{"name": "br1", "type": "linux-bridge", "mtu": "big"}]}});
    assert_refused(
        fixture.kubectl_apply(&fixture.policy("badstate", wrong)),
        EXPECTED_BAD_MTU,
    );
    let unknown = json!({"desiredState": {"interface": []}});
    assert_refused(
        fixture.kubectl_apply(&fixture.policy("unknownkey", unknown)),
        EXPECTED_UNKNOWN_KEY,
    );

    // capture expressions parse, and references name a capture.
    let mut broken = bridge("br1");
    broken["capture"] = json!({"gw": "routes.running.destination=="});
    let error = fixture
        .kubectl_apply(&fixture.policy("badcapture", broken))
        .unwrap_err();
    assert!(
        error.contains("denied the request: invalid spec.capture.gw: "),
        "{error}"
    );
    let dangling = json!({
        "capture": {"gw": "routes.running.destination==\"0.0.0.0/0\""},
        "desiredState": {"interfaces": [{"name": "{{ capture.nic.interfaces.0.name }}", "type": "ethernet"}]},
    });
    assert_refused(
        fixture.kubectl_apply(&fixture.policy("dangling", dangling)),
        "invalid spec.desiredState: it refers to capture \"nic\", which spec.capture does not define",
    );

    // A policy's probes: a DNS name and TCP addresses are the webhook's to check; the timeout's
    // bounds are the schema's, on every version.
    let mut probed = bridge("br1");
    probed["probes"] = json!({"timeoutSeconds": 30, "dns": {"host": "gw.sandbox.test"},
                              "tcp": [{"host": "10.77.0.1", "port": 53}]});
    fixture
        .kubectl_apply(&fixture.policy("probed", probed.clone()))
        .unwrap();
    probed["probes"]["dns"]["host"] = json!("not a name");
    let error = fixture
        .kubectl_apply(&fixture.policy("badprobe", probed.clone()))
        .unwrap_err();
    assert!(
        error.contains(
            "denied the request: invalid spec.probes.dns.host: \"not a name\": must be a DNS name ("
        ),
        "{error}"
    );
    probed["probes"] = json!({"timeoutSeconds": 0});
    let error = fixture
        .kubectl_apply(&fixture.policy("zerotimeout", probed))
        .unwrap_err();
    assert!(
        error.contains("spec.probes.timeoutSeconds")
            && error.contains("should be greater than or equal to 1")
            && !error.contains("denied the request"),
        "refused by the schema: {error}"
    );

    // The webhook counted each refusal.
    let bundle = fixture.published_bundle().await.unwrap();
    let port = fixture.port;
    let (metrics, _) = tokio::task::spawn_blocking(move || {
        fresh_tls_request(
            port,
            &bundle,
            "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
    })
    .await
    .unwrap()
    .unwrap();
    let count = |labels: &str| -> u64 {
        let prefix = format!("kubernetes_nmstate_webhook_admissions_total{{{labels}}} ");
        metrics
            .lines()
            .find_map(|line| line.strip_prefix(&prefix))
            .map(|value| value.trim().parse().unwrap())
            .unwrap_or(0)
    };
    // At least once per refusal: the API server may review an update again when it retries it.
    // Five of the eleven refusals are the CRD's on a server that runs CEL: the webhook never sees
    // them. The schema's bound on timeoutSeconds refuses before the webhook everywhere.
    let webhook_refusals = if runs_cel { 6 } else { 11 };
    assert!(
        count(r#"webhook="validate",result="denied""#) >= webhook_refusals,
        "{metrics}"
    );
    assert!(count(r#"webhook="validate",result="allowed""#) >= 8, "{metrics}");
    assert!(
        count(r#"webhook="timestamp-mutate",result="allowed""#) >= 20,
        "{metrics}"
    );
}

const SELECTOR_KEY: &str = fixture::SELECTOR;
/// nmstate's messages, with the path inside the desired state.
const EXPECTED_BAD_MTU: &str = "invalid spec.desiredState.interfaces[0]: invalid digit found in string";
const EXPECTED_UNKNOWN_KEY: &str = "invalid spec.desiredState.interface: unknown field `interface`, expected \
    one of `description`, `hostname`, `dns-resolver`, `route-rules`, `routes`, `interfaces`, `ovs-db`, `ovn`";

#[tokio::test]
async fn the_timestamp_annotation_appears_and_increases() {
    let fixture = Fixture::start(&[]).await;
    let policy = fixture.policy("stamp", bridge("br1"));
    let created = fixture.create(&policy).await.unwrap();
    let stamp = |object: &Value| -> u128 {
        object["metadata"]["annotations"][WEBHOOK_MUTATING_TIMESTAMP]
            .as_str()
            .unwrap()
            .parse()
            .unwrap()
    };
    let first = stamp(&created);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    assert!(
        first <= now && now - first < 60_000_000_000,
        "nanoseconds since the epoch: {first}"
    );
    let labels = json!({"metadata": {"labels": {"extra": "1"}}});
    let name = format!("{}-stamp", fixture.id);
    let updated = fixture.merge(&name, &labels, false).await.unwrap();
    assert!(stamp(&updated) > first);
}

#[tokio::test]
async fn a_status_without_conditions_gets_unknown_ones() {
    let fixture = Fixture::start(&[]).await;
    fixture
        .create(&fixture.policy("status", bridge("br1")))
        .await
        .unwrap();
    let name = format!("{}-status", fixture.id);
    let empty = json!({"status": {"conditions": []}});
    let written = fixture.merge(&name, &empty, true).await.unwrap();
    let conditions: Vec<(String, String)> = written["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["type"].as_str().unwrap().into(),
                c["status"].as_str().unwrap().into(),
            )
        })
        .collect();
    let unknown = |kind: &str| (kind.to_string(), "Unknown".to_string());
    assert_eq!(
        conditions,
        [
            unknown("Available"),
            unknown("Degraded"),
            unknown("Progressing"),
            unknown("Ignored")
        ]
    );
}

/// Every webhook of the rendered configuration calls a path the server serves, through the
/// Service the template renders, and refuses to run without the webhook (`Fail`) unless it is
/// cosmetic.
#[test]
fn the_rendered_configuration_matches_the_server() {
    let objects = rendered("nmstate");
    let service = objects.iter().find(|object| object["kind"] == "Service").unwrap();
    let service_name = service["metadata"]["name"].as_str().unwrap();
    assert_eq!(service["spec"]["ports"][0]["port"], 443);
    // The webhook container's named port (9443, or the WEBHOOK_URL's port).
    assert_eq!(service["spec"]["ports"][0]["targetPort"], "webhook-server");
    let mut paths = BTreeSet::new();
    for configuration in objects.iter().filter(|object| object["kind"] != "Service") {
        assert_eq!(configuration["metadata"]["name"], "nmstate");
        for webhook in configuration["webhooks"].as_array().unwrap() {
            let reference = &webhook["clientConfig"]["service"];
            assert_eq!(reference["name"], service_name);
            assert_eq!(reference["namespace"], "nmstate");
            assert_eq!(reference["port"], 443);
            assert!(
                webhook["clientConfig"].get("caBundle").is_none(),
                "the writer owns caBundle"
            );
            let path = reference["path"].as_str().unwrap();
            assert!(PATHS.contains(&path), "{path} is not served");
            paths.insert(path.to_string());
            assert_eq!(webhook["admissionReviewVersions"], json!(["v1"]));
            assert_eq!(webhook["sideEffects"], "None");
            let cosmetic = path.ends_with("status-mutate");
            assert_eq!(
                webhook["failurePolicy"],
                if cosmetic { "Ignore" } else { "Fail" },
                "{path}"
            );
            assert_eq!(webhook["rules"][0]["apiGroups"], json!(["nmstate.io"]));
        }
    }
    assert_eq!(
        paths.len(),
        3,
        "timestamp, status and validation webhooks: {paths:?}"
    );
}

/// With lifetimes of seconds, the CA and the serving certificate rotate several times while
/// the API server admits policies non-stop, and fresh connections verify against whatever
/// bundle is published at that instant: no admission and no handshake fails.
#[tokio::test]
async fn certificates_rotate_without_a_failed_request() {
    let fixture = Fixture::start(&[
        ("CA_ROTATE_INTERVAL", "16s"),
        ("CA_OVERLAP_INTERVAL", "8s"),
        ("CERT_ROTATE_INTERVAL", "5s"),
        ("CERT_OVERLAP_INTERVAL", "2s"),
    ])
    .await;
    let policy = fixture.policy("rotation", bridge("br1"));
    let deadline = Instant::now() + Duration::from_secs(40);
    let mut admissions = 0;
    let mut failures = Vec::new();
    let mut handshakes = 0;
    let mut authorities = BTreeSet::new();
    let mut served = BTreeSet::new();
    while Instant::now() < deadline {
        match fixture.dry_run(&policy).await {
            Ok(created) if created["metadata"]["annotations"][WEBHOOK_MUTATING_TIMESTAMP].is_string() => {}
            Ok(_) => failures.push("admitted without the webhook".to_string()),
            Err(error) => failures.push(format!("API server: {error}")),
        }
        admissions += 1;
        if admissions % 5 == 0 {
            let bundle = fixture.published_bundle().await.unwrap();
            authorities.insert(bundle.lines().nth(1).unwrap_or_default().to_string());
            let port = fixture.port;
            let request = tokio::task::spawn_blocking(move || {
                fresh_tls_request(
                    port,
                    &bundle,
                    "GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
                )
            });
            match request.await.unwrap() {
                Ok((response, certificate)) if response.starts_with("HTTP/1.1 200") => {
                    served.insert(certificate);
                }
                Ok((response, _)) => failures.push(format!("fresh connection: {response}")),
                Err(error) => failures.push(format!("fresh connection: {error}")),
            }
            handshakes += 1;
        }
    }
    println!(
        "{admissions} admissions, {handshakes} fresh handshakes, {} CA bundles, {} serving certificates",
        authorities.len(),
        served.len()
    );
    assert_eq!(failures, Vec::<String>::new(), "{}", fixture.log());
    assert!(
        authorities.len() >= 3,
        "the CA rotated at least twice: {}",
        authorities.len()
    );
    assert!(
        served.len() >= 6,
        "the serving certificate rotated: {}",
        served.len()
    );
    assert!(admissions >= 100);
}

/// Two replicas: one writes the certificates, both serve the one in the Secret; when the
/// writer dies, the other takes the Lease over and the rotations go on.
#[tokio::test]
async fn two_replicas_share_one_certificate_writer() {
    let mut fixture = Fixture::start(&[
        ("CA_ROTATE_INTERVAL", "1h"),
        ("CERT_ROTATE_INTERVAL", "6s"),
        ("CERT_OVERLAP_INTERVAL", "3s"),
    ])
    .await;
    let second_port = nmstate_localenv::testing::free_port();
    let second = fixture.start_replica(second_port, "b");
    let served = |port: u16, bundle: String| async move {
        tokio::task::spawn_blocking(move || {
            fresh_tls_request(
                port,
                &bundle,
                "GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            )
            .ok()
            .filter(|(response, _)| response.starts_with("HTTP/1.1 200"))
            .map(|(_, certificate)| certificate)
        })
        .await
        .unwrap()
    };
    // Both end up serving the same certificate (each follows the Secret).
    let port = fixture.port;
    eventually(
        "both replicas serve the same certificate",
        Duration::from_secs(20),
        || async {
            let bundle = fixture.published_bundle().await?;
            let first = served(port, bundle.clone()).await?;
            let other = served(second_port, bundle).await?;
            (first == other).then_some(())
        },
    )
    .await
    .unwrap();
    let leases: kube::Api<k8s_openapi::api::coordination::v1::Lease> =
        kube::Api::namespaced(fixture.client.clone(), &fixture.id);
    let holder = || async {
        let lease = leases.get("nmstate-webhook-certs").await.ok()?;
        lease.spec?.holder_identity
    };
    let first_holder = holder().await.unwrap();
    let writers = [fixture.log(), second.log()]
        .iter()
        .filter(|log| log.contains("made a new serving certificate"))
        .count();
    assert_eq!(writers, 1, "one writer: {first_holder}");

    // Kill the writer; the other takes over and makes the next serving certificate.
    let (mut survivor, survivor_port) = if first_holder.ends_with("-a") {
        fixture.webhook.take().unwrap().kill();
        (second, second_port)
    } else {
        let mut second = second;
        second.kill();
        (fixture.webhook.take().unwrap(), port)
    };
    eventually(
        "the other replica rotates the certificate",
        Duration::from_secs(30),
        || async {
            survivor
                .log()
                .contains("made a new serving certificate")
                .then_some(())
        },
    )
    .await
    .unwrap();
    assert_ne!(holder().await.unwrap(), first_holder);
    let bundle = fixture.published_bundle().await.unwrap();
    assert!(served(survivor_port, bundle).await.is_some());
    survivor.terminate(Duration::from_secs(10));
}

/// 1000 generated malformed policies through the API server, and malformed requests straight
/// to the webhook: every one refused with a message, valid policies still admitted, the
/// server up throughout and its memory flat.
#[tokio::test]
async fn malformed_policies_are_refused_without_harm() {
    let fixture = Fixture::start(&[]).await;
    let pid = fixture.webhook.as_ref().unwrap().pid();
    let mut generator = malformed::Generator::new(0x5eed_cafe);
    let mut resident = Vec::new();
    let mut by_kind = std::collections::BTreeMap::<&str, usize>::new();
    for round in 0..5 {
        for index in 0..200 {
            let (kind, spec) = generator.next_case();
            *by_kind.entry(kind).or_default() += 1;
            let policy = fixture.policy(&format!("m{round}-{index}"), spec.clone());
            match fixture.dry_run(&policy).await {
                Ok(_) => panic!("{kind} admitted: {spec}"),
                Err(kube::Error::Api(status)) => assert!(!status.message.is_empty(), "{kind}: no message"),
                Err(error) => panic!("{kind}: not an API refusal: {error}"),
            }
            if index % 10 == 0 {
                fixture
                    .dry_run(&fixture.policy("valid", bridge("br1")))
                    .await
                    .unwrap_or_else(|error| panic!("a valid policy after {kind}: {error}"));
            }
        }
        let bundle = fixture.published_bundle().await.unwrap();
        let port = fixture.port;
        let raw = tokio::task::spawn_blocking(move || malformed::send_raw(port, &bundle))
            .await
            .unwrap();
        assert_eq!(raw, Vec::<String>::new(), "raw requests answered wrongly");
        resident.push(proc_status_kib(pid, "VmRSS:"));
    }
    println!("cases: {by_kind:?}; webhook RSS after each round (KiB): {resident:?}");
    let growth = resident[4].saturating_sub(resident[1]);
    assert!(
        growth < 6 * 1024,
        "RSS grew {growth} KiB over 600 cases: {resident:?}"
    );
    assert!(
        fixture.webhook.as_ref().unwrap().log().find("panicked").is_none(),
        "{}",
        fixture.log()
    );
}

/// `failurePolicy: Fail`: while the webhook is down the API server refuses policies and names
/// the webhook; once it is back, they are admitted again.
#[tokio::test]
async fn an_outage_refuses_policies_with_a_clear_error() {
    let mut fixture = Fixture::start(&[]).await;
    fixture.webhook.take().unwrap().terminate(Duration::from_secs(10));
    let error = fixture
        .kubectl_apply(&fixture.policy("outage", bridge("br1")))
        .unwrap_err();
    assert!(
        error.contains(fixture::UNREACHABLE) && error.contains("connection refused"),
        "{error}"
    );
    println!("while down: {error}");
    fixture.start_webhook();
    fixture.wait_until_admitting().await;
    fixture
        .kubectl_apply(&fixture.policy("outage", bridge("br1")))
        .unwrap();
}
