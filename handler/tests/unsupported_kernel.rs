//! What a node cannot do is refused at once, before anything is applied, saying why: a bond
//! (`examples/bond.yaml`: this kernel has no bonding driver), where nmstate alone would spend
//! about two minutes and then report `Bug: Device(CreationFailed)`; and every other example the
//! sandbox cannot do. The kernel is asked the way NetworkManager will ask it, and the asking
//! creates nothing.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: failing loudly is the point

mod common;

use common::{
    FAILING,
    examples::{Shows, as_written, enact, example_for},
    true_condition,
};

use kube::{Api, api::PostParams};
use nmstate_api::{
    NodeNetworkConfigurationEnactment, NodeNetworkConfigurationPolicy, condition::find_condition,
};
use nmstate_localenv::testing::{NodeProcess, TestNode, install_crds, shared_env, unique_name};
use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

const HANDLER: &str = env!("CARGO_BIN_EXE_nmstate-handler");

#[tokio::test]
async fn a_bond_on_a_kernel_without_bonding_is_refused_at_once_and_nothing_applied() {
    let env = shared_env().await.unwrap();
    let client = env.client().await.unwrap();
    install_crds(&client).await.unwrap();
    let node_name = unique_name("nobond");
    let node = TestNode::start(&env, &node_name, &BTreeMap::new()).await.unwrap();
    let kernel_says = node
        .command("ip")
        .unwrap()
        .args(["link", "add", "probe0", "type", "bond"])
        .output()
        .unwrap();
    assert!(
        !kernel_says.status.success(),
        "this test needs a kernel without bonding; this one has it"
    );

    let log = std::env::temp_dir().join(format!("{node_name}.log"));
    let mut handler = NodeProcess::start(
        &node,
        HANDLER.as_ref(),
        &["run"],
        &[("PROBE_TIMEOUT_SECONDS", "5")],
        log.clone(),
    )
    .unwrap();

    // examples/bond.yaml: bond0 over eth1 and eth2.
    let policy = example_for("bond", &node_name, as_written);
    let policy_name = format!("{node_name}-bond");
    assert_eq!(policy.metadata.name.as_deref(), Some(policy_name.as_str()));
    let policies: Api<NodeNetworkConfigurationPolicy> = Api::all(client.clone());
    policies.create(&PostParams::default(), &policy).await.unwrap();

    let enactments: Api<NodeNetworkConfigurationEnactment> = Api::all(client.clone());
    let name = format!("{node_name}.{policy_name}");
    let started = Instant::now();
    let failed = loop {
        let enactment = enactments.get_opt(&name).await.unwrap();
        let status = enactment.as_ref().and_then(|enactment| enactment.status.clone());
        if let Some(status) = status
            && find_condition(&status.conditions, "Failing")
                .is_some_and(|c| c.is_true() && c.reason == "FailedToConfigure")
        {
            break status;
        }
        // nmstate alone gives up after about 130 s; the handler's log is printed when it is
        // dropped during the panic.
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "not refused within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    eprintln!("bond refused after {:.1} s", started.elapsed().as_secs_f64());
    let message = &find_condition(&failed.conditions, "Failing").unwrap().message;
    assert!(
        message.contains(
            "nothing was applied: bond0 (type bond) needs the kernel link type bond (module bonding), \
             which this node's kernel does not have"
        ),
        "the reason, named: {message}"
    );
    assert_eq!(failed.retry_count, None, "never attempted: {failed:?}");
    let links = node
        .command("ip")
        .unwrap()
        .args(["-br", "link"])
        .output()
        .unwrap();
    assert!(
        !String::from_utf8_lossy(&links.stdout).contains("bond0"),
        "no link created"
    );
    let profiles: Vec<String> = std::fs::read_dir(node.profiles_dir())
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        !profiles.iter().any(|profile| profile.contains("bond0")),
        "no NetworkManager profile written: {profiles:?}"
    );

    handler.kill();
    policies.delete(&policy_name, &Default::default()).await.unwrap();
    let _ = std::fs::remove_file(&log);
}

/// The kernel's answer to `ip link add` of each kind in a namespace of this thread's own (the
/// oracle), against the handler's question, which must create nothing.
#[test]
fn the_kernel_is_asked_for_link_kinds_the_way_networkmanager_will_and_nothing_is_created() {
    std::thread::spawn(|| {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        let ip = |args: &str| {
            std::process::Command::new("ip")
                .args(args.split_whitespace())
                .output()
                .unwrap()
        };
        assert!(
            ip("link add parent0 type veth peer name parent1")
                .status
                .success()
        );
        let links_before = ip("-br link").stdout;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let mut answers = Vec::new();
        for (kind, oracle) in [
            ("bridge", "link add t0 type bridge"),
            ("veth", "link add t0 type veth peer name t1"),
            ("macvlan", "link add t0 link parent0 type macvlan"),
            ("vxlan", "link add t0 type vxlan id 5 dstport 4789"),
            ("bond", "link add t0 type bond"),
            ("vlan", "link add t0 link parent0 type vlan id 5"),
            ("vrf", "link add t0 type vrf table 5"),
            ("dummy", "link add t0 type dummy"),
        ] {
            let asked = runtime
                .block_on(nmstate_handler::network::link_kinds::kernel_has(kind))
                .unwrap();
            assert_eq!(
                ip("-br link").stdout,
                links_before,
                "asking for {kind} created nothing"
            );
            let created = ip(oracle).status.success();
            assert_eq!(
                asked, created,
                "{kind}: asked {asked}, `ip {oracle}` created {created}"
            );
            if created {
                assert!(ip("link del t0").status.success());
            }
            answers.push(format!("{kind}: {asked}"));
        }
        eprintln!("this kernel's link kinds: {}", answers.join(", "));
    })
    .join()
    .unwrap();
}

/// How an example the sandbox cannot do ends.
#[derive(Clone, Copy, PartialEq)]
enum Ends {
    /// Refused by the handler before anything is applied: never attempted.
    Refused,
    /// Failed by nmstate when applied.
    Failed,
}

/// `examples/<file>.yaml` fails with a message containing `reason`, and leaves none of the
/// links `leaves_no` on the node.
async fn fails_saying(
    client: &kube::Client,
    file: &'static str,
    ends: Ends,
    reason: &str,
    leaves_no: &'static [&'static str],
) {
    let nothing_left = [Shows {
        command: &["ip", "-br", "link"],
        contains: &["eth1"],
        lacks: leaves_no,
    }];
    let started = Instant::now();
    let enactment = enact(client, file, as_written, FAILING, &nothing_left).await;
    let message = true_condition(&enactment).unwrap().message;
    assert!(message.contains(reason), "{file}: {message}");
    let retries = enactment.status.and_then(|status| status.retry_count);
    assert_eq!(
        retries.is_none(),
        ends == Ends::Refused,
        "{file}: attempts {retries:?}: {message}"
    );
    eprintln!(
        "{file} ended in {:.1} s: {message}",
        started.elapsed().as_secs_f64()
    );
}

#[tokio::test]
async fn the_examples_this_sandbox_cannot_do_fail_saying_why() {
    use Ends::{Failed, Refused};
    let env = shared_env().await.unwrap();
    let client = env.client().await.unwrap();
    install_crds(&client).await.unwrap();
    const NO_OVS: &str = "not able to connect OVS daemon";
    futures::join!(
        // No bonding, 802.1Q or VRF driver in this kernel (bond alone: the first test).
        fails_saying(
            &client,
            "bond-vlan",
            Refused,
            "bond0 (type bond) needs the kernel link type bond (module bonding), bond0.102 \
             (type vlan) needs the kernel link type vlan (module 8021q), which this node's kernel \
             does not have",
            &["bond0"],
        ),
        fails_saying(
            &client,
            "vlan",
            Refused,
            "eth1.102 (type vlan) needs the kernel link type vlan (module 8021q)",
            &["eth1.102"],
        ),
        fails_saying(
            &client,
            "vrf",
            Refused,
            "vrf102 (type vrf) needs the kernel link type vrf (module vrf)",
            &["vrf102"],
        ),
        // NetworkManager 1.42 cannot set forwarding per interface, and the node's eth1 does not
        // forward (whatever the host does: the sandbox sets it).
        fails_saying(
            &client,
            "per-interface-ipv4-forwarding",
            Refused,
            "eth1 set ipv4.forwarding, which needs NetworkManager 1.54.0 or later (per-interface \
             IPv4 forwarding), but this node runs NetworkManager 1.42",
            &[],
        ),
        // No Open vSwitch on these machines: nmstate says so at once.
        fails_saying(&client, "ovs-bridge", Failed, NO_OVS, &["br1"]),
        fails_saying(&client, "ovs-bridge-iface", Failed, NO_OVS, &["br1", "ovs0"]),
        // No bridge VLAN filtering in this kernel.
        fails_saying(
            &client,
            "linux-bridge-vlan",
            Refused,
            "br1 port eth1 set VLANs, but this node's kernel does not support bridge VLAN filtering",
            &["br1"],
        ),
        // The sandbox's NICs are veths: the capture finds no ethernet interface.
        fails_saying(
            &client,
            "lldp",
            Refused,
            "interface with 'type=ethernet' not found",
            &[]
        ),
    );
}
