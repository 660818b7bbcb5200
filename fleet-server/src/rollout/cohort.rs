//! Cohorts: which devices run the candidate at each stage, and which stay
//! on the current model as the control.
//!
//! Design: deterministic and reproducible. Each device gets a rank,
//! SHA-256(rollout id ‖ 0x00 ‖ device id), and within each target class
//! (stratum) devices are ordered by rank. The canary takes a prefix of that
//! order, the control the same number of devices from its end, so the two
//! never overlap. Seats are shared among strata by the Sainte-Laguë
//! (Webster) divisor method, one seat at a time: the allocation for `K + 1`
//! devices is the allocation for `K` plus one seat, so later stages are
//! supersets of earlier ones by construction (a largest-remainder split
//! would not be: the Alabama paradox), and every stratum gets its
//! proportional share to within rounding.

use std::collections::{BTreeMap, BTreeSet};

use outpost_protocol::bytes::Sha256;
use outpost_protocol::topic::DeviceId;
use serde::{Deserialize, Serialize};

use super::plan::{CohortSize, Plan};

/// A device eligible for a rollout, as the inventory knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceInfo {
    pub id: DeviceId,
    /// The stratum: the device's target profile or device class
    /// (`rpi4`, `jetson-orin-nano`).
    pub target_class: String,
    /// Inventory groups (informational here; the caller filters by group).
    #[serde(default)]
    pub groups: Vec<String>,
}

/// One stage's cohorts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StageCohorts {
    /// Devices that run the candidate from this stage on.
    pub canary: BTreeSet<DeviceId>,
    /// Devices that stay on the current model and are compared with.
    /// Empty when the canary takes a whole stratum set (100 %).
    pub control: BTreeSet<DeviceId>,
}

/// A device's place in the order of its stratum.
pub fn rank(rollout: &str, device: &DeviceId) -> Sha256 {
    let mut bytes = Vec::with_capacity(rollout.len() + 1 + device.as_str().len());
    bytes.extend_from_slice(rollout.as_bytes());
    bytes.push(0);
    bytes.extend_from_slice(device.as_str().as_bytes());
    Sha256::of(&bytes)
}

/// The devices by stratum, each stratum in rank order. Duplicate ids count
/// once (the first entry wins).
pub fn strata(rollout: &str, devices: &[DeviceInfo]) -> BTreeMap<String, Vec<DeviceId>> {
    let mut seen = BTreeSet::new();
    let mut by_class: BTreeMap<String, Vec<(Sha256, DeviceId)>> = BTreeMap::new();
    for d in devices {
        if seen.insert(d.id.clone()) {
            by_class
                .entry(d.target_class.clone())
                .or_default()
                .push((rank(rollout, &d.id), d.id.clone()));
        }
    }
    by_class
        .into_iter()
        .map(|(class, mut v)| {
            v.sort();
            (class, v.into_iter().map(|(_, id)| id).collect())
        })
        .collect()
}

/// Seats per stratum for `total` canary devices (Sainte-Laguë, one seat at
/// a time; ties to the larger stratum, then the class name).
pub fn allocate(sizes: &BTreeMap<String, usize>, total: usize) -> BTreeMap<String, usize> {
    let mut seats: BTreeMap<String, usize> = sizes.keys().map(|k| (k.clone(), 0)).collect();
    for _ in 0..total {
        // Priority n / (2k + 1), compared exactly by cross-multiplication.
        let best = sizes
            .iter()
            .filter(|(class, n)| seats.get(*class).copied().unwrap_or(0) < **n)
            .max_by(|(ca, na), (cb, nb)| {
                let ka = seats.get(*ca).copied().unwrap_or(0) as u128;
                let kb = seats.get(*cb).copied().unwrap_or(0) as u128;
                let left = (**na as u128) * (2 * kb + 1);
                let right = (**nb as u128) * (2 * ka + 1);
                left.cmp(&right)
                    .then(na.cmp(nb))
                    // `max_by` keeps the last of equals: reverse the name
                    // order so the smallest name wins a full tie.
                    .then_with(|| cb.cmp(ca))
            });
        match best {
            Some((class, _)) => {
                if let Some(k) = seats.get_mut(class) {
                    *k += 1;
                }
            }
            None => break,
        }
    }
    seats
}

/// Canary size of each stage for `n` eligible devices: the stage's size
/// rounded up, at least the previous stage's, at most `n`.
pub fn stage_totals(plan: &Plan, n: usize) -> Vec<usize> {
    let mut previous = 0usize;
    plan.stages
        .iter()
        .map(|stage| {
            let k = match stage.size() {
                CohortSize::Percent(p) => {
                    // Round up, but let float noise at exact multiples
                    // (10 % of 50 = 5.000000001) round down.
                    let exact = p / 100.0 * n as f64;
                    (exact - 1e-9).ceil().max(0.0) as usize
                }
                CohortSize::Devices(d) => d as usize,
            };
            previous = k.min(n).max(previous);
            previous
        })
        .collect()
}

/// The cohorts of every stage of `plan` for `devices` (see the module docs).
pub fn assign(rollout: &str, plan: &Plan, devices: &[DeviceInfo]) -> Vec<StageCohorts> {
    let strata = strata(rollout, devices);
    let sizes: BTreeMap<String, usize> = strata.iter().map(|(c, v)| (c.clone(), v.len())).collect();
    let n = sizes.values().sum();
    stage_totals(plan, n)
        .into_iter()
        .map(|total| {
            let seats = allocate(&sizes, total);
            let mut cohorts = StageCohorts::default();
            for (class, order) in &strata {
                let k = seats.get(class).copied().unwrap_or(0);
                let control = k.min(order.len() - k);
                cohorts.canary.extend(order[..k].iter().cloned());
                cohorts
                    .control
                    .extend(order[order.len() - control..].iter().cloned());
            }
            cohorts
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sizes(v: &[(&str, usize)]) -> BTreeMap<String, usize> {
        v.iter().map(|(k, n)| ((*k).to_owned(), *n)).collect()
    }

    #[test]
    fn sainte_lague_is_proportional_and_house_monotone() {
        let s = sizes(&[("a", 60), ("b", 30), ("c", 10)]);
        let ten = allocate(&s, 10);
        assert_eq!((ten["a"], ten["b"], ten["c"]), (6, 3, 1));
        let mut previous = allocate(&s, 0);
        for total in 1..=100 {
            let now = allocate(&s, total);
            assert_eq!(now.values().sum::<usize>(), total);
            for (class, k) in &now {
                assert!(*k >= previous[class] && *k <= s[class]);
            }
            previous = now;
        }
        // More seats than devices: every device, no more.
        assert_eq!(allocate(&s, 500).values().sum::<usize>(), 100);
    }
}
