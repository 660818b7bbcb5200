//! The event outbox against a real Mosquitto: events raised while the
//! broker is down — and across an agent restart — are stored, published
//! in sequence order once it is back, each exactly once, and leave the
//! outbox on the broker's PUBACK.
//!
//! The events come from the device itself: a shadow candidate reports a
//! `ShadowReport` every telemetry window (one second here), connected or
//! not.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use outpost_protocol::codec;
use outpost_protocol::messages::{Event, EventKind, InstallStep};
use outpost_protocol::trust::DirectiveAction;

use crate::common::*;
use crate::download::serve;
use crate::health::event_where;

const T: Duration = Duration::from_secs(30);

/// Sequence numbers stored in the agent's event outbox now.
fn stored(a: &Running) -> Vec<u64> {
    let outbox = a.state.store.events().unwrap();
    outbox
        .after(None, usize::MAX)
        .into_iter()
        .map(|(s, _)| s)
        .collect()
}

fn disconnected(a: &Running) {
    wait_for("the agent to see the broker gone", T, || {
        (!a.state.mqtt_connected.load(Ordering::SeqCst)).then_some(())
    });
}

#[test]
fn events_raised_while_the_broker_is_down_arrive_in_order_once_each_after_a_restart() {
    let device = "events-outage";
    let Some(mut broker) = Mosquitto::start() else {
        return;
    };
    let w = World::new();
    let (obs, client) = Observer::start(broker.port, &format!("outpost/v1/devices/{device}/#"));
    let config = w.config(device, broker.port, "");
    let a = Running::start(config.clone());
    obs.next_where(T, |t, _| t.ends_with("/birth"));

    // A shadow candidate: a ShadowReport every second from now on.
    let v2 = package_bytes("digits", "2.0.0");
    let t2 = w.target("digits", "2.0.0", &v2);
    let server = serve(v2);
    let shadow = DirectiveAction::Shadow {
        target: t2.reference(),
    };
    let url = Some(format!("{}/ok", server.base));
    Observer::publish(
        &client,
        &format!("outpost/v1/devices/{device}/commands"),
        signed_command(&w, device, 1, shadow, std::slice::from_ref(&t2), url),
    );
    let shadowing = event_where(&obs, |k| {
        matches!(
            k,
            EventKind::Install {
                step: InstallStep::Shadow,
                ..
            }
        )
    });
    // Connected: events leave the outbox as they are acknowledged.
    wait_for("acknowledged events deleted", T, || {
        stored(&a).iter().all(|s| *s > shadowing.seq).then_some(())
    });

    broker.stop();
    disconnected(&a);
    wait_for("three events stored while the broker is down", T, || {
        (stored(&a).len() >= 3).then_some(())
    });
    // A clean stop and a new run, still without a broker: what was stored
    // survives, and the new run adds its own.
    let before_restart = stored(&a);
    drop(a);
    let a = Running::start(config);
    disconnected(&a);
    wait_for("more events stored by the new run", T, || {
        let now = stored(&a);
        (now.len() >= before_restart.len() + 2).then_some(())
    });
    let kept = stored(&a);
    assert!(
        before_restart.iter().all(|s| kept.contains(s)),
        "{before_restart:?} not all in {kept:?}"
    );

    broker.restart();
    // Every stored event arrives, in sequence order; none twice. Read
    // until a newer one (the next ShadowReport) shows the outbox was
    // published through; copies of events acknowledged before the outage
    // (the observer's session may hold them) are not counted.
    let last = *kept.last().unwrap();
    let mut seen: BTreeMap<u64, usize> = BTreeMap::new();
    let mut order = vec![];
    loop {
        let (_, p) = obs.next_where(T, |t, _| t.ends_with("/events"));
        let ev: Event = codec::decode(&p, 1 << 16).unwrap();
        if !kept.contains(&ev.seq) && ev.seq <= last {
            continue;
        }
        *seen.entry(ev.seq).or_default() += 1;
        order.push(ev.seq);
        if ev.seq > last {
            break;
        }
    }
    for s in &kept {
        assert_eq!(seen.get(s), Some(&1), "event {s}: {seen:?}");
    }
    assert!(
        order.windows(2).all(|p| p[0] < p[1]),
        "published out of order: {order:?}"
    );
    assert!(
        kept.iter()
            .any(|s| *s > before_restart.last().copied().unwrap_or(0)),
        "the second run stored events of its own"
    );
    wait_for("the outbox emptied by PUBACKs", T, || {
        stored(&a).iter().all(|s| *s > last).then_some(())
    });
    let (_, metrics) = get(&a.url("/metrics"));
    assert!(
        metrics
            .lines()
            .any(|l| l == "outpost_agent_events_dropped_total 0"),
        "{metrics}"
    );
}
