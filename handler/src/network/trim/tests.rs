use super::*;
use serde_json::json;

fn mac_vlan(index: usize, state: &str) -> Value {
    json!({
        "name": format!("mv{index:03}"), "type": "mac-vlan", "state": state,
        "mac-address": "52:C6:80:44:60:31", "mtu": 1500, "min-mtu": 68, "max-mtu": 65535,
        "ipv4": {"enabled": false, "forwarding": false}, "ipv6": {"enabled": false},
        "accept-all-mac-addresses": false,
        "ethtool": {"feature": {"rx-gro": false, "rx-gro-list": false, "rx-lro": false,
            "rx-udp-gro-forwarding": false, "tx-generic-segmentation": true, "tx-nocache-copy": false}},
        "mac-vlan": {"base-iface": "eth1", "mode": "bridge", "promiscuous": true},
    })
}

fn ethernet(name: &str) -> Value {
    json!({
        "name": name, "type": "ethernet", "state": "up", "mac-address": "02:00:00:00:00:01", "mtu": 1500,
        "ipv4": {"enabled": true, "address": [{"ip": "10.77.0.11", "prefix-length": 24}]},
        "ipv6": {"enabled": false},
        "ethtool": {"feature": {"rx-gro": true, "tx-checksum-ip-generic": true}},
        "lldp": {"enabled": false},
    })
}

/// eth0 and eth1 (managed), then `ignored` mac-vlans NetworkManager ignores and `managed` it manages.
fn node(ignored: usize, managed: usize) -> Value {
    let mut interfaces = vec![ethernet("eth0"), ethernet("eth1")];
    interfaces.extend((0..ignored).map(|index| mac_vlan(index, "ignore")));
    interfaces.extend((ignored..ignored + managed).map(|index| mac_vlan(index, "up")));
    json!({
        "hostname": {"running": "node01"},
        "dns-resolver": {"running": {"server": ["10.77.0.1"]}},
        "routes": {
            "config": [{"destination": "0.0.0.0/0", "next-hop-interface": "eth0", "next-hop-address": "10.77.0.1"}],
            "running": [
                {"destination": "0.0.0.0/0", "next-hop-interface": "eth0", "next-hop-address": "10.77.0.1", "metric": 100, "table-id": 254},
                {"destination": "10.77.0.0/24", "next-hop-interface": "eth0", "metric": 100, "table-id": 254},
            ],
        },
        "interfaces": interfaces,
    })
}

fn interface<'a>(state: &'a Value, name: &str) -> Option<&'a Value> {
    state["interfaces"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["name"] == name)
}

fn keys(interface: &Value) -> Vec<&str> {
    let mut keys: Vec<&str> = interface
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort();
    keys
}

#[test]
fn a_state_under_the_cap_is_reported_whole() {
    let state = node(10, 0);
    let (reported, trimming) = to_cap(state.clone(), size(&state));
    assert_eq!((reported, trimming), (state, None));
}

#[test]
fn virtual_interfaces_lose_their_details_first_and_the_nics_keep_theirs() {
    let state = node(600, 0);
    let full = size(&state);
    let (reported, trimming) = to_cap(state.clone(), full * 3 / 4);
    let trimming = trimming.expect("trimmed");
    assert!(size(&reported) <= full * 3 / 4);
    assert_eq!(trimming.reported_bytes, size(&reported) as u64);
    assert_eq!(
        (trimming.state_bytes, trimming.max_bytes),
        (full as u64, (full * 3 / 4) as u64)
    );
    assert!(trimming.interfaces_without_details > 0);
    assert_eq!(
        (
            trimming.interfaces_summarized,
            trimming.interfaces_omitted,
            trimming.running_routes_omitted
        ),
        (0, 0, 0)
    );
    assert_eq!(interface(&reported, "eth0"), interface(&state, "eth0"));
    assert_eq!(
        keys(interface(&reported, "mv000").unwrap()),
        [
            "ipv4",
            "ipv6",
            "mac-address",
            "mac-vlan",
            "mtu",
            "name",
            "state",
            "type"
        ]
    );
    assert_eq!(
        interface(&reported, "mv599"),
        interface(&state, "mv599"),
        "trimmed no more than needed"
    );
    assert_eq!(reported["routes"], state["routes"]);
}

#[test]
fn ignored_interfaces_are_trimmed_before_managed_ones() {
    let state = node(300, 300);
    let (reported, _) = to_cap(state.clone(), size(&state) * 9 / 10);
    assert_eq!(
        keys(interface(&reported, "mv000").unwrap()).len(),
        8,
        "ignored: without details"
    );
    assert_eq!(
        interface(&reported, "mv300"),
        interface(&state, "mv300"),
        "managed: whole"
    );
}

#[test]
fn then_they_are_summarized_then_the_nics_lose_details_then_routes_then_interfaces_go() {
    let state = node(600, 0);
    let full = size(&state);
    let mut previous: Option<StateTrimming> = None;
    // From a cap that needs a little trimming down to one that leaves almost nothing.
    for cap in (1_000..full).rev().step_by(2_999) {
        let (reported, trimming) = to_cap(state.clone(), cap);
        let trimming = trimming.unwrap();
        assert!(
            size(&reported) <= cap,
            "{} bytes above the cap of {cap}",
            size(&reported)
        );
        assert_eq!(trimming.reported_bytes, size(&reported) as u64);
        let eth0 = interface(&reported, "eth0");
        let virtual_left = reported["interfaces"].as_array().unwrap().len().saturating_sub(2);
        if trimming.interfaces_summarized < 600 && trimming.interfaces_omitted == 0 {
            assert_eq!(
                eth0,
                interface(&state, "eth0"),
                "cap {cap}: NICs keep details while virtual ones have some"
            );
        }
        if trimming.running_routes_omitted > 0 {
            assert_eq!(
                trimming.interfaces_summarized + trimming.interfaces_omitted,
                602,
                "cap {cap}: routes go once every interface is summarized"
            );
            assert_eq!(
                reported["routes"]["running"][0]["destination"], "0.0.0.0/0",
                "the configured route stays"
            );
        }
        if trimming.interfaces_omitted > 0 {
            assert_eq!(
                trimming.running_routes_omitted, 1,
                "cap {cap}: interfaces go after the routes"
            );
            if virtual_left > 0 {
                assert_eq!(
                    keys(eth0.unwrap()),
                    ["name", "state", "type"],
                    "cap {cap}: NICs go last"
                );
            }
        }
        if let Some(previous) = &previous {
            assert!(
                trimming.interfaces_omitted >= previous.interfaces_omitted
                    && trimming.interfaces_summarized + trimming.interfaces_omitted
                        >= previous.interfaces_summarized + previous.interfaces_omitted,
                "a smaller cap trims more: {previous:?} then {trimming:?}"
            );
        }
        previous = Some(trimming);
    }
    assert!(
        previous.unwrap().interfaces_omitted > 500,
        "the smallest cap leaves few interfaces"
    );
}

#[test]
fn the_same_state_is_trimmed_the_same_way() {
    let state = node(300, 300);
    let cap = size(&state) / 3;
    let mut shuffled = state.clone();
    shuffled["interfaces"].as_array_mut().unwrap().reverse();
    let (once, _) = to_cap(state.clone(), cap);
    let (again, _) = to_cap(state, cap);
    assert_eq!(once, again);
    let names = |state: &Value| {
        let mut names: Vec<String> = state["interfaces"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["name"].to_string())
            .collect();
        names.sort();
        names
    };
    assert_eq!(
        names(&to_cap(shuffled, cap).0),
        names(&once),
        "whatever order nmstate lists them in"
    );
}

#[test]
fn when_other_keys_alone_are_too_large_only_the_interfaces_are_reported() {
    let mut state = node(2, 0);
    let servers: Vec<String> = (0..5_000).map(|index| format!("2001:db8::{index:x}")).collect();
    state["dns-resolver"]["running"]["server"] = json!(servers);
    let cap = 4_096;
    let (reported, trimming) = to_cap(state, cap);
    assert!(size(&reported) <= cap);
    assert_eq!(keys(&reported), ["interfaces"]);
    assert!(trimming.unwrap().reported_bytes <= cap as u64);
}

#[test]
fn managed_virtual_interfaces_are_trimmed_before_the_nics() {
    let state = node(0, 600);
    let (reported, trimming) = to_cap(state.clone(), size(&state) / 2);
    assert!(
        trimming.unwrap().interfaces_summarized > 0,
        "managed macvlans summarized"
    );
    assert_eq!(
        interface(&reported, "eth0"),
        interface(&state, "eth0"),
        "the NIC is whole"
    );
}
