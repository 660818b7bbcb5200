//! Scenario 6: the broker (a private Mosquitto) stops for 60 s while the
//! agents serve traffic, then starts again: every telemetry window the
//! agents sealed reaches the server exactly once (the agents' outboxes
//! hold them through the outage; the server's persistent session holds
//! what arrives before it re-subscribes), and fleet drift counts each once.

use std::time::{Duration, Instant};

use crate::rollouts::deployed;
use crate::support::*;

#[test]
fn scenario_6_a_broker_outage_loses_no_window_and_counts_none_twice() {
    let Some(mut broker) = mosquitto() else {
        return;
    };
    let Some(f) = fleet_with(fleet_size(), |o| o.broker = Some(broker.url())) else {
        return;
    };
    let (traffic, _) = deployed(&f);
    let n = f.ids.len();
    f.wait("a window from every device", || {
        Ok((stored(&f).len() == n).then_some(()))
    })
    .unwrap();

    // The outage: its length is the scenario, not a wait for something.
    let outage = std::env::var("OUTPOST_OUTAGE_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(60u64);
    broker.stop();
    let down = Instant::now();
    let before = traffic.answered();
    std::thread::sleep(Duration::from_secs(outage));
    let during = traffic.answered() - before;
    assert!(broker.restart(), "mosquitto did not come back");

    // Let the apps run a little on the recovered broker, then stop them
    // and wait until every outbox is empty and the server has them all.
    f.wait("traffic after the outage", || {
        Ok((traffic.answered() > before + during + n as u64).then_some(()))
    })
    .unwrap();
    let answered = traffic.answered();
    drop(traffic);
    let (sealed, at_server) = every_window_at_server(&f);
    let dropped: u64 = f
        .apis
        .iter()
        .map(|a| counter(a, "outpost_agent_telemetry_windows_dropped_total", ""))
        .sum();
    assert_eq!(dropped, 0, "no window dropped from an outbox");
    let total: u64 = sealed.values().sum();
    // Fleet drift counts each window, and each request, once.
    let requests: u64 = f
        .apis
        .iter()
        .map(|a| {
            counter(
                a,
                "outpost_agent_inference_requests_total",
                "outcome=\"ok\"",
            )
        })
        .sum();
    let drift = f.cli(Some(&f.admin), &["drift", "digits@1.0.0"]).unwrap();
    assert_eq!(
        drift["windows"].as_u64(),
        Some(total),
        "{}",
        drift["windows"]
    );
    assert_eq!(
        drift["requests"].as_u64(),
        Some(requests),
        "{}",
        drift["requests"]
    );
    println!(
        "SUMMARY scenario 6: Mosquitto down {:.0} s under {} devices serving ({} requests answered during the outage, {answered} in all); {total} windows sealed, {} stored at the server (per device equal), 0 dropped; fleet drift counts {} windows and {requests} requests, each once",
        down.elapsed().as_secs_f64().min(outage as f64 + 10.0),
        n,
        during,
        at_server.values().sum::<u64>(),
        drift["windows"]
    );
}
