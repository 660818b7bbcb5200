//! Scenario 6: the broker (a private Mosquitto) stops for 60 s while the
//! agents serve traffic, then starts again: every telemetry window the
//! agents sealed reaches the server exactly once (the agents' outboxes
//! hold them through the outage; the server's persistent session holds
//! what arrives before it re-subscribes), and fleet drift counts each once.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use outpost_fleet::harness::metric_sum;
use serde_json::Value;

use crate::rollouts::deployed;
use crate::support::*;

/// Windows the server stored, per device.
fn stored(f: &TestFleet) -> BTreeMap<String, u64> {
    let v = f.get("/v1/telemetry/windows?model=digits").unwrap();
    let mut per = BTreeMap::new();
    for w in v["windows"].as_array().unwrap() {
        *per.entry(w["device"].as_str().unwrap().to_owned())
            .or_default() += 1;
    }
    per
}

/// An agent's counter.
fn counter(api: &str, name: &str, labels: &str) -> u64 {
    metric_sum(&format!("http://{api}/metrics"), name, labels).unwrap()
}

fn outbox(api: &str) -> u64 {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let v: Value = agent
        .get(format!("http://{api}/v1/status"))
        .call()
        .unwrap()
        .body_mut()
        .read_json()
        .unwrap();
    v["outbox"]["windows"].as_u64().unwrap()
}

#[test]
fn scenario_6_a_broker_outage_loses_no_window_and_counts_none_twice() {
    let Some(mut broker) = mosquitto() else {
        return;
    };
    let Some(f) = fleet_on(fleet_size(), Some(broker.url())) else {
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
    let mut last = String::new();
    let (sealed, at_server) = f
        .wait("every sealed window at the server", || {
            let mut sealed = BTreeMap::new();
            let mut waiting = BTreeMap::new();
            for (id, api) in f.ids.iter().zip(&f.apis) {
                waiting.insert(id.clone(), outbox(api));
                sealed.insert(
                    id.clone(),
                    counter(api, "outpost_agent_telemetry_windows_sealed_total", ""),
                );
            }
            let at_server = stored(&f);
            last = format!("outboxes {waiting:?}\nsealed {sealed:?}\nstored {at_server:?}");
            let drained = waiting.values().all(|&w| w == 0);
            Ok((drained && at_server == sealed).then_some((sealed, at_server)))
        })
        .unwrap_or_else(|e| panic!("{e:#}\n{last}\n{}", logs(&f.opts.dir)));
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
