//! Admission latency at 200 requests/s, and the webhook's memory (release build).
//!
//! - Inside the webhook: AdmissionReviews sent straight to it over one kept-alive TLS
//!   connection, as the API server does; the time from each request's scheduled send to its
//!   answer (so a slow answer also delays the next).
//! - Through the API server: dry-run creations of a policy with the webhooks (labelled for the
//!   test's configurations) side by side with the same creation that no webhook matches: the
//!   difference is what the webhook costs a user.
//!
//! Figures are printed, never asserted.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // bench code

#[path = "../tests/webhook/fixture.rs"]
mod fixture;

use fixture::Fixture;
use nmstate_localenv::testing::proc_status_kib;
use serde_json::{Value, json};
use std::{
    io::{Read, Write},
    sync::Arc,
    time::{Duration, Instant},
};

const RATE: u32 = 200;
const SECONDS: u32 = 10;

fn percentile(sorted: &[Duration], fraction: f64) -> Duration {
    let index = ((sorted.len() as f64 * fraction).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[index]
}

fn summary(label: &str, mut latencies: Vec<Duration>) -> (Duration, Duration) {
    latencies.sort();
    let (p50, p99) = (percentile(&latencies, 0.5), percentile(&latencies, 0.99));
    println!(
        "{label:<44} n={:<5} p50 {:>7.2} ms   p99 {:>7.2} ms   max {:>7.2} ms",
        latencies.len(),
        p50.as_secs_f64() * 1e3,
        p99.as_secs_f64() * 1e3,
        latencies.last().unwrap().as_secs_f64() * 1e3
    );
    (p50, p99)
}

/// One TLS connection kept alive across requests, as the API server's webhook client does.
struct Connection {
    stream: rustls::StreamOwned<rustls::ClientConnection, std::net::TcpStream>,
}

impl Connection {
    fn open(port: u16, bundle: &str) -> Connection {
        let connection = fixture::client_connection(bundle).unwrap();
        let socket = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        socket.set_nodelay(true).unwrap();
        Connection {
            stream: rustls::StreamOwned::new(connection, socket),
        }
    }

    /// POSTs `body` and reads the whole response (Content-Length framed).
    fn post(&mut self, path: &str, body: &[u8]) -> String {
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        self.stream.write_all(head.as_bytes()).unwrap();
        self.stream.write_all(body).unwrap();
        let mut response = Vec::new();
        let mut buffer = [0u8; 16 * 1024];
        loop {
            let read = self.stream.read(&mut buffer).unwrap();
            assert!(read > 0, "the webhook closed the connection");
            response.extend_from_slice(&buffer[..read]);
            let text = String::from_utf8_lossy(&response);
            if let Some((headers, rest)) = text.split_once("\r\n\r\n") {
                let length: usize = headers
                    .lines()
                    .find_map(|line| {
                        line.to_ascii_lowercase()
                            .strip_prefix("content-length:")
                            .map(|v| v.trim().to_string())
                    })
                    .and_then(|value| value.parse().ok())
                    .unwrap_or(0);
                if rest.len() >= length {
                    return text.to_string();
                }
            }
        }
    }
}

fn review(policy: &Value) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {
            "uid": "bench",
            "kind": {"group": "nmstate.io", "version": "v1", "kind": "NodeNetworkConfigurationPolicy"},
            "resource": {"group": "nmstate.io", "version": "v1", "resource": "nodenetworkconfigurationpolicies"},
            "operation": "CREATE", "userInfo": {"username": "bench"},
            "object": policy,
        }
    }))
    .unwrap()
}

/// Paced sends on one connection: latency from each scheduled start.
fn direct(port: u16, bundle: &str, path: &'static str, body: Vec<u8>) -> Vec<Duration> {
    let mut connection = Connection::open(port, bundle);
    for _ in 0..20 {
        connection.post(path, &body); // warm-up
    }
    let interval = Duration::from_secs(1) / RATE;
    let start = Instant::now();
    (0..RATE * SECONDS)
        .map(|index| {
            let scheduled = start + interval * index;
            if let Some(wait) = scheduled.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            let response = connection.post(path, &body);
            assert!(response.contains("\"allowed\":true"), "{response}");
            scheduled.elapsed()
        })
        .collect()
}

/// Dry-run creations of `policy` through the API server at [`RATE`] per second, each on its
/// own task so a slow one does not hold back the schedule.
async fn through_api_server(fixture: &Arc<Fixture>, policy: Value) -> Vec<Duration> {
    for _ in 0..20 {
        fixture.dry_run(&policy).await.unwrap();
    }
    let mut ticks = tokio::time::interval(Duration::from_secs(1) / RATE);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut tasks = Vec::new();
    for _ in 0..RATE * SECONDS {
        let scheduled = ticks.tick().await;
        let fixture = fixture.clone();
        let policy = policy.clone();
        tasks.push(tokio::spawn(async move {
            fixture.dry_run(&policy).await.unwrap();
            scheduled.elapsed()
        }));
    }
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.push(task.await.unwrap());
    }
    latencies
}

#[tokio::main]
async fn main() {
    let load = nmstate_localenv::testing::MachineLoad::start();
    let fixture = Arc::new(Fixture::start(&[]).await);
    let pid = fixture.webhook.as_ref().unwrap().pid();
    let idle = proc_status_kib(pid, "VmRSS:");
    let bundle = fixture.published_bundle().await.unwrap();
    let port = fixture.port;
    println!("\nwebhook admission at {RATE} requests/s for {SECONDS} s (release build)\n");

    let policy = fixture.policy(
        "bench",
        json!({
            "maxUnavailable": "25%",
            "desiredState": {"interfaces": [{
                "name": "br1", "type": "linux-bridge", "state": "up",
                "ipv4": {"enabled": true, "dhcp": true},
                "bridge": {"options": {"stp": {"enabled": false}}, "port": [{"name": "eth1"}]},
            }]},
        }),
    );
    let body = review(&policy);
    let validate = {
        let bundle = bundle.clone();
        let body = body.clone();
        tokio::task::spawn_blocking(move || {
            direct(port, &bundle, nmstate_webhook::server::VALIDATE_PATH, body)
        })
        .await
        .unwrap()
    };
    let (_, validate_p99) = summary("inside the webhook: validate", validate);
    let mutate = tokio::task::spawn_blocking(move || {
        direct(
            port,
            &bundle,
            nmstate_webhook::server::TIMESTAMP_MUTATE_PATH,
            body,
        )
    })
    .await
    .unwrap();
    summary("inside the webhook: timestamp mutation", mutate);

    let with = through_api_server(&fixture, policy.clone()).await;
    let (with_p50, with_p99) = summary("API server, with the webhooks (2 calls)", with);
    let mut unmatched = policy.clone();
    unmatched["metadata"]["labels"] = json!({});
    let without = through_api_server(&fixture, unmatched).await;
    let (without_p50, without_p99) = summary("API server, no webhook (peer)", without);
    println!(
        "\nwebhook cost through the API server: p50 +{:.2} ms ({:.2}x), p99 +{:.2} ms ({:.2}x); goal p99 <= 5 ms inside the webhook: {:.2} ms",
        (with_p50.as_secs_f64() - without_p50.as_secs_f64()) * 1e3,
        with_p50.as_secs_f64() / without_p50.as_secs_f64(),
        (with_p99.as_secs_f64() - without_p99.as_secs_f64()) * 1e3,
        with_p99.as_secs_f64() / without_p99.as_secs_f64(),
        validate_p99.as_secs_f64() * 1e3,
    );
    println!(
        "webhook RSS: idle {:.1} MiB, after {} requests {:.1} MiB, peak {:.1} MiB",
        idle as f64 / 1024.0,
        RATE * SECONDS * 4,
        proc_status_kib(pid, "VmRSS:") as f64 / 1024.0,
        proc_status_kib(pid, "VmHWM:") as f64 / 1024.0
    );
    println!("\nmachine during this bench: {}", load.report());
}
