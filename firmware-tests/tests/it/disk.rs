//! Scenario 8: a device's disk fills up (its data directory is a small
//! tmpfs, filled by the test): the device keeps serving, and the telemetry
//! windows it cannot store are dropped, counted in its `/metrics` and
//! reported to the fleet as a `telemetry_dropped` event.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use outpost_fleet::harness::metric_sum;
use outpost_protocol::messages::EventKind;
use serde_json::json;

use crate::rollouts::deployed;
use crate::support::*;

/// A tmpfs mounted for the test; unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(path: &Path, size: &str) -> Option<Tmpfs> {
        std::fs::create_dir_all(path).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(path)
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| Tmpfs(path.to_owned()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Writes zeros into `dir/filler` until the file system is full.
fn fill(dir: &Path) -> u64 {
    let mut f = std::fs::File::create(dir.join("filler")).unwrap();
    let chunk = vec![0u8; 64 * 1024];
    let mut written = 0u64;
    while f.write_all(&chunk).is_ok() {
        written += chunk.len() as u64;
    }
    // What is left below a chunk.
    let mut small = vec![0u8; 512];
    while f.write_all(&small).is_ok() {
        written += small.len() as u64;
        small.truncate(small.len().max(2) / 2);
        if small.len() < 2 {
            break;
        }
    }
    let _ = f.sync_all();
    written
}

#[test]
fn scenario_8_a_full_disk_drops_counted_reported_windows_and_serving_goes_on() {
    let disk_dir = tempfile::tempdir().unwrap();
    let data = disk_dir.path().join("dev-001");
    let Some(disk) = Tmpfs::mount(&data, "16m") else {
        skip_or_fail("mounting a tmpfs needs root (mount -t tmpfs)");
        return;
    };
    let Some(f) = fleet_with(3, |o| o.data_dirs = vec![("dev-001".into(), data.clone())]) else {
        return;
    };
    let spy = crate::attacks::Spy::connect(&f.mqtt);
    let (traffic, _) = deployed(&f);
    let api = f.apis[0].clone();
    let windows_sealed = |api: &str| {
        metric_sum(
            &format!("http://{api}/metrics"),
            "outpost_agent_telemetry_windows_sealed_total",
            "",
        )
        .unwrap()
    };
    let dropped = |api: &str| {
        metric_sum(
            &format!("http://{api}/metrics"),
            "outpost_agent_telemetry_windows_dropped_total",
            "",
        )
        .unwrap()
    };
    f.wait("a first window from dev-001", || {
        Ok((windows_sealed(&api) > 0).then_some(()))
    })
    .unwrap();

    // The disk is full.
    let filled = fill(&disk.0);
    let full_at = Instant::now();
    let lost = f
        .wait("windows dropped on the full disk", || {
            let d = dropped(&api);
            Ok((d >= 3).then_some(d))
        })
        .unwrap_or_else(|e| panic!("{e:#}\n{}", logs(&f.opts.dir)));
    // Reported to the fleet.
    let report = spy.event("dev-001", |k| {
        matches!(k, EventKind::TelemetryDropped { .. })
    });
    // And it still answers, from the model in memory.
    let http: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let (rows, _) = outpost_fleet::harness::digits_rows().unwrap();
    let answer = http
        .post(format!("http://{api}/v1/models/digits/infer"))
        .send_json(json!({"inputs": {"input": {"shape": [1, 64], "data": &rows[..64]}}}))
        .unwrap();
    assert_eq!(
        answer.status(),
        200,
        "dev-001 stopped serving on a full disk"
    );
    let before = traffic.answered();
    f.wait("traffic on the full disk", || {
        Ok((traffic.answered() > before + 20).then_some(()))
    })
    .unwrap();
    println!(
        "SUMMARY scenario 8: dev-001's 16 MiB disk filled ({} KiB written by the test); {lost} windows dropped within {:.1} s, counted in outpost_agent_telemetry_windows_dropped_total and reported ({report:?}); inference still answers 200; {} requests answered fleet-wide",
        filled / 1024,
        full_at.elapsed().as_secs_f64(),
        traffic.answered()
    );
    drop(f);
    drop(disk);
}
