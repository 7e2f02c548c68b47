//! `ENABLE_PROFILER=true`: the handler serves CPU profiles that `go tool pprof` reads, and its
//! memory figures, on `PROFILER_PORT` inside its node.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: failing loudly is the point

mod common;

use common::start_handler_with;
use nmstate_localenv::testing::{TestNode, eventually, install_crds, shared_env, unique_name};
use std::{collections::BTreeMap, time::Duration};

/// GETs `path` from the profiler inside `node`; the status line's code and the body.
fn get(node: &TestNode, path: &str) -> (u16, Vec<u8>) {
    let fetch = "import sys, urllib.request, urllib.error\n\
                 try:\n    response = urllib.request.urlopen(sys.argv[1], timeout=60)\n\
                 except urllib.error.HTTPError as error:\n    response = error\n\
                 sys.stdout.write(str(response.status) + '\\n'); sys.stdout.flush()\n\
                 sys.stdout.buffer.write(response.read())";
    let output = node
        .command("python3")
        .unwrap()
        .args(["-c", fetch, &format!("http://127.0.0.1:6061{path}")])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let newline = output.stdout.iter().position(|byte| *byte == b'\n').unwrap();
    let status = String::from_utf8_lossy(&output.stdout[..newline])
        .parse()
        .unwrap();
    (status, output.stdout[newline + 1..].to_vec())
}

#[tokio::test]
async fn the_profiler_serves_cpu_profiles_and_memory_figures() {
    let env = shared_env().await.unwrap();
    install_crds(&env.client().await.unwrap()).await.unwrap();
    let node = TestNode::start(&env, &unique_name("prof"), &BTreeMap::new())
        .await
        .unwrap();
    let log = std::env::temp_dir().join(format!("{}.log", node.name));
    let handler = start_handler_with(
        &node,
        &log,
        &[("ENABLE_PROFILER", "true"), ("PROFILER_PORT", "6061")],
    );
    eventually("the profiler listens", Duration::from_secs(20), || async {
        handler.log().contains("profiler serving").then_some(())
    })
    .await
    .unwrap();

    let (status, body) = get(&node, "/debug/allocator");
    assert_eq!(status, 200);
    let figures: serde_json::Value = serde_json::from_slice(&body).unwrap();
    eprintln!("memory: {figures}");
    for figure in [
        "heapInUseBytes",
        "heapPeakBytes",
        "heapAllocatedTotalBytes",
        "residentBytes",
    ] {
        assert!(figures[figure].as_u64().unwrap() > 0, "{figure}: {figures}");
    }
    assert!(figures["heapPeakBytes"].as_u64() >= figures["heapInUseBytes"].as_u64());

    assert_eq!(get(&node, "/debug/pprof/profile?seconds=0").0, 400);

    // Out-of-band changes keep the handler busy while it is profiled.
    let churn = {
        let mut script = node.command("sh").unwrap();
        script.args([
            "-c",
            "for i in $(seq 1 15); do ip link add prof$i type bridge; ip link del prof$i; sleep 0.1; done",
        ]);
        script.spawn().unwrap()
    };
    let (status, profile) = get(&node, "/debug/pprof/profile?seconds=2");
    let _ = { churn }.wait();
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&profile));
    let file = std::env::temp_dir().join(format!("{}.pb", node.name));
    std::fs::write(&file, &profile).unwrap();
    let top = std::process::Command::new("go")
        .args(["tool", "pprof", "-top", file.to_str().unwrap()])
        .output()
        .expect("go tool pprof (Debian golang-go; make deps installs it)");
    let text = String::from_utf8_lossy(&top.stdout);
    assert!(
        top.status.success(),
        "{}{}",
        text,
        String::from_utf8_lossy(&top.stderr)
    );
    eprintln!("{text}");
    assert!(text.contains("Type: cpu"), "{text}");
    assert!(
        text.contains("nmstate") || text.contains("tokio"),
        "samples name the handler's code: {text}"
    );
    std::fs::remove_file(&file).unwrap();
    let _ = std::fs::remove_file(&log);
}
