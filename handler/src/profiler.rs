//! `ENABLE_PROFILER=true`: CPU profiles and memory figures over HTTP on `PROFILER_PORT`, at
//! the paths Go's net/http/pprof uses, so `go tool pprof http://<node>:6060/debug/pprof/profile`
//! works as it does against upstream's handler.
//!
//! - `/debug/pprof/profile?seconds=N` (default 30, at most 300): a CPU profile sampled at
//!   100 Hz, in pprof's protobuf format.
//! - `/debug/allocator`: the heap this process has in use, its peak and all-time total (counted
//!   by the program's counting global allocator), and the kernel's resident-set figures, as JSON.

use axum::{
    Json, Router,
    extract::Query,
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use cap::Cap;
use serde_json::{Value, json};
use std::{alloc::System, net::SocketAddr, time::Duration};
use tracing::{error, info};

/// The counting allocator the heap figures come from: the program's `#[global_allocator]`,
/// declared in its `main.rs` (a library must not choose it for every binary that links it).
pub type CountingAllocator = Cap<System>;

/// A counting allocator with no limit, for a `#[global_allocator]`.
pub const fn counting_allocator() -> CountingAllocator {
    Cap::new(System, usize::MAX)
}

const DEFAULT_SECONDS: u64 = 30;
const MAX_SECONDS: u64 = 300;
const SAMPLES_PER_SECOND: i32 = 100;

/// Serves the profiler on `0.0.0.0:port` (as upstream) until the process ends. A port that
/// cannot be bound is logged; the handler goes on without a profiler.
pub async fn serve(port: u16, allocator: &'static CountingAllocator) {
    let address = SocketAddr::from(([0, 0, 0, 0], port));
    let listener = match tokio::net::TcpListener::bind(address).await {
        Ok(listener) => listener,
        Err(bind_error) => {
            error!(
                "profiler not started: cannot listen on {address} ({bind_error}); set PROFILER_PORT to a free port"
            );
            return;
        }
    };
    info!(%address, "profiler serving /debug/pprof/profile and /debug/allocator");
    if let Err(serve_error) = axum::serve(listener, routes(allocator)).await {
        error!("profiler stopped: {serve_error}");
    }
}

fn routes(allocator: &'static CountingAllocator) -> Router {
    Router::new()
        .route("/debug/pprof/", get(index))
        .route("/debug/pprof/profile", get(cpu_profile))
        .route(
            "/debug/allocator",
            get(move || async move { Json(memory_figures(allocator)) }),
        )
}

async fn index() -> &'static str {
    "profile?seconds=N  CPU profile (pprof protobuf; go tool pprof reads it)\n\
     ../allocator       heap in use, peak and total; resident set (JSON)\n"
}

#[derive(serde::Deserialize)]
struct ProfileQuery {
    seconds: Option<u64>,
}

async fn cpu_profile(Query(query): Query<ProfileQuery>) -> Response {
    let seconds = query.seconds.unwrap_or(DEFAULT_SECONDS);
    if seconds == 0 || seconds > MAX_SECONDS {
        let message = format!("seconds must be between 1 and {MAX_SECONDS}\n");
        return (StatusCode::BAD_REQUEST, message).into_response();
    }
    let guard = match pprof::ProfilerGuardBuilder::default()
        .frequency(SAMPLES_PER_SECOND)
        // Unwinding through these can deadlock inside a signal handler (pprof-rs's advice).
        .blocklist(&["libc", "libgcc", "pthread", "vdso"])
        .build()
    {
        Ok(guard) => guard,
        // One profile at a time: the sampler is process-wide.
        Err(start_error) => {
            let message = format!("cannot start a CPU profile (is another one running?): {start_error}\n");
            return (StatusCode::CONFLICT, message).into_response();
        }
    };
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    let encoded = guard
        .report()
        .build()
        .and_then(|report| report.pprof())
        .map(|profile| {
            use pprof::protos::Message;
            profile.encode_to_vec()
        });
    match encoded {
        Ok(bytes) => ([(header::CONTENT_TYPE, "application/octet-stream")], bytes).into_response(),
        Err(report_error) => {
            let message = format!("cannot build the CPU profile: {report_error}\n");
            (StatusCode::INTERNAL_SERVER_ERROR, message).into_response()
        }
    }
}

/// The heap as the allocator counts it, and the resident set as the kernel does.
pub fn memory_figures(allocator: &CountingAllocator) -> Value {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    json!({
        "heapInUseBytes": allocator.allocated(),
        "heapPeakBytes": allocator.max_allocated(),
        "heapAllocatedTotalBytes": allocator.total_allocated(),
        "residentBytes": kibibytes(&status, "VmRSS:").map(|kib| kib * 1024),
        "residentPeakBytes": kibibytes(&status, "VmHWM:").map(|kib| kib * 1024),
    })
}

/// A `<field> <n> kB` line of /proc/<pid>/status.
pub fn kibibytes(status: &str, field: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|line| line.strip_prefix(field))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// This test binary's allocator, as `main.rs` declares the handler's.
    #[global_allocator]
    static ALLOCATOR: CountingAllocator = counting_allocator();

    #[test]
    fn resident_figures_are_read_from_proc_status() {
        let status = "Name:\tnmstate-handler\nVmHWM:\t   21504 kB\nVmRSS:\t   15360 kB\n";
        assert_eq!(kibibytes(status, "VmRSS:"), Some(15360));
        assert_eq!(kibibytes(status, "VmHWM:"), Some(21504));
        assert_eq!(kibibytes(status, "VmSwap:"), None);
    }

    #[test]
    fn the_allocator_counts_the_heap() {
        let before = ALLOCATOR.total_allocated();
        let buffer = vec![0u8; 1 << 20];
        assert!(ALLOCATOR.total_allocated() >= before + buffer.len());
        let figures = memory_figures(&ALLOCATOR);
        assert!(figures["heapPeakBytes"].as_u64().unwrap() >= 1 << 20);
        assert!(figures["residentBytes"].as_u64().unwrap() > 0);
    }
}
