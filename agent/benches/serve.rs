//! The agent's local API under load, as a user runs it: the release binary,
//! a verified digits MLP package, N concurrent HTTP clients sending
//! one-row JSON requests. Reports requests/s and p50/p99 latency at 1, 8
//! and 64 clients, the cost of profiling (the same package with and
//! without its reference profile), resident memory, and binary size.
//!
//! `cargo bench -p outpost-agent --bench serve` (OUTPOST_BENCH_SECS sets the
//! seconds per measurement, default 3).
#![allow(clippy::unwrap_used)]

#[path = "../tests/it/common.rs"]
#[allow(dead_code)]
mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

struct Agent {
    child: ChildGuard,
    port: u16,
}

/// How the agent profiles in a run.
#[derive(Clone, Copy, PartialEq)]
enum Profiling {
    Kll,
    BinsOnly,
    Off,
}

impl Profiling {
    fn tag(self) -> &'static str {
        match self {
            Profiling::Kll => "profiled (bins + KLL)",
            Profiling::BinsOnly => "profiled (bins only, kll_k = 0)",
            Profiling::Off => "unprofiled (no reference)",
        }
    }
}

fn start(w: &World, profiling: Profiling) -> Agent {
    let with_reference = profiling != Profiling::Off;
    let tag = match profiling {
        Profiling::Kll => "kll",
        Profiling::BinsOnly => "bins",
        Profiling::Off => "off",
    };
    std::fs::write(
        &w.package_path,
        package_bytes_with("digits", "1.0.0", with_reference),
    )
    .unwrap();
    let pkg = std::fs::read(&w.package_path).unwrap();
    w.write_release(&w.release_path, &[w.target("digits", "1.0.0", &pkg)], 30);
    let port = free_port();
    let config = w.dir.path().join(format!("{tag}.toml"));
    let text = w
        .config_text(&format!("bench-{tag}"), 1, "")
        .replace(
            "bind = \"127.0.0.1:0\"",
            &format!("bind = \"127.0.0.1:{port}\""),
        )
        .replace(
            "window_secs = 1",
            if profiling == Profiling::BinsOnly {
                "window_secs = 60\nkll_k = 0"
            } else {
                "window_secs = 60"
            },
        );
    std::fs::write(&config, text).unwrap();
    let child = ChildGuard(
        Command::new(env!("CARGO_BIN_EXE_outpost-agent"))
            .args(["run", "--config"])
            .arg(&config)
            .env("OUTPOST_LOG", "error")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_for("the agent to be ready", Duration::from_secs(60), || {
        http()
            .get(&format!("http://127.0.0.1:{port}/readyz"))
            .call()
            .ok()
            .filter(|r| r.status() == 200)
    });
    Agent { child, port }
}

/// `clients` threads sending requests for `secs`; all latencies.
fn load(port: u16, clients: usize, secs: f64) -> (f64, Vec<Duration>) {
    let (rows, _) = digits(1);
    let body = serde_json::to_vec(&request(&rows)).unwrap();
    let url = format!("http://127.0.0.1:{port}/v1/models/digits/infer");
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(secs);
    let handles: Vec<_> = (0..clients)
        .map(|_| {
            let (url, body) = (url.clone(), body.clone());
            std::thread::spawn(move || {
                let agent = http();
                let mut lat = Vec::new();
                while Instant::now() < deadline {
                    let t = Instant::now();
                    let mut r = agent
                        .post(&url)
                        .header("Content-Type", "application/json")
                        .send(&body[..])
                        .unwrap();
                    let _ = r.body_mut().read_to_vec();
                    assert_eq!(r.status(), 200);
                    lat.push(t.elapsed());
                }
                lat
            })
        })
        .collect();
    let mut all: Vec<Duration> = handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    let elapsed = started.elapsed().as_secs_f64();
    all.sort();
    (all.len() as f64 / elapsed, all)
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1e3
}

fn rss_kb(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` runs this too,
    // briefly.
    let secs: f64 = std::env::var("OUTPOST_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(if std::env::args().any(|a| a == "--bench") {
            3.0
        } else {
            0.2
        });
    let w = World::new();
    println!("agent serve bench: digits MLP (64 -> 10), one-row JSON requests, {secs} s per point");
    let mut means = Vec::new();
    for profiling in [Profiling::Kll, Profiling::BinsOnly, Profiling::Off] {
        let a = start(&w, profiling);
        let _ = load(a.port, 1, secs.min(1.0)); // warm-up
        println!("{}:", profiling.tag());
        for clients in [1, 8, 64] {
            let (rps, lat) = load(a.port, clients, secs);
            println!(
                "  clients {clients:>2}: {rps:>8.0} req/s  p50 {:.3} ms  p99 {:.3} ms  ({} requests)",
                pct(&lat, 0.5),
                pct(&lat, 0.99),
                lat.len()
            );
            if clients == 1 {
                // The median: robust to the scheduling noise of a shared machine.
                means.push(pct(&lat, 0.5) / 1e3);
            }
        }
        let (rss, hwm) = rss_kb(a.child.0.id());
        println!("  RSS {} MiB now, peak {} MiB", rss / 1024, hwm / 1024);
        drop(a);
    }
    if let [kll, bins, off] = means[..] {
        for (name, on) in [("bins + KLL", kll), ("bins only", bins)] {
            println!(
                "profiling overhead at 1 client, {name} (median request time): {:.1} % ({:.1} µs)",
                (on - off) / off * 100.0,
                (on - off) * 1e6
            );
        }
    }
    let bin = std::path::Path::new(env!("CARGO_BIN_EXE_outpost-agent"));
    let size = std::fs::metadata(bin).map(|m| m.len()).unwrap_or(0);
    let stripped = w.dir.path().join("outpost-agent.stripped");
    let stripped_size = Command::new("strip")
        .arg("-o")
        .arg(&stripped)
        .arg(bin)
        .status()
        .ok()
        .filter(|s| s.success())
        .and_then(|_| std::fs::metadata(&stripped).ok())
        .map(|m| m.len());
    println!(
        "binary: {:.1} MiB, stripped {}",
        size as f64 / (1 << 20) as f64,
        stripped_size.map_or("(strip unavailable)".into(), |s| format!(
            "{:.1} MiB",
            s as f64 / (1 << 20) as f64
        ))
    );
}
