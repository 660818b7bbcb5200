//! The engine that runs each model, and why, is never silent: it is in
//! `/v1/status`, in `/metrics` and in an `engine_selected` event.

use std::time::Duration;

use outpost_protocol::codec;
use outpost_protocol::messages::{EngineReport, Event, EventKind, Slot};

use crate::common::*;

const T: Duration = Duration::from_secs(30);

/// The `outpost_agent_model_engine` lines of a scrape.
fn engine_lines(a: &Running) -> Vec<String> {
    let (code, text) = get(&a.url("/metrics"));
    assert_eq!(code, 200);
    text.lines()
        .filter(|l| l.starts_with("outpost_agent_model_engine"))
        .map(str::to_owned)
        .collect()
}

fn status(a: &Running) -> serde_json::Value {
    let (code, body) = get(&a.url("/v1/status"));
    assert_eq!(code, 200);
    serde_json::from_str(&body).unwrap()
}

#[test]
fn the_engine_and_its_reason_are_in_the_status_the_metrics_and_an_event() {
    let device = "engine-cpu";
    let Some(broker) = Mosquitto::start() else {
        return;
    };
    let (obs, _client) =
        Observer::start(broker.port, &format!("outpost/v1/devices/{device}/events"));
    let w = World::new();
    let a = Running::start(w.config(device, broker.port, ""));

    // The target profile prefers the CPU: the decision says so.
    let (_, p) = obs.next_where(T, |_, p| {
        codec::decode::<Event>(p, 1 << 16)
            .is_ok_and(|e| matches!(e.kind, EventKind::EngineSelected(_)))
    });
    let ev: Event = codec::decode(&p, 1 << 16).unwrap();
    let EventKind::EngineSelected(EngineReport {
        model,
        slot,
        engine,
        reason,
        ..
    }) = ev.kind
    else {
        unreachable!()
    };
    assert_eq!(
        (model.name.as_str(), model.version.as_str()),
        ("digits", "1.0.0")
    );
    assert_eq!(slot, Slot::Active);
    assert_eq!(engine, "cpu");
    assert!(!reason.is_empty());

    let st = status(&a);
    let e = &st["models"][0]["engine"];
    assert_eq!(e["engine"], "cpu", "{st}");
    assert_eq!(e["reason"], reason.as_str(), "{st}");

    let lines = engine_lines(&a);
    let line = lines
        .iter()
        .find(|l| l.starts_with("outpost_agent_model_engine{"))
        .unwrap_or_else(|| panic!("no engine gauge in {lines:?}"));
    for label in [
        "model=\"digits\"",
        "version=\"1.0.0\"",
        "slot=\"active\"",
        "engine=\"cpu\"",
    ] {
        assert!(line.contains(label), "{label} not in {line}");
    }
    assert!(line.contains(&format!("reason=\"{reason}\"")), "{line}");
    assert!(line.ends_with(" 1"), "{line}");
}

#[test]
fn auto_on_a_gpu_target_measures_both_engines_and_says_which_and_why() {
    let probe = outpost_runtime::gpu::probe();
    if !probe.available {
        skip_or_fail(&format!(
            "no GPU adapter (apt install mesa-vulkan-drivers for lavapipe): {}",
            probe.reason.as_deref().unwrap_or("unknown")
        ));
        return;
    }
    let w = World::new();
    // A device class with a GPU: its models load with engine `auto`.
    let target = w.dir.path().join("gpu-box.toml");
    std::fs::write(
        &target,
        format!(
            "name = \"gpu-box\"\ndescription = \"test device class with a GPU\"\narch = \"{arch}\"\n\
             triple = \"{arch}-unknown-linux-gnu\"\ncores = 2\nmemory_mb = 4096\n\
             accelerators = [\"vulkan\"]\npreferred_engine = \"gpu\"\nthreads = 1\n",
            arch = std::env::consts::ARCH
        ),
    )
    .unwrap();
    let text = w.config_text("engine-auto", free_port(), "");
    let text = text
        .lines()
        .map(|l| {
            if l.starts_with("target = ") {
                format!("target = \"{}\"", target.display())
            } else {
                l.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    let a = Running::start(w.parse(&text));

    let st = status(&a);
    let e = &st["models"][0]["engine"];
    let (cpu, gpu) = (e["cpu_us"].as_u64(), e["gpu_us"].as_u64());
    assert!(cpu.is_some() && gpu.is_some(), "both measured: {st}");
    let faster = if gpu < cpu { "gpu" } else { "cpu" };
    assert_eq!(e["engine"], faster, "the faster one runs: {st}");
    let reason = e["reason"].as_str().unwrap();
    assert!(reason.contains("measured"), "{reason}");
    let adapter = e["adapter"].as_str().unwrap();
    assert!(
        adapter.starts_with(probe.adapter.as_deref().unwrap()),
        "{adapter}"
    );

    let lines = engine_lines(&a);
    for engine in ["cpu", "gpu"] {
        assert!(
            lines.iter().any(|l| {
                l.starts_with("outpost_agent_model_engine_benchmark_microseconds{")
                    && l.contains(&format!("engine=\"{engine}\""))
            }),
            "no {engine} benchmark in {lines:?}"
        );
    }
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("outpost_agent_model_engine{")
                && l.contains(&format!("engine=\"{faster}\""))),
        "{lines:?}"
    );
}
