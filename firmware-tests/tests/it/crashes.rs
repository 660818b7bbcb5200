//! Scenario 3: agents SIGKILLed at random points while they update. Each
//! round deploys a new version to the whole fleet and kills some agents at
//! random offsets into the update (download, verify, stage, swap, commit),
//! then starts them again. After every restart the agent serves a verified
//! model (one of the registered packages, by digest), and its trust state
//! never goes backwards. `OUTPOST_CRASH_POINTS` (default 200) kill points.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use outpost_fleet::harness::DIGITS_X;
use outpost_protocol::bytes::Sha256;
use serde_json::Value;

use crate::support::*;

/// xorshift64: reproducible from the printed seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

fn status(api: &str) -> Option<Value> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(5)))
        .http_status_as_error(false)
        .build()
        .into();
    let ready = agent
        .get(format!("http://{api}/readyz"))
        .call()
        .ok()
        .is_some_and(|r| r.status() == 200);
    if !ready {
        return None;
    }
    agent
        .get(format!("http://{api}/v1/status"))
        .call()
        .ok()?
        .body_mut()
        .read_json()
        .ok()
}

/// What the agents that are not ready say, for a failure message.
fn not_ready(ids: &[String], apis: &[String]) -> String {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(5)))
        .http_status_as_error(false)
        .build()
        .into();
    ids.iter()
        .zip(apis)
        .filter(|(_, api)| status(api).is_none())
        .map(|(id, api)| {
            let get = |path: &str| {
                agent
                    .get(format!("http://{api}{path}"))
                    .call()
                    .ok()
                    .map(|mut r| {
                        format!(
                            "{} {}",
                            r.status(),
                            r.body_mut().read_to_string().unwrap_or_default()
                        )
                    })
                    .unwrap_or_else(|| "no answer".into())
            };
            format!(
                "{id}: readyz {} · status {}",
                get("/readyz"),
                get("/v1/status")
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn scenario_3_agents_killed_during_updates_come_back_verified() {
    let points: usize = std::env::var("OUTPOST_CRASH_POINTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let seed = std::env::var("OUTPOST_CRASH_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x5eed_0003_u64);
    let Some(mut f) = fleet(fleet_size()) else {
        return;
    };
    let reference = f.opts.dir.join("digits_test_x.npy");
    std::fs::write(&reference, DIGITS_X).unwrap();
    // Every registered package, by digest.
    let mut known: BTreeMap<String, String> = BTreeMap::new();
    let release =
        |f: &TestFleet, known: &mut BTreeMap<String, String>, version: &str, model: &str| {
            let pkg = f.package(&digits(model), version, &reference).unwrap();
            let sha = Sha256::of(&std::fs::read(&pkg).unwrap()).to_hex();
            known.insert(sha, version.to_owned());
            f.register(&pkg, version).unwrap();
        };
    release(&f, &mut known, "1.0.0", "mlp_qdq_pc.onnx");
    f.cli(Some(&f.operator), &["model", "deploy", "digits", "1.0.0"])
        .unwrap();
    let ids = f.ids.clone();
    f.wait_serving(&ids, "1.0.0")
        .unwrap_or_else(|e| panic!("{e:#}\n{}", logs(&f.opts.dir)));

    let n = f.ids.len();
    let per_round = n.min(10);
    let rounds = points.div_ceil(per_round);
    let mut rng = Rng(seed | 1);
    let mut trust = vec![0u64; n];
    let mut kills = 0usize;
    let started = Instant::now();
    for round in 1..=rounds {
        let version = format!("1.{round}.0");
        let model = if round % 2 == 1 {
            "mlp_qdq_pt.onnx"
        } else {
            "mlp_qdq_pc.onnx"
        };
        let known_before = known.len();
        release(&f, &mut known, &version, model);
        assert_eq!(known.len(), known_before + 1);
        f.cli(
            Some(&f.operator),
            &["model", "deploy", "digits", &version, "--force"],
        )
        .unwrap();
        let t0 = Instant::now();
        // Distinct victims, each at a random offset into the update.
        let mut victims: Vec<(u64, usize)> = Vec::new();
        while victims.len() < per_round {
            let i = rng.below(n as u64) as usize;
            if victims.iter().all(|(_, v)| *v != i) {
                victims.push((rng.below(300), i));
            }
        }
        victims.sort_unstable();
        for (offset_ms, i) in victims {
            // The fault's timing, not a wait for something.
            let at = t0 + Duration::from_millis(offset_ms);
            if let Some(d) = at.checked_duration_since(Instant::now()) {
                std::thread::sleep(d);
            }
            assert!(f.kill_agent(i), "no agent {i} to kill");
            f.restart_agent(i)
                .unwrap_or_else(|e| panic!("round {round}: {e:#}\n{}", logs(&f.opts.dir)));
            kills += 1;
        }
        // Every agent, killed or not, serves a verified model again and
        // its trust state did not go back.
        let apis = f.apis.clone();
        let seen = f
            .wait(&format!("round {round}: every agent serving"), || {
                let mut all = Vec::with_capacity(n);
                for api in &apis {
                    match status(api) {
                        Some(s) => all.push(s),
                        None => return Ok(None),
                    }
                }
                Ok(Some(all))
            })
            .unwrap_or_else(|e| panic!("{e:#}\n{}\n{}", not_ready(&ids, &apis), logs(&f.opts.dir)));
        for (i, s) in seen.iter().enumerate() {
            let model = s["models"]
                .as_array()
                .and_then(|m| m.iter().find(|m| m["name"] == "digits"))
                .unwrap_or_else(|| panic!("{}: serves no digits after round {round}: {s}", ids[i]));
            let sha = model["sha256"].as_str().unwrap();
            let version = known.get(sha).unwrap_or_else(|| {
                panic!("{} serves a package nobody registered ({sha}): {s}", ids[i])
            });
            assert_eq!(model["version"].as_str(), Some(version.as_str()), "{s}");
            let last = s["trust"]["last_directive"].as_u64().unwrap();
            assert!(
                last >= trust[i],
                "{}: trust went back from directive {} to {last}",
                ids[i],
                trust[i]
            );
            assert_eq!(s["trust"]["root_version"], 1, "{s}");
            trust[i] = last;
        }
    }
    let on_last = f
        .apis
        .iter()
        .filter_map(|a| status(a))
        .filter(|s| s["models"][0]["version"].as_str() == Some(&format!("1.{rounds}.0")))
        .count();
    println!(
        "SUMMARY scenario 3: {kills} agents SIGKILLed at random points of {rounds} fleet-wide updates of {n} devices (seed {seed:#x}) in {:.0} s; after every restart a registered package served, verified by digest, and no trust state went back; {on_last}/{n} on the last version",
        started.elapsed().as_secs_f64()
    );
}
