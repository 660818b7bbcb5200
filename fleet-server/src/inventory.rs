//! The device inventory (ARCHITECTURE §9), built from birth, state and
//! death messages (§7): a pure fold of messages into [`DeviceRecord`]s.
//!
//! Design: a death carries the session of the birth it ends; a death for
//! an older session (the broker delivering a stale will after the device
//! reconnected) is ignored, as is a state from an older session.

use std::collections::{BTreeMap, BTreeSet};

use outpost_protocol::messages::{
    DeviceMessage, EngineReport, EventKind, HealthStatus, ModelRef, Slot,
};
use outpost_protocol::topic::DeviceId;
use serde::{Deserialize, Serialize};

/// One installed model version in one slot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Installed {
    pub slot: Slot,
    pub name: String,
    pub version: String,
    pub sha256: String,
}

/// What the fleet knows about one device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceRecord {
    pub id: DeviceId,
    /// Target profile (device class), from the birth.
    pub target: String,
    pub arch: String,
    pub agent_version: String,
    /// Operator-assigned groups and labels (`outpost devices label`).
    #[serde(default)]
    pub groups: BTreeSet<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    pub installed: Vec<Installed>,
    /// Unix seconds of the last message from it.
    pub last_seen: u64,
    pub online: bool,
    pub health: Option<HealthStatus>,
    #[serde(default)]
    pub health_detail: Option<String>,
    pub session: u64,
    pub root_version: u64,
    pub last_directive: u64,
    /// The engine of each installed model and why (the agent's
    /// `engine_selected` event), by `name@version`; dropped when the
    /// version is no longer installed.
    #[serde(default)]
    pub engines: BTreeMap<String, EngineReport>,
}

impl DeviceRecord {
    fn new(id: DeviceId) -> DeviceRecord {
        DeviceRecord {
            id,
            target: String::new(),
            arch: String::new(),
            agent_version: String::new(),
            groups: BTreeSet::new(),
            labels: BTreeMap::new(),
            installed: vec![],
            last_seen: 0,
            online: false,
            health: None,
            health_detail: None,
            session: 0,
            root_version: 0,
            last_directive: 0,
            engines: BTreeMap::new(),
        }
    }

    /// Forgets the engines of models no longer installed; the others take
    /// the slot they are in now (an active model becomes the previous).
    fn prune_engines(&mut self) {
        let installed = &self.installed;
        self.engines.retain(|_, e| {
            match installed
                .iter()
                .find(|i| i.name == e.model.name && i.version == e.model.version)
            {
                Some(i) => {
                    e.slot = i.slot;
                    true
                }
                None => false,
            }
        });
    }

    /// Whether any slot holds `name` `version`.
    pub fn runs(&self, name: &str, version: &str) -> bool {
        self.installed
            .iter()
            .any(|i| i.name == name && i.version == version)
    }
}

fn installed(slot: Slot, m: &ModelRef) -> Installed {
    Installed {
        slot,
        name: m.name.clone(),
        version: m.version.clone(),
        sha256: m.sha256.to_hex(),
    }
}

/// Folds one message from `id`, received at `now`, into its record.
/// Returns the new record, or `None` when the message changes nothing
/// (telemetry and events only touch `last_seen` through the caller; a
/// stale death or state is ignored).
pub fn apply(
    current: Option<DeviceRecord>,
    id: &DeviceId,
    msg: &DeviceMessage,
    now: u64,
) -> Option<DeviceRecord> {
    let mut d = current.unwrap_or_else(|| DeviceRecord::new(id.clone()));
    match msg {
        DeviceMessage::Birth(b) => {
            d.session = b.session;
            d.target = b.target.clone();
            d.arch = b.arch.clone();
            d.agent_version = b.agent_version.clone();
            d.installed = b
                .models
                .iter()
                .map(|m| installed(m.slot, &m.model))
                .collect();
            d.root_version = b.root_version;
            d.last_directive = b.last_directive;
            d.online = true;
            d.prune_engines();
        }
        DeviceMessage::Death(x) => {
            if x.session < d.session {
                return None;
            }
            d.online = false;
        }
        DeviceMessage::State(s) => {
            if s.session < d.session {
                return None;
            }
            d.session = s.session;
            d.installed = s
                .models
                .iter()
                .flat_map(|m| {
                    [
                        (Slot::Active, &m.active),
                        (Slot::Candidate, &m.candidate),
                        (Slot::Previous, &m.previous),
                    ]
                    .into_iter()
                    .filter_map(|(slot, r)| r.as_ref().map(|r| installed(slot, r)))
                })
                .collect();
            d.health = Some(s.health.status);
            d.health_detail = s.health.detail.clone();
            d.root_version = s.root_version;
            d.last_directive = s.last_directive;
            d.online = true;
            d.prune_engines();
        }
        DeviceMessage::Event(e) => {
            if let EventKind::EngineSelected(r) = &e.kind {
                d.engines
                    .insert(format!("{}@{}", r.model.name, r.model.version), r.clone());
            }
            d.online = true;
        }
        DeviceMessage::Telemetry(_) => {
            d.online = true;
        }
        DeviceMessage::Command(_) => return None,
    }
    d.last_seen = d.last_seen.max(now);
    Some(d)
}

/// Where each model version runs: `(name, version) → device ids`.
pub fn placement(devices: &[DeviceRecord]) -> BTreeMap<(String, String), Vec<String>> {
    let mut out: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    for d in devices {
        for i in &d.installed {
            let ids = out.entry((i.name.clone(), i.version.clone())).or_default();
            if !ids.contains(&d.id.to_string()) {
                ids.push(d.id.to_string());
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use outpost_protocol::bytes::Sha256;
    use outpost_protocol::messages::{Birth, Death, InstalledModel};

    #[test]
    fn a_stale_death_does_not_take_a_reconnected_device_offline() {
        let id = DeviceId::new("pump-1").unwrap();
        let birth = |session| {
            DeviceMessage::Birth(Birth {
                session,
                at: 1,
                agent_version: "0.1.0".into(),
                target: "rpi5".into(),
                arch: "aarch64".into(),
                models: vec![InstalledModel {
                    model: ModelRef {
                        name: "digits".into(),
                        version: "1.0.0".into(),
                        sha256: Sha256::of(b"x"),
                    },
                    slot: Slot::Active,
                }],
                root_version: 1,
                last_directive: 0,
            })
        };
        let d = apply(None, &id, &birth(2), 10).unwrap();
        assert!(d.online && d.runs("digits", "1.0.0"));
        assert!(
            apply(
                Some(d.clone()),
                &id,
                &DeviceMessage::Death(Death { session: 1 }),
                11
            )
            .is_none()
        );
        let d = apply(
            Some(d),
            &id,
            &DeviceMessage::Death(Death { session: 2 }),
            12,
        )
        .unwrap();
        assert!(!d.online);
        assert_eq!(d.last_seen, 12);
        assert_eq!(
            placement(&[d])[&("digits".into(), "1.0.0".into())],
            vec!["pump-1"]
        );
    }

    #[test]
    fn engine_events_are_kept_per_installed_model_and_dropped_with_it() {
        let id = DeviceId::new("cam-3").unwrap();
        let model = |version: &str| ModelRef {
            name: "digits".into(),
            version: version.into(),
            sha256: Sha256::of(version.as_bytes()),
        };
        let birth = |version: &str| {
            DeviceMessage::Birth(Birth {
                session: 1,
                at: 1,
                agent_version: "0.1.0".into(),
                target: "jetson-orin-nano".into(),
                arch: "aarch64".into(),
                models: vec![InstalledModel {
                    model: model(version),
                    slot: Slot::Active,
                }],
                root_version: 1,
                last_directive: 0,
            })
        };
        let engine = |version: &str, engine: &str| {
            DeviceMessage::Event(outpost_protocol::messages::Event {
                seq: 1,
                at: 2,
                kind: EventKind::EngineSelected(EngineReport {
                    model: model(version),
                    slot: Slot::Active,
                    engine: engine.into(),
                    reason: "the GPU is faster".into(),
                    cpu_us: Some(900),
                    gpu_us: Some(120),
                    adapter: Some("Orin on vulkan (integrated_gpu)".into()),
                }),
            })
        };
        let d = apply(None, &id, &birth("1.0.0"), 10).unwrap();
        let d = apply(Some(d), &id, &engine("1.0.0", "gpu"), 11).unwrap();
        let e = &d.engines["digits@1.0.0"];
        assert_eq!((e.engine.as_str(), e.gpu_us), ("gpu", Some(120)));
        // Its JSON (the API's and the store's) carries it, and reads back.
        let back: DeviceRecord = serde_json::from_value(serde_json::to_value(&d).unwrap()).unwrap();
        assert_eq!(back, d);
        // A record stored before engines existed still reads.
        let mut old = serde_json::to_value(&d).unwrap();
        old.as_object_mut().unwrap().remove("engines");
        assert!(
            serde_json::from_value::<DeviceRecord>(old)
                .unwrap()
                .engines
                .is_empty()
        );
        // 2.0.0 replaces 1.0.0: its engine goes with it.
        let d = apply(Some(d), &id, &birth("2.0.0"), 12).unwrap();
        assert!(d.engines.is_empty(), "{:?}", d.engines);
    }
}
