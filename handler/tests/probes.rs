//! A policy's own probes (`spec.probes`), on a real sandbox node through `nmstate-handler run`:
//! a broken IPv4 gateway is rolled back with `ping` named, and committed when the policy turns
//! the gateway probe off; TCP probes pass and fail for real; IPv6's gateway is probed apart from
//! IPv4's. Each enactment lists every probe: selected or not, result, duration.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: failing loudly is the point

mod common;

use common::{AVAILABLE, FAILING, start_handler, stdout_of, stop_handler, wait_for_condition};
use kube::{
    Api,
    api::{DeleteParams, PostParams},
};
use nmstate_api::{
    NodeNetworkConfigurationEnactment, NodeNetworkConfigurationPolicy, condition::find_condition,
    probes::ProbeReport,
};
use nmstate_localenv::testing::{TestNode, eventually, install_crds, shared_env, unique_name};
use serde_json::{Value, json};
use std::{collections::BTreeMap, time::Duration};

fn policy(name: &str, node: &str, desired: Value, probes: Value) -> NodeNetworkConfigurationPolicy {
    serde_json::from_value(json!({
        "apiVersion": "nmstate.io/v1", "kind": "NodeNetworkConfigurationPolicy",
        "metadata": {"name": name},
        "spec": {
            "nodeSelector": {"kubernetes.io/hostname": node},
            "desiredState": desired,
            "probes": probes,
        },
    }))
    .unwrap()
}

/// A default route of `family` through `gateway` on `interface`, preferred over any other
/// (metric 1).
fn default_route(destination: &str, gateway: &str, interface: &str, state: Option<&str>) -> Value {
    let mut route = json!({
        "destination": destination, "next-hop-address": gateway, "next-hop-interface": interface,
        "metric": 1, "table-id": 254,
    });
    if let Some(state) = state {
        route["state"] = json!(state);
    }
    json!({"routes": {"config": [route]}})
}

/// The enactment's probe reports by name: (selected, result, message).
fn reports(enactment: &NodeNetworkConfigurationEnactment) -> BTreeMap<String, ProbeReport> {
    enactment
        .status
        .as_ref()
        .and_then(|status| status.probes.clone())
        .unwrap_or_default()
        .into_iter()
        .map(|report| (report.name.clone(), report))
        .collect()
}

fn result(reports: &BTreeMap<String, ProbeReport>, name: &str) -> (bool, Option<String>) {
    let report = reports
        .get(name)
        .unwrap_or_else(|| panic!("no report of {name}: {reports:?}"));
    (report.selected, report.result.clone())
}

fn passed() -> (bool, Option<String>) {
    (true, Some("Passed".into()))
}

fn failing_message(enactment: &NodeNetworkConfigurationEnactment) -> String {
    find_condition(&enactment.status.as_ref().unwrap().conditions, "Failing")
        .unwrap()
        .message
        .clone()
}

#[tokio::test]
async fn a_policys_probes_decide_what_is_rolled_back_and_the_enactment_reports_each() {
    let env = shared_env().await.unwrap();
    let client = env.client().await.unwrap();
    install_crds(&client).await.unwrap();
    let node_name = unique_name("probes");
    let node = TestNode::start(&env, &node_name, &BTreeMap::new()).await.unwrap();
    let policies: Api<NodeNetworkConfigurationPolicy> = Api::all(client.clone());
    let enactments: Api<NodeNetworkConfigurationEnactment> = Api::all(client.clone());
    let log = std::env::temp_dir().join(format!("{node_name}.log"));
    let mut handler = start_handler(&node, &log);
    let enactment = |policy: &str| format!("{node_name}.{policy}");
    let create = |name: &str, desired: Value, probes: Value| {
        let policy = policy(name, &node_name, desired, probes);
        let policies = policies.clone();
        async move { policies.create(&PostParams::default(), &policy).await.unwrap() }
    };
    let delete = |name: String| {
        let policies = policies.clone();
        let enactments = enactments.clone();
        let enactment = enactment(&name);
        async move {
            policies.delete(&name, &DeleteParams::default()).await.unwrap();
            eventually("the enactment is removed", Duration::from_secs(30), || async {
                enactments
                    .get_opt(&enactment)
                    .await
                    .unwrap()
                    .is_none()
                    .then_some(())
            })
            .await
            .unwrap();
        }
    };
    let routes = || stdout_of(&node, &["ip", "route"]);
    let wrong_gateway = default_route("0.0.0.0/0", "10.77.0.254", "eth0", None);

    // A default gateway that does not answer: rolled back, with `ping` named, within the
    // policy's 3 s per probe. No IPv6 default route, so no `ping6`.
    let broken = format!("{node_name}-broken");
    create(&broken, wrong_gateway.clone(), json!({"timeoutSeconds": 3})).await;
    let failed = wait_for_condition(&enactments, &enactment(&broken), FAILING, Duration::from_secs(90)).await;
    let message = failing_message(&failed);
    assert!(
        message.contains("failed running probe 'ping' after network changes"),
        "{message}"
    );
    let reported = reports(&failed);
    assert_eq!(result(&reported, "ping"), (true, Some("Failed".into())));
    let ping = &reported["ping"];
    let took = ping.duration_milliseconds.unwrap();
    // The handler's default here is 5 s: one failing attempt plus a retry would take longer.
    assert!(
        (1000..4000).contains(&took),
        "ping took {took} ms with a 3 s timeout"
    );
    assert!(
        ping.message.as_deref().unwrap().contains("10.77.0.254"),
        "{ping:?}"
    );
    assert_eq!(result(&reported, "ping6"), (false, None));
    assert!(
        reported["ping6"]
            .message
            .as_deref()
            .unwrap()
            .contains("no IPv6 default route"),
        "{reported:?}"
    );
    // The others ran beside it, and passed (the switch still answers DNS on-link).
    for beside in ["dns", "api-server", "node-readiness"] {
        assert_eq!(result(&reported, beside), passed(), "{beside}");
    }
    assert!(!routes().contains("10.77.0.254"), "rolled back: {}", routes());
    delete(broken).await;

    // The same change with the gateway probe off is committed; a TCP probe to the switch's DNS
    // port passes.
    let unprobed = format!("{node_name}-unprobed");
    let probes = json!({"gateway": {"enabled": false}, "tcp": [{"host": "10.77.0.1", "port": 53}]});
    create(&unprobed, wrong_gateway.clone(), probes).await;
    let applied = wait_for_condition(
        &enactments,
        &enactment(&unprobed),
        AVAILABLE,
        Duration::from_secs(60),
    )
    .await;
    assert!(
        routes().contains("default via 10.77.0.254 dev eth0"),
        "{}",
        routes()
    );
    let reported = reports(&applied);
    for off in ["ping", "ping6"] {
        assert_eq!(result(&reported, off), (false, None), "{off}");
        assert_eq!(reported[off].message.as_deref(), Some("turned off by the policy"));
    }
    for ran in ["dns", "tcp 10.77.0.1:53", "api-server", "node-readiness"] {
        assert_eq!(result(&reported, ran), passed(), "{ran}");
        assert!(reported[ran].duration_milliseconds.is_some(), "{ran}");
    }
    let names: Vec<&str> = applied
        .status
        .as_ref()
        .unwrap()
        .probes
        .as_ref()
        .unwrap()
        .iter()
        .map(|r| r.name.as_str())
        .collect();
    assert_eq!(
        names,
        [
            "ping",
            "ping6",
            "dns",
            "tcp 10.77.0.1:53",
            "api-server",
            "node-readiness"
        ]
    );
    delete(unprobed).await;

    // Cleaned up by a policy that removes the route; a TCP probe to a closed port first rolls
    // that back, even with every other probe passing.
    let removal = default_route("0.0.0.0/0", "10.77.0.254", "eth0", Some("absent"));
    let closed = format!("{node_name}-closed");
    let probes = json!({"timeoutSeconds": 2, "tcp": [{"host": "10.77.0.1", "port": 9}]});
    create(&closed, removal.clone(), probes).await;
    let failed = wait_for_condition(&enactments, &enactment(&closed), FAILING, Duration::from_secs(60)).await;
    let message = failing_message(&failed);
    assert!(
        message.contains("failed running probe 'tcp 10.77.0.1:9' after network changes"),
        "{message}"
    );
    assert!(routes().contains("10.77.0.254"), "rolled back: {}", routes());
    delete(closed).await;
    let cleanup = format!("{node_name}-cleanup");
    create(&cleanup, removal, json!({})).await;
    wait_for_condition(
        &enactments,
        &enactment(&cleanup),
        AVAILABLE,
        Duration::from_secs(60),
    )
    .await;
    assert!(!routes().contains("10.77.0.254"), "{}", routes());
    delete(cleanup).await;

    // IPv6: a default route through the switch's IPv6 gateway. Once it is there, `ping6` is
    // selected; a second, broken IPv6 gateway fails `ping6` while `ping` passes.
    let ipv6 = format!("{node_name}-ipv6");
    let mut desired = default_route("::/0", "fd00:77:1::1", "eth1", None);
    desired["routes"]["config"][0]["metric"] = json!(50);
    desired["interfaces"] = json!([{
        "name": "eth1", "type": "ethernet", "state": "up",
        "ipv6": {"enabled": true, "autoconf": false, "dhcp": false,
                 "address": [{"ip": "fd00:77:1::50", "prefix-length": 64}]},
    }]);
    create(&ipv6, desired, json!({"timeoutSeconds": 5})).await;
    wait_for_condition(&enactments, &enactment(&ipv6), AVAILABLE, Duration::from_secs(60)).await;
    eventually("the IPv6 gateway answers", Duration::from_secs(20), || async {
        let output = node
            .command("ping")
            .unwrap()
            .args(["-6", "-c1", "-W1", "fd00:77:1::1"])
            .output()
            .unwrap();
        output.status.success().then_some(())
    })
    .await
    .unwrap();
    let broken6 = format!("{node_name}-broken6");
    create(
        &broken6,
        default_route("::/0", "fd00:77:1::254", "eth1", None),
        json!({"timeoutSeconds": 3}),
    )
    .await;
    let failed = wait_for_condition(
        &enactments,
        &enactment(&broken6),
        FAILING,
        Duration::from_secs(90),
    )
    .await;
    let message = failing_message(&failed);
    assert!(
        message.contains("failed running probe 'ping6' after network changes"),
        "{message}"
    );
    let reported = reports(&failed);
    assert_eq!(result(&reported, "ping"), passed());
    assert_eq!(result(&reported, "ping6"), (true, Some("Failed".into())));
    let routes6 = stdout_of(&node, &["ip", "-6", "route"]);
    assert!(
        routes6.contains("default via fd00:77:1::1 dev eth1") && !routes6.contains("fd00:77:1::254"),
        "rolled back: {routes6}"
    );
    delete(broken6).await;
    delete(ipv6).await;

    stop_handler(&mut handler);
}
