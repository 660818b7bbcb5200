//! Cohorts: reproducible, stratified, growing, with a disjoint control.

use std::collections::{BTreeMap, BTreeSet};

use outpost_fleet::rollout::{DeviceInfo, Plan, assign};
use outpost_protocol::topic::DeviceId;
use proptest::prelude::*;

use super::harness::{PLAN, fleet};

fn class_of(devices: &[DeviceInfo]) -> BTreeMap<DeviceId, String> {
    devices
        .iter()
        .map(|d| (d.id.clone(), d.target_class.clone()))
        .collect()
}

#[test]
fn cohorts_are_reproducible_and_seeded_by_the_rollout_id() {
    let plan = Plan::from_toml(PLAN).unwrap();
    let devices = fleet(40);
    let a = assign("r-1", &plan, &devices);
    assert_eq!(a, assign("r-1", &plan, &devices));
    // The input order does not matter.
    let mut reversed = devices.clone();
    reversed.reverse();
    assert_eq!(a, assign("r-1", &plan, &reversed));
    // Another rollout draws another canary.
    assert_ne!(a[0].canary, assign("r-2", &plan, &devices)[0].canary);
}

#[test]
fn cohorts_are_stratified_by_target_class() {
    let plan = Plan::from_toml(PLAN).unwrap();
    let devices = fleet(40); // 30 rpi4, 10 jetson
    let classes = class_of(&devices);
    let stages = assign("r-strata", &plan, &devices);
    let count =
        |set: &BTreeSet<DeviceId>, class: &str| set.iter().filter(|d| classes[*d] == class).count();
    // 25 % of 40 = 10: 7.5 → 8 or 7 rpi4 and 2 or 3 jetson.
    let first = &stages[0];
    assert_eq!(first.canary.len(), 10);
    let rpi = count(&first.canary, "rpi4");
    assert!((7..=8).contains(&rpi), "{rpi}");
    // The control mirrors the canary, class by class, and never overlaps it.
    for stage in &stages {
        assert!(stage.canary.is_disjoint(&stage.control));
        for class in ["rpi4", "jetson"] {
            let (k, c, n) = (
                count(&stage.canary, class),
                count(&stage.control, class),
                count(&classes.keys().cloned().collect(), class),
            );
            assert_eq!(c, k.min(n - k), "{class}");
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn later_stages_are_supersets_and_shares_are_proportional(
        sizes in proptest::collection::vec(1usize..30, 1..5),
        mut percents in proptest::collection::vec(1u8..=100, 1..5),
        id in "[a-z0-9-]{1,12}",
    ) {
        percents.sort_unstable();
        let mut devices = Vec::new();
        for (c, n) in sizes.iter().enumerate() {
            for i in 0..*n {
                devices.push(DeviceInfo {
                    id: DeviceId::new(format!("c{c}-d{i}")).unwrap(),
                    target_class: format!("class-{c}"),
                    groups: vec![],
                });
            }
        }
        let mut text = String::new();
        for p in &percents {
            text += &format!("[[stage]]\npercent = {p}\nmax_duration = 60\n");
        }
        let plan = Plan::from_toml(&text).unwrap();
        let stages = assign(&id, &plan, &devices);
        let total: usize = sizes.iter().sum();
        let classes = class_of(&devices);
        for (i, stage) in stages.iter().enumerate() {
            let k = stage.canary.len();
            prop_assert_eq!(k, ((f64::from(percents[i]) / 100.0 * total as f64) - 1e-9).ceil() as usize);
            prop_assert!(stage.canary.is_disjoint(&stage.control));
            if i > 0 {
                prop_assert!(stages[i - 1].canary.is_subset(&stage.canary));
            }
            // Each class within one device of its proportional share.
            for (c, n) in sizes.iter().enumerate() {
                let class = format!("class-{c}");
                let got = stage.canary.iter().filter(|d| classes[*d] == class).count() as f64;
                let share = k as f64 * *n as f64 / total as f64;
                prop_assert!((got - share).abs() <= 1.0 + 1e-9, "class {} got {} share {}", c, got, share);
            }
        }
    }
}
