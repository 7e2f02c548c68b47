use super::*;
use serde_json::json;

fn values() -> BTreeMap<String, Resolved> {
    BTreeMap::from([
        ("rack".to_string(), Resolved::Text("r7".into())),
        (
            "storage".to_string(),
            Resolved::Address {
                address: "10.77.2.20".parse().unwrap(),
                prefix: 24,
                gateway: Some("10.77.2.1".parse().unwrap()),
            },
        ),
        (
            "nogw".to_string(),
            Resolved::Address {
                address: "2001:db8::5".parse().unwrap(),
                prefix: 64,
                gateway: None,
            },
        ),
    ])
}

#[test]
fn references_are_replaced_in_every_string_and_a_lone_prefix_is_a_number() {
    let desired = json!({"interfaces": [{
        "name": "eth2", "description": "rack {{ var.rack }} ({{var.storage.cidr}})",
        "ipv4": {"address": [{"ip": "{{ var.storage.address }}", "prefix-length": "{{ var.storage.prefix }}"}]},
        "ipv6": {"address": [{"ip": "{{ var.nogw }}", "prefix-length": "/{{ var.nogw.prefix }}"}]},
        "mtu": 1500,
    }], "routes": {"config": [{"destination": "0.0.0.0/0", "next-hop-address": "{{ var.storage.gateway }}",
        "next-hop-interface": "{{ capture.default-gw.routes.running.0.next-hop-interface }}"}]}});
    let resolved = substitute(&desired, &values()).unwrap();
    assert_eq!(
        resolved,
        json!({"interfaces": [{
            "name": "eth2", "description": "rack r7 (10.77.2.20/24)",
            "ipv4": {"address": [{"ip": "10.77.2.20", "prefix-length": 24}]},
            "ipv6": {"address": [{"ip": "2001:db8::5", "prefix-length": "/64"}]},
            "mtu": 1500,
        }], "routes": {"config": [{"destination": "0.0.0.0/0", "next-hop-address": "10.77.2.1",
            "next-hop-interface": "{{ capture.default-gw.routes.running.0.next-hop-interface }}"}]}}),
        "captures are left for later"
    );
    assert_eq!(
        substitute(&resolved, &values()).unwrap(),
        resolved,
        "nothing left to replace"
    );
}

#[test]
fn what_cannot_be_replaced_is_named() {
    let table = [
        (
            "{{ var.missing }}",
            "it refers to variable \"missing\", which spec.variables does not define",
        ),
        (
            "{{ var.rack.address }}",
            "{{ var.rack.address }}: variable \"rack\" is a value, not an address; refer to it as {{ var.rack }}",
        ),
        (
            "{{ var.nogw.gateway }}",
            "{{ var.nogw.gateway }}: the pool of variable \"nogw\" has no spec.gateway",
        ),
        (
            "{{ var.storage.mask }}",
            "{{ var.storage.mask }}: an address has address, prefix, cidr, gateway",
        ),
    ];
    for (text, message) in table {
        assert_eq!(substitute(&json!({"a": [text]}), &values()).unwrap_err(), message);
    }
}

#[test]
fn the_webhook_finds_bad_variables_and_references() {
    let variables: BTreeMap<String, PolicyVariable> = serde_json::from_value(json!({
        "rack": {"fromNode": {"label": "topology.kubernetes.io/rack"}},
        "storage": {"fromIPPool": {"name": "storage"}},
        "vlan": {"perNode": {"node01": "100"}},
        "both": {"perNode": {}, "fromNode": {"field": "name"}},
        "none": {},
        "two-fields": {"fromNode": {"field": "name", "label": "x"}},
    }))
    .unwrap();
    let desired = json!({"interfaces": [{"name": "{{ var.rack }}-{{ var.vlan }}", "description": "{{ var.nothere }}",
        "ipv4": {"address": [{"ip": "{{ var.storage.address }}", "prefix-length": "{{ var.storage.netmask }}"}]},
        "mtu": "{{ var.rack.prefix }}"}]});
    assert_eq!(
        errors(&variables, &desired),
        [
            "invalid spec.variables.both: set exactly one of fromNode, perNode, fromIPPool",
            "invalid spec.variables.none: set exactly one of fromNode, perNode, fromIPPool",
            "invalid spec.variables.two-fields: a variable name starts with a letter and has only letters, digits and _ (at most 63)",
            "invalid spec.variables.two-fields.fromNode: set exactly one of field, label, annotation",
            "invalid spec.desiredState: it refers to variable \"nothere\", which spec.variables does not define",
            "invalid spec.desiredState: {{ var.rack.prefix }}: variable \"rack\" is a value, not an address; refer to it as {{ var.rack }}",
            "invalid spec.desiredState: {{ var.storage.netmask }}: an address has address, prefix, cidr, gateway",
        ]
    );
}
