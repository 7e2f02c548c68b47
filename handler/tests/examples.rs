//! The repository's example policies that this kernel supports, enacted by the handler on real
//! sandbox nodes (one node each, side by side): each reaches Available and the node's real
//! state shows it. And policies that would cut a node off, rolled back by the probes, with the
//! enactment naming the probe and the node's default route and DNS as before. The examples the
//! sandbox cannot do are in `unsupported_kernel.rs`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: failing loudly is the point

mod common;

use common::{
    AVAILABLE, FAILING,
    examples::{
        DEFAULT_ROUTE, DHCP_LEASE_ON_ETH1, SANDBOX_DNS, Shows, as_written, enact, enact_after, shows,
    },
    true_condition,
};
use nmstate_localenv::testing::{install_crds, shared_env};
use serde_json::{Value, json};

#[tokio::test]
async fn the_examples_this_kernel_supports_are_enacted_for_real() {
    let env = shared_env().await.unwrap();
    let client = env.client().await.unwrap();
    install_crds(&client).await.unwrap();

    let bridge = [
        shows(&["ip", "-4", "-br", "addr", "show", "br1"], &["10.77.1."]),
        shows(&["ip", "-br", "link", "show", "master", "br1"], &["eth1"]),
        DEFAULT_ROUTE,
    ];
    let static_ip = [shows(
        &["ip", "-4", "-br", "addr", "show", "eth2"],
        &["10.244.0.2/24"],
    )];
    let route = [
        shows(&["ip", "-4", "-br", "addr", "show", "eth2"], &["192.0.2.251/24"]),
        shows(
            &["ip", "route", "show", "198.51.100.0/24"],
            &["via 192.0.2.2 dev eth2"],
        ),
    ];
    // The example's name servers answer nowhere, so the DNS probe would (rightly) roll it back;
    // here it names the sandbox's server instead, which replaces every other.
    let dns = [Shows {
        command: &["cat", "/etc/resolv.conf"],
        contains: &["search example.com example.org", "nameserver 10.77.0.1"],
        lacks: &["192.0.2.251", "search sandbox.test"],
    }];
    fn sandbox_name_server(policy: &mut Value) {
        policy["spec"]["desiredState"]["dns-resolver"]["config"]["server"] = json!(["10.77.0.1"]);
    }
    let bridges = [
        shows(&["ip", "-br", "link", "show", "master", "br0"], &["eth1"]),
        shows(&["ip", "-br", "link", "show", "master", "br1"], &["eth2"]),
    ];
    let bridge_gone = [
        DHCP_LEASE_ON_ETH1,
        Shows {
            command: &["ip", "-br", "link"],
            contains: &["eth1"],
            lacks: &["br1"],
        },
    ];
    let dns_cleaned_up = [Shows {
        lacks: &["example.com"],
        ..SANDBOX_DNS
    }];
    // The management network's DHCP reserves the node's address for eth0's MAC, which the
    // bridge takes over: the node keeps its address and default route, now on the bridge.
    let default_bridge = [
        shows(&["ip", "-br", "link", "show", "master", "brext"], &["eth0"]),
        shows(&["ip", "route", "show", "default"], &["via 10.77.0.1 dev brext"]),
        shows(&["ip", "-4", "-br", "addr", "show", "brext"], &["10.77.0."]),
    ];
    // The example's DNS name and TCP service are placeholders: here they are the sandbox's.
    fn sandbox_probe_targets(policy: &mut Value) {
        policy["spec"]["probes"]["dns"]["host"] = json!("gw.sandbox.test");
        policy["spec"]["probes"]["tcp"] = json!([{"host": "10.77.0.1", "port": 53}]);
    }
    let probes = [shows(
        &["ip", "-4", "-br", "addr", "show", "eth2"],
        &["192.0.2.10/24"],
    )];
    // A preview changes nothing: no br1, in the kernel or in NetworkManager.
    let unchanged = [
        Shows {
            command: &["nmcli", "-t", "-f", "NAME,DEVICE", "connection"],
            contains: &["eth0"],
            lacks: &["br1"],
        },
        Shows {
            command: &["ip", "-br", "link"],
            contains: &["eth1"],
            lacks: &["br1"],
        },
    ];
    let enacted = futures::join!(
        enact(&client, "linux-bridge", as_written, AVAILABLE, &bridge),
        enact(&client, "static-ip", as_written, AVAILABLE, &static_ip),
        enact(&client, "dhcp", as_written, AVAILABLE, &[DHCP_LEASE_ON_ETH1]),
        enact(&client, "ethernet", as_written, AVAILABLE, &[DHCP_LEASE_ON_ETH1]),
        enact(&client, "route", as_written, AVAILABLE, &route),
        enact(&client, "dns", sandbox_name_server, AVAILABLE, &dns),
        enact(&client, "bridges", as_written, AVAILABLE, &bridges),
        enact(
            &client,
            "linux-bridge-maxunavailable",
            as_written,
            AVAILABLE,
            &bridge
        ),
        enact_after(
            &client,
            &[("linux-bridge", as_written)],
            ("detach-bridge-port-and-restore-eth", as_written),
            AVAILABLE,
            &bridge_gone,
        ),
        // DNS from eth1's DHCP lease stays: the sandbox's DHCP, like most, hands out a server.
        enact_after(
            &client,
            &[("dhcp", as_written), ("dns", sandbox_name_server)],
            ("dns-cleanup", as_written),
            AVAILABLE,
            &dns_cleaned_up,
        ),
        enact(
            &client,
            "capture-default-bridge",
            as_written,
            AVAILABLE,
            &default_bridge
        ),
        enact(&client, "probes", sandbox_probe_targets, AVAILABLE, &probes),
        enact(
            &client,
            "preview",
            as_written,
            ("Previewed", "WouldChange"),
            &unchanged
        ),
    );
    let bridge_enactment = enacted.0;
    let desired = &bridge_enactment.status.unwrap().desired_state.unwrap().0;
    assert_eq!(desired["interfaces"][0]["bridge"]["port"][0]["name"], "eth1");
    let captured = &enacted.10.status.unwrap().desired_state.unwrap().0["interfaces"][0];
    assert_eq!(captured["bridge"]["port"][0]["name"], "eth0", "{captured}");
    let mac = captured["mac-address"]
        .as_str()
        .unwrap_or_default()
        .to_lowercase();
    assert!(mac.starts_with("02:77:0a:"), "eth0's MAC captured: {captured}");
    let reports = enacted.11.status.unwrap().probes.unwrap();
    let ran: Vec<(&str, bool, Option<&str>)> = reports
        .iter()
        .map(|report| (report.name.as_str(), report.selected, report.result.as_deref()))
        .collect();
    assert_eq!(
        ran,
        [
            ("ping", false, None),
            ("ping6", false, None),
            ("dns", true, Some("Passed")),
            ("tcp 10.77.0.1:53", true, Some("Passed")),
            ("api-server", true, Some("Passed")),
            ("node-readiness", true, Some("Passed")),
        ]
    );
    let preview = enacted.12.status.unwrap().preview.unwrap();
    assert_eq!(preview.diff.unwrap().0["interfaces"][0]["name"], "br1");
}

#[tokio::test]
async fn changes_that_cut_a_node_off_are_rolled_back_and_the_probe_named() {
    let env = shared_env().await.unwrap();
    let client = env.client().await.unwrap();
    install_crds(&client).await.unwrap();

    fn wrong_default_gateway(policy: &mut Value) {
        policy["spec"]["desiredState"] = json!({"routes": {"config": [{
            "destination": "0.0.0.0/0", "next-hop-address": "10.77.0.254", "next-hop-interface": "eth0",
            "metric": 1, "table-id": 254,
        }]}});
    }
    let as_before = [DEFAULT_ROUTE, SANDBOX_DNS];
    let (gateway, dns, no_dns) = futures::join!(
        // The route example, turned into a default route through a gateway that is not there.
        enact(&client, "route", wrong_default_gateway, FAILING, &as_before),
        // The dns example as written: its name servers answer nowhere.
        enact(&client, "dns", as_written, FAILING, &as_before),
        // dns-cleanup where the only DNS server is eth0's static setting: none would be left.
        enact(&client, "dns-cleanup", as_written, FAILING, &as_before),
    );
    for (enactment, probe) in [(gateway, "ping"), (dns, "dns"), (no_dns, "dns")] {
        let message = true_condition(&enactment).unwrap().message;
        assert!(
            message.contains(&format!("failed running probe '{probe}' after network changes")),
            "{message}"
        );
        assert!(
            message.starts_with("error reconciling NodeNetworkConfigurationPolicy"),
            "{message}"
        );
        assert!(
            message.contains("rolling back desired state configuration") && message.contains("currentState"),
            "the message shows the state after the rollback: {message}"
        );
    }
}
