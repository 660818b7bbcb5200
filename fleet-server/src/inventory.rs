//! The device inventory (ARCHITECTURE §9), built from birth, state and
//! death messages (§7): a pure fold of messages into [`DeviceRecord`]s.
//!
//! Design: a death carries the session of the birth it ends; a death for
//! an older session (the broker delivering a stale will after the device
//! reconnected) is ignored, as is a state from an older session.

use std::collections::{BTreeMap, BTreeSet};

use outpost_protocol::messages::{DeviceMessage, HealthStatus, ModelRef, Slot};
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
        }
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
        }
        DeviceMessage::Telemetry(_) | DeviceMessage::Event(_) => {
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
}
