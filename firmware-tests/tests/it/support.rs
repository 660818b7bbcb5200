//! Finding the binaries, building a fleet, the models, skip-or-fail.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use outpost_fleet::harness::{AgentExe, Fleet, FleetOptions, metric_sum};
use serde_json::Value;

/// Scenarios take turns: each one loads this machine's cores with a fleet.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// A fleet and the folder it lives in (removed after the fleet stopped).
pub struct TestFleet {
    pub fleet: Fleet,
    // Dropped after `fleet` (field order): the processes stop first.
    _dir: tempfile::TempDir,
    _turn: MutexGuard<'static, ()>,
}

impl std::ops::Deref for TestFleet {
    type Target = Fleet;
    fn deref(&self) -> &Fleet {
        &self.fleet
    }
}

impl std::ops::DerefMut for TestFleet {
    fn deref_mut(&mut self) -> &mut Fleet {
        &mut self.fleet
    }
}

/// Prints why and returns, or panics under `OUTPOST_REQUIRE_ALL=1`.
pub fn skip_or_fail(reason: &str) {
    if std::env::var("OUTPOST_REQUIRE_ALL").as_deref() == Ok("1") {
        panic!("{reason}, and OUTPOST_REQUIRE_ALL=1");
    }
    println!("SKIPPED: {reason}");
}

/// `outpost` and `outpost-agent` beside this test binary's folder.
pub fn binaries() -> Option<(PathBuf, PathBuf)> {
    let exe = std::env::current_exe().ok()?;
    // target/<profile>/deps/it-<hash> → target/<profile>/
    let dir = exe.parent()?.parent()?;
    let outpost = dir.join(format!("outpost{}", std::env::consts::EXE_SUFFIX));
    let agent = dir.join(format!("outpost-agent{}", std::env::consts::EXE_SUFFIX));
    (outpost.is_file() && agent.is_file()).then_some((outpost, agent))
}

/// Devices per fleet: `OUTPOST_FLEET_DEVICES` (default 20).
pub fn fleet_size() -> usize {
    std::env::var("OUTPOST_FLEET_DEVICES")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n| n >= 3)
        .unwrap_or(20)
}

/// Starts a fleet of `devices` agents, or None (after skip_or_fail) when
/// the binaries are missing.
pub fn fleet(devices: usize) -> Option<TestFleet> {
    fleet_with(devices, |_| {})
}

/// [`fleet`], with options changed by `set` (an external broker, TLS, some
/// devices' data directories elsewhere).
pub fn fleet_with(devices: usize, set: impl FnOnce(&mut FleetOptions)) -> Option<TestFleet> {
    let turn = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let Some((outpost, agent)) = binaries() else {
        skip_or_fail(
            "the outpost and outpost-agent binaries are not built beside this test \
             (cargo test --workspace builds them; or cargo build -p outpost-fleet -p outpost-agent)",
        );
        return None;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut opts = FleetOptions {
        dir: dir.path().to_owned(),
        outpost,
        agent: AgentExe::Agent(agent),
        devices,
        classes: vec!["kiosk".into(), "gateway".into()],
        window_secs: 2,
        evaluate_every: 2,
        step_timeout: Duration::from_secs(240),
        broker: None,
        data_dirs: vec![],
        tls: None,
    };
    set(&mut opts);
    let fleet = Fleet::start(opts)
        .unwrap_or_else(|e| panic!("the fleet did not start: {e:#}\n{}", logs(dir.path())));
    Some(TestFleet {
        fleet,
        _dir: dir,
        _turn: turn,
    })
}

/// The end of the server's and two agents' logs, for a failure message.
pub fn logs(dir: &Path) -> String {
    outpost_fleet::harness::log_tails(
        dir,
        |n| matches!(n, "server.log" | "dev-001.log" | "dev-002.log"),
        25,
    )
}

/// A model file of the repository.
pub fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path)
}

pub fn digits(name: &str) -> PathBuf {
    repo(&format!("runtime/tests/fixtures/digits/{name}"))
}

/// A private Mosquitto (anonymous access), or None after skip_or_fail
/// when it is not installed.
pub fn mosquitto() -> Option<outpost_fleet::harness::Mosquitto> {
    if outpost_fleet::harness::Mosquitto::binary().is_none() {
        skip_or_fail("mosquitto is not installed (apt install mosquitto)");
        return None;
    }
    Some(outpost_fleet::harness::Mosquitto::start("allow_anonymous true\n").unwrap())
}

/// Windows the server stored, per device.
pub fn stored(f: &TestFleet) -> BTreeMap<String, u64> {
    let v = f.get("/v1/telemetry/windows?model=digits").unwrap();
    let mut per = BTreeMap::new();
    for w in v["windows"].as_array().unwrap() {
        *per.entry(w["device"].as_str().unwrap().to_owned())
            .or_default() += 1;
    }
    per
}

/// An agent's counter.
pub fn counter(api: &str, name: &str, labels: &str) -> u64 {
    metric_sum(&format!("http://{api}/metrics"), name, labels).unwrap()
}

/// An agent's `/v1/status`.
pub fn agent_status(api: &str) -> Value {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    agent
        .get(format!("http://{api}/v1/status"))
        .call()
        .unwrap()
        .body_mut()
        .read_json()
        .unwrap()
}

/// Windows waiting in an agent's outbox.
pub fn outbox(api: &str) -> u64 {
    agent_status(api)["outbox"]["windows"].as_u64().unwrap()
}

/// Waits until every agent's outbox is empty and the server stores, for
/// each device, exactly the windows it sealed; returns (sealed, stored).
/// Call it once the traffic stopped.
pub fn every_window_at_server(f: &TestFleet) -> (BTreeMap<String, u64>, BTreeMap<String, u64>) {
    let mut last = String::new();
    f.wait("every sealed window at the server", || {
        let mut sealed = BTreeMap::new();
        let mut waiting = BTreeMap::new();
        for (id, api) in f.ids.iter().zip(&f.apis) {
            waiting.insert(id.clone(), outbox(api));
            sealed.insert(
                id.clone(),
                counter(api, "outpost_agent_telemetry_windows_sealed_total", ""),
            );
        }
        let at_server = stored(f);
        last = format!("outboxes {waiting:?}\nsealed {sealed:?}\nstored {at_server:?}");
        let drained = waiting.values().all(|&w| w == 0);
        Ok((drained && at_server == sealed).then_some((sealed, at_server)))
    })
    .unwrap_or_else(|e| panic!("{e:#}\n{last}\n{}", logs(&f.opts.dir)))
}
