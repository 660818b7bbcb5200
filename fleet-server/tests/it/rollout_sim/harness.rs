//! A simulated fleet around the rollout core: synthetic but realistic
//! windows recorded with the telemetry `Recorder`, a shell that journals
//! sequences and "publishes" directives, devices that install what they
//! are told, and a store of windows replayed after a restore.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use outpost_fleet::rollout::{
    Action, AlertKind, DeviceInfo, DirectiveKey, DirectiveKind, Plan, PlannedDirective, Rollout,
    RolloutConfig, RolloutSpec, Snapshot, State,
};
use outpost_protocol::bytes::Sha256;
use outpost_protocol::topic::DeviceId;
use outpost_protocol::trust::{Directive, TargetRef, UnixSeconds};
use outpost_telemetry::{
    ColumnData, Feedback, ProfileOptions, Recorder, ReferenceOptions, ReferenceProfile, Request,
    Value, WindowKey, WindowProfile,
};

pub const T0: UnixSeconds = 1_800_000_000;
pub const WINDOW: u64 = 300;
pub const MODEL: &str = "thermo";
pub const FROM: &str = "1.0.0";
pub const TO: &str = "1.1.0";

/// splitmix64: a tiny deterministic generator for test data.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    /// Roughly normal (Irwin-Hall of 4), mean 0, sd 1.
    pub fn normal(&mut self) -> f64 {
        let s: f64 = (0..4).map(|_| self.unit()).sum();
        (s - 2.0) * (3.0f64).sqrt()
    }
}

/// The inputs (temperature, load) and output (score) of the model.
pub fn reference() -> Arc<ReferenceProfile> {
    let mut rng = Rng::new(7);
    let n = 4_000;
    let temp: Vec<Option<f64>> = (0..n).map(|_| Some(20.0 + 5.0 * rng.normal())).collect();
    let load: Vec<Option<f64>> = (0..n).map(|_| Some(rng.unit())).collect();
    let score: Vec<Option<f64>> = (0..n).map(|_| Some(rng.unit())).collect();
    let options = ReferenceOptions {
        outputs: vec!["score".into()],
        ..Default::default()
    };
    let columns = vec![
        ("temp".to_owned(), ColumnData::Numeric(temp)),
        ("load".to_owned(), ColumnData::Numeric(load)),
        ("score".to_owned(), ColumnData::Numeric(score)),
    ];
    Arc::new(ReferenceProfile::from_columns(columns, &options).unwrap())
}

/// How a model version behaves on a device.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Behaviour {
    pub latency_us: f64,
    pub error_rate: f64,
    /// Mean confidence of successful requests.
    pub confidence: f64,
    /// Added to the temperature input (0: as in training).
    pub shift: f64,
    /// Share of requests whose temperature is missing.
    pub missing: f64,
    /// Share of correct feedback labels; `None`: no feedback.
    pub accuracy: Option<f64>,
}

impl Behaviour {
    pub const GOOD: Behaviour = Behaviour {
        latency_us: 800.0,
        error_rate: 0.005,
        confidence: 0.85,
        shift: 0.0,
        missing: 0.0,
        accuracy: Some(0.9),
    };
}

pub const REQUESTS: usize = 200;
pub const LABELS: usize = 60;

/// One window of `behaviour`, recorded request by request.
pub fn record(
    reference: &Arc<ReferenceProfile>,
    key: WindowKey,
    b: Behaviour,
    seed: u64,
) -> WindowProfile {
    let options = ProfileOptions {
        kll_k: Some(64),
        ..Default::default()
    };
    let mut rec = Recorder::new(reference.clone(), key, options).unwrap();
    let mut rng = Rng::new(seed);
    for _ in 0..REQUESTS {
        let temp = if rng.unit() < b.missing {
            Value::Missing
        } else {
            Value::Number(20.0 + b.shift + 5.0 * rng.normal())
        };
        let inputs = [temp, Value::Number(rng.unit())];
        let ok = rng.unit() >= b.error_rate;
        let outputs = [Value::Number(rng.unit())];
        let latency = b.latency_us * (0.7 + 0.6 * rng.unit());
        let confidence = (b.confidence + 0.08 * rng.normal()).clamp(0.0, 1.0);
        rec.record(&Request {
            inputs: &inputs,
            outputs: if ok { &outputs[..] } else { &[] },
            latency: Duration::from_nanos((latency * 1_000.0) as u64),
            ok,
            confidence: Some(confidence),
            segment: None,
        })
        .unwrap();
    }
    if let Some(accuracy) = b.accuracy {
        for i in 0..LABELS {
            let actual = i % 3;
            let predicted = if rng.unit() < accuracy {
                actual
            } else {
                (actual + 1) % 3
            };
            rec.feedback(&Feedback {
                predicted,
                actual,
                segment: None,
            })
            .unwrap();
        }
    }
    rec.finish()
}

/// Pre-recorded windows per behaviour; a window for a device and time is a
/// pooled one with its key rewritten (recording is the slow part).
#[derive(Debug, Default)]
pub struct Pool {
    windows: HashMap<u64, Vec<WindowProfile>>,
}

const POOL: u64 = 12;

impl Pool {
    pub fn window(
        &mut self,
        reference: &Arc<ReferenceProfile>,
        b: Behaviour,
        device: &DeviceId,
        version: &str,
        start: UnixSeconds,
    ) -> WindowProfile {
        let tag = behaviour_tag(&b);
        let pool = self.windows.entry(tag).or_insert_with(|| {
            (0..POOL)
                .map(|i| {
                    let key = WindowKey {
                        device: "pool".into(),
                        model: MODEL.into(),
                        version: version.into(),
                        start: 0,
                        length: WINDOW as u32,
                    };
                    record(reference, key, b, tag ^ (i * 7919 + 1))
                })
                .collect()
        });
        let pick =
            (Sha256::of(format!("{}/{start}", device.as_str()).as_bytes()).0[0] as u64) % POOL;
        let mut w = pool[pick as usize].clone();
        w.key = WindowKey {
            device: device.as_str().into(),
            model: MODEL.into(),
            version: version.into(),
            start,
            length: WINDOW as u32,
        };
        w
    }
}

fn behaviour_tag(b: &Behaviour) -> u64 {
    let text = format!("{b:?}");
    let d = Sha256::of(text.as_bytes()).0;
    u64::from_le_bytes([d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]])
}

pub fn target(version: &str) -> TargetRef {
    TargetRef {
        name: MODEL.into(),
        version: version.into(),
        sha256: Sha256::of(version.as_bytes()),
        length: 1_000,
    }
}

pub fn device(i: usize) -> DeviceId {
    DeviceId::new(format!("dev-{i:03}")).unwrap()
}

/// `n` devices, the first three quarters `rpi4`, the rest `jetson`.
pub fn fleet(n: usize) -> Vec<DeviceInfo> {
    (0..n)
        .map(|i| DeviceInfo {
            id: device(i),
            target_class: if i * 4 < n * 3 { "rpi4" } else { "jetson" }.into(),
            groups: vec!["plant-a".into()],
        })
        .collect()
}

pub const PLAN: &str = r#"
name = "thermo 1.1"

[[stage]]
name = "canary"
percent = 25
min_devices = 3
min_windows = 12
max_duration = "3h"
[[stage.gate]]
kind = "latency"
[[stage.gate]]
kind = "error_rate"
tolerance = 0.02
[[stage.gate]]
kind = "drift"
[[stage.gate]]
kind = "confidence"
[[stage.gate]]
kind = "accuracy"
tolerance = 0.05

[[stage]]
name = "half"
percent = 50
min_devices = 6
min_windows = 12
max_duration = "3h"
[[stage.gate]]
kind = "latency"
[[stage.gate]]
kind = "error_rate"
tolerance = 0.02
[[stage.gate]]
kind = "drift"

[[stage]]
name = "all"
percent = 100
min_devices = 12
min_windows = 24
max_duration = "3h"
[[stage.gate]]
kind = "latency"
[[stage.gate]]
kind = "drift"
"#;

pub fn spec(id: &str, plan: &str, devices: usize) -> RolloutSpec {
    RolloutSpec {
        id: id.into(),
        from: target(FROM),
        to: target(TO),
        plan: Plan::from_toml(plan).unwrap(),
        devices: fleet(devices),
    }
}

pub fn config() -> RolloutConfig {
    RolloutConfig {
        evaluate_every_secs: WINDOW,
        ..RolloutConfig::default()
    }
}

/// Everything the shell saw, across restarts.
#[derive(Debug, Default)]
pub struct Log {
    /// Keys journaled with their sequence, and the directive published.
    pub journal: BTreeMap<DirectiveKey, u64>,
    pub published: Vec<(PlannedDirective, Directive)>,
    /// Publications of a key already journaled (after a restore).
    pub republished: usize,
    pub persisted: Vec<Snapshot>,
    pub alerts: Vec<(AlertKind, String)>,
    pub advanced: Vec<(u32, u32, UnixSeconds)>,
    pub started: Vec<u32>,
    pub halted: usize,
    pub paused: usize,
    pub completed: usize,
}

/// Where to cut the shell off: after `n` steps of work (each Persist,
/// each publication, each send report counts one).
#[derive(Debug, Clone, Copy)]
pub struct Crash {
    pub after: usize,
}

/// The simulated fleet and shell.
#[derive(Debug)]
pub struct Sim {
    pub rollout: Option<Rollout>,
    pub reference: Arc<ReferenceProfile>,
    pub config: RolloutConfig,
    pub pool: Pool,
    pub log: Log,
    pub next_sequence: u64,
    pub now: UnixSeconds,
    /// Version each device serves.
    pub serving: BTreeMap<DeviceId, String>,
    pub devices: Vec<DeviceInfo>,
    /// Behaviour per version.
    pub behaviour: BTreeMap<String, Behaviour>,
    /// Behaviour per device for the candidate, overriding the version's.
    pub canary_override: BTreeMap<DeviceId, Behaviour>,
    /// Every window sent, as the store keeps them.
    pub store: Vec<WindowProfile>,
    pub crash: Option<Crash>,
    /// Devices shadowing the candidate, with their cumulative rows, and the
    /// share of rows on which the two models agree.
    pub shadowing: BTreeMap<DeviceId, u64>,
    pub agreement: f64,
    pub work: usize,
    pub crashes: usize,
}

impl Sim {
    pub fn new(spec: RolloutSpec, config: RolloutConfig, to: Behaviour) -> Sim {
        Sim::with_crash(spec, config, to, None)
    }

    pub fn with_crash(
        spec: RolloutSpec,
        config: RolloutConfig,
        to: Behaviour,
        crash: Option<Crash>,
    ) -> Sim {
        let reference = reference();
        let devices = spec.devices.clone();
        let rollout = Rollout::new(spec, config.clone(), reference.clone(), T0).unwrap();
        let serving = devices
            .iter()
            .map(|d| (d.id.clone(), FROM.to_owned()))
            .collect();
        let mut sim = Sim {
            rollout: Some(rollout),
            reference,
            config,
            pool: Pool::default(),
            log: Log::default(),
            next_sequence: 100,
            now: T0,
            serving,
            devices,
            behaviour: [(FROM.to_owned(), Behaviour::GOOD), (TO.to_owned(), to)].into(),
            canary_override: BTreeMap::new(),
            store: Vec::new(),
            crash,
            shadowing: BTreeMap::new(),
            agreement: 0.99,
            work: 0,
            crashes: 0,
        };
        sim.drive();
        sim
    }

    pub fn rollout(&self) -> &Rollout {
        self.rollout.as_ref().unwrap()
    }

    pub fn rollout_mut(&mut self) -> &mut Rollout {
        self.rollout.as_mut().unwrap()
    }

    pub fn state(&self) -> &State {
        self.rollout().state()
    }

    /// Counts one unit of shell work; true when the crash point is reached.
    fn work(&mut self) -> bool {
        self.work += 1;
        matches!(self.crash, Some(c) if c.after == self.work)
    }

    /// Performs the core's actions until there are none.
    pub fn drive(&mut self) {
        while let Some(action) = self.rollout_mut().poll_action() {
            match action {
                Action::Persist(snapshot) => {
                    self.log.persisted.push(*snapshot);
                    if self.work() {
                        return self.restart();
                    }
                }
                Action::SendDirective(planned) => {
                    let sequence = match self.log.journal.get(&planned.key) {
                        Some(&s) => {
                            self.log.republished += 1;
                            s
                        }
                        None => {
                            self.next_sequence += 1;
                            let s = self.next_sequence;
                            self.log.journal.insert(planned.key.clone(), s);
                            let directive = planned.directive(s);
                            self.deliver(&planned);
                            self.log.published.push(((*planned).clone(), directive));
                            s
                        }
                    };
                    if self.work() {
                        return self.restart();
                    }
                    let now = self.now;
                    self.rollout_mut()
                        .handle_directive_sent(now, &planned.key, sequence)
                        .unwrap();
                    if self.work() {
                        return self.restart();
                    }
                }
                Action::Alert { kind, message } => self.log.alerts.push((kind, message)),
                Action::StageAdvanced { from, to, .. } => {
                    self.log.advanced.push((from, to, self.now))
                }
                Action::StageStarted { stage, .. } => self.log.started.push(stage),
                Action::Halted { .. } => self.log.halted += 1,
                Action::Paused { .. } => self.log.paused += 1,
                Action::Completed => self.log.completed += 1,
                _ => {}
            }
        }
    }

    /// The device acts on a directive at once (install, rollback, commit).
    fn deliver(&mut self, planned: &PlannedDirective) {
        self.shadowing.remove(&planned.device);
        let version = match planned.kind {
            DirectiveKind::Canary | DirectiveKind::Commit => TO,
            DirectiveKind::Rollback => FROM,
            DirectiveKind::Shadow => {
                // Keeps serving the active model; the candidate runs beside it.
                self.shadowing.insert(planned.device.clone(), 0);
                FROM
            }
        };
        self.serving
            .insert(planned.device.clone(), version.to_owned());
    }

    /// The server process dies (queued actions are lost) and starts again
    /// from the last persisted snapshot; the store feeds the windows back.
    pub fn restart(&mut self) {
        self.crash = None;
        self.crashes += 1;
        let snapshot = self.log.persisted.last().cloned().unwrap();
        let rollout = Rollout::restore(
            snapshot,
            self.config.clone(),
            self.reference.clone(),
            self.now,
        )
        .unwrap();
        self.rollout = Some(rollout);
        if let Some(floor) = self.rollout().window_floor() {
            let now = self.now;
            let windows: Vec<_> = self
                .store
                .iter()
                .filter(|w| w.key.start >= floor)
                .cloned()
                .collect();
            for w in &windows {
                self.rollout_mut().handle_window(now, w);
            }
        }
        self.drive();
    }

    /// One window period: every device sends a window of what it serves,
    /// then time passes to the window's end and the timer fires.
    pub fn step(&mut self) {
        let start = self.now;
        let reference = self.reference.clone();
        let mut windows = Vec::new();
        for d in &self.devices {
            let version = self.serving[&d.id].clone();
            let b = match self.canary_override.get(&d.id) {
                Some(b) if version == TO => *b,
                _ => self.behaviour[&version],
            };
            windows.push(self.pool.window(&reference, b, &d.id, &version, start));
        }
        self.now = start + WINDOW;
        let now = self.now;
        for w in windows {
            self.store.push(w.clone());
            self.rollout_mut().handle_window(now, &w);
        }
        let agreement = self.agreement;
        let reports: Vec<_> = self
            .shadowing
            .iter_mut()
            .map(|(id, rows)| {
                *rows += REQUESTS as u64;
                (id.clone(), *rows, (*rows as f64 * agreement) as u64)
            })
            .collect();
        for (id, rows, agreed) in reports {
            self.rollout_mut().handle_shadow(now, &id, rows, agreed);
        }
        self.drive();
        self.rollout_mut().handle_timeout(now);
        self.drive();
    }

    /// Steps until the rollout is final or `limit` steps have passed.
    pub fn run(&mut self, limit: usize) -> usize {
        for i in 0..limit {
            if self.state().is_final() {
                return i;
            }
            self.step();
        }
        limit
    }

    /// Published directives of one kind, by device.
    pub fn published(&self, kind: DirectiveKind) -> Vec<DeviceId> {
        self.log
            .published
            .iter()
            .filter(|(p, _)| p.kind == kind)
            .map(|(p, _)| p.device.clone())
            .collect()
    }
}
