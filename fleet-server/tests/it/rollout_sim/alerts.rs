//! Alerts: notify once, escalate when nobody acknowledges, stop when
//! someone does, resolve when the condition clears.

use outpost_fleet::alerts::{
    AlertAction, AlertId, Alerts, Condition, Escalation, NotifyKind, Observation, Rule,
};

fn engine() -> Alerts {
    Alerts::new(vec![
        Rule {
            name: "errors".into(),
            condition: Condition::MetricAbove {
                metric: "error_rate".into(),
                threshold: 0.05,
            },
            sink: "ops-chat".into(),
            escalate: Some(Escalation {
                after_secs: 900,
                sink: "pager".into(),
            }),
        },
        Rule {
            name: "halts".into(),
            condition: Condition::RolloutHalted,
            sink: "ops-chat".into(),
            escalate: None,
        },
    ])
}

fn drain(a: &mut Alerts) -> Vec<(String, NotifyKind, String)> {
    std::iter::from_fn(|| a.poll_action())
        .map(|action| match action {
            AlertAction::Notify { sink, kind, alert } => (sink, kind, alert.id.subject),
            other => panic!("{other:?}"),
        })
        .collect()
}

fn error_rate(value: f64) -> Observation {
    Observation::Metric {
        name: "error_rate".into(),
        value,
    }
}

#[test]
fn an_unacknowledged_alert_escalates_after_its_period_once() {
    let mut a = engine();
    a.handle_observation(1_000, &error_rate(0.01));
    assert!(drain(&mut a).is_empty());
    a.handle_observation(1_060, &error_rate(0.09));
    a.handle_observation(1_120, &error_rate(0.12)); // still firing: no repeat
    assert_eq!(
        drain(&mut a),
        vec![("ops-chat".into(), NotifyKind::Firing, "error_rate".into())]
    );
    assert_eq!(a.poll_timeout(), Some(1_060 + 900));
    a.handle_timeout(1_059 + 900);
    assert!(drain(&mut a).is_empty());
    a.handle_timeout(1_060 + 900);
    a.handle_timeout(1_061 + 900);
    assert_eq!(
        drain(&mut a),
        vec![("pager".into(), NotifyKind::Escalated, "error_rate".into())]
    );
    assert_eq!(a.poll_timeout(), None);
    // Cleared: resolved on both sinks it reached.
    a.handle_observation(3_000, &error_rate(0.01));
    assert_eq!(
        drain(&mut a),
        vec![
            ("ops-chat".into(), NotifyKind::Resolved, "error_rate".into()),
            ("pager".into(), NotifyKind::Resolved, "error_rate".into()),
        ]
    );
    assert_eq!(a.firing().count(), 0);
}

#[test]
fn an_acknowledged_alert_does_not_escalate() {
    let mut a = engine();
    a.handle_observation(0, &error_rate(0.2));
    drain(&mut a);
    let id = AlertId {
        rule: "errors".into(),
        subject: "error_rate".into(),
    };
    a.handle_ack(300, &id, "dana").unwrap();
    assert_eq!(a.poll_timeout(), None);
    a.handle_timeout(10_000);
    assert!(drain(&mut a).is_empty());
    assert_eq!(
        a.firing().next().unwrap().acknowledged,
        Some((300, "dana".into()))
    );
    let unknown = AlertId {
        rule: "errors".into(),
        subject: "latency".into(),
    };
    assert!(a.handle_ack(300, &unknown, "dana").is_err());
}

#[test]
fn rollout_halts_alert_per_rollout_and_resolve_when_it_runs_again() {
    let mut a = engine();
    let halted = |r: &str| Observation::RolloutHalted {
        rollout: r.into(),
        reason: "gate failed: latency".into(),
    };
    a.handle_observation(0, &halted("r-1"));
    a.handle_observation(5, &halted("r-1"));
    a.handle_observation(9, &halted("r-2"));
    assert_eq!(
        drain(&mut a),
        vec![
            ("ops-chat".into(), NotifyKind::Firing, "r-1".into()),
            ("ops-chat".into(), NotifyKind::Firing, "r-2".into()),
        ]
    );
    a.handle_observation(
        20,
        &Observation::RolloutRunning {
            rollout: "r-1".into(),
        },
    );
    assert_eq!(
        drain(&mut a),
        vec![("ops-chat".into(), NotifyKind::Resolved, "r-1".into())]
    );
}
