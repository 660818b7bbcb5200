//! agent.toml: the sample parses; each mistake names its key.

use std::path::Path;

use outpost_agent::config::{AgentConfig, ConfigError, Fallback};

use crate::common::*;

fn parse(w: &World, text: &str) -> Result<AgentConfig, ConfigError> {
    AgentConfig::parse(text, Path::new("agent.toml"), w.dir.path())
}

#[test]
fn the_sample_config_parses_once_its_files_exist() {
    let w = World::new();
    let sample = std::fs::read_to_string(repo().join("agent/dist/agent.toml")).unwrap();
    // Point the sample's files at real ones (same keys, same structure).
    let (ca, cert, key) = (
        w.dir.path().join("ca.pem"),
        w.dir.path().join("device.pem"),
        w.dir.path().join("device.key"),
    );
    for p in [&ca, &cert, &key] {
        std::fs::write(p, "placeholder").unwrap();
    }
    let text = sample
        .replace("/etc/outpost/ca.pem", &ca.display().to_string())
        .replace("/etc/outpost/device.pem", &cert.display().to_string())
        .replace("/etc/outpost/device.key", &key.display().to_string())
        .replace(
            "/etc/outpost/root.signed",
            &w.root_path.display().to_string(),
        )
        .replace(
            "/opt/outpost/digits-1.0.0.opk",
            &w.package_path.display().to_string(),
        )
        .replace(
            "/opt/outpost/digits-1.0.0.release",
            &w.release_path.display().to_string(),
        )
        .replace(
            "target = \"rpi4\"",
            &format!("target = \"{}/targets/rpi4.toml\"", repo().display()),
        );
    let c = parse(&w, &text).unwrap();
    assert_eq!(c.device_id.as_str(), "pump-17");
    assert_eq!(c.target.name, "rpi4");
    assert_eq!(
        (c.mqtt.host.as_str(), c.mqtt.port),
        ("fleet.example.com", 8883)
    );
    assert!(c.mqtt.tls.as_ref().unwrap().client.is_some());
    assert_eq!(c.api.bind.to_string(), "127.0.0.1:8080");
    assert_eq!(c.telemetry.window_secs, 60);
    assert_eq!(c.models[0].fallback, Fallback::Reject);
}

#[test]
fn each_mistake_names_its_key() {
    let w = World::new();
    let good = w.config_text("cfg-dev", 1883, "");
    parse(&w, &good).unwrap();
    let cases: &[(&str, &str, &str)] = &[
        (
            "device_id = \"cfg-dev\"",
            "device_id = \"a/b\"",
            "device_id",
        ),
        (
            "url = \"mqtt://127.0.0.1:1883\"",
            "url = \"http://x\"",
            "mqtt.url",
        ),
        (
            "url = \"mqtt://127.0.0.1:1883\"",
            "url = \"mqtts://x:8883\"",
            "mqtt.ca",
        ),
        (
            "url = \"mqtt://127.0.0.1:1883\"",
            "url = \"mqtt://x:notaport\"",
            "mqtt.url",
        ),
        ("bind = \"127.0.0.1:0\"", "bind = \"localhost\"", "api.bind"),
        ("failures = 3", "failures = 0", "breaker.failures"),
        (
            "keep_alive_secs = 5",
            "keep_alive_secs = 1",
            "mqtt.keep_alive_secs",
        ),
        (
            "window_secs = 1",
            "window_secs = 0",
            "telemetry.window_secs",
        ),
        (
            "[[models]]",
            "[shadow]\ncpu_budget_percent = 150\n[[models]]",
            "shadow.cpu_budget_percent",
        ),
    ];
    for (from, to, key) in cases {
        let text = good.replace(from, to);
        assert_ne!(text, good, "{from}");
        match parse(&w, &text) {
            Err(ConfigError::Invalid { key: k, .. }) => assert_eq!(&k, key, "{to}"),
            other => panic!("{to}: expected an error on {key}, got {other:?}"),
        }
    }
    // A missing file.
    let text = good.replace(
        &w.root_path.display().to_string(),
        "/nonexistent/root.signed",
    );
    assert!(
        matches!(parse(&w, &text), Err(ConfigError::Invalid { key, .. }) if key == "trust.root")
    );
    // A misspelt key is an error, not a silently ignored setting.
    let text = good.replace("max_pending", "max_pendnig");
    match parse(&w, &text) {
        Err(ConfigError::Syntax { reason, .. }) => {
            assert!(reason.contains("max_pendnig"), "{reason}")
        }
        other => panic!("{other:?}"),
    }
    // fallback = "default" needs its value.
    let text = w.config_text("cfg-dev", 1883, "fallback = \"default\"");
    assert!(
        matches!(parse(&w, &text), Err(ConfigError::Invalid { key, .. }) if key == "models[0].default_output")
    );
    // An unknown target profile.
    let text = good.replace(&format!("{}.toml", target_profile()), "nope.toml");
    assert!(matches!(parse(&w, &text), Err(ConfigError::Invalid { key, .. }) if key == "target"));
}

#[test]
fn check_config_exits_2_and_names_the_problem() {
    let w = World::new();
    let path = w.config_file("cfg-cli", 1883);
    let ok = std::process::Command::new(env!("CARGO_BIN_EXE_outpost-agent"))
        .args(["check-config", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(String::from_utf8_lossy(&ok.stdout).contains("ok (device cfg-cli"));
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace("failures = 3", "failures = -1");
    std::fs::write(&path, text).unwrap();
    let bad = std::process::Command::new(env!("CARGO_BIN_EXE_outpost-agent"))
        .args(["check-config", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("failures"));
}

#[test]
fn status_asks_the_running_agent() {
    let w = World::new();
    let port = free_port();
    let path = w.dir.path().join("status.toml");
    let text = w.config_text("cfg-status", 1, "").replace(
        "bind = \"127.0.0.1:0\"",
        &format!("bind = \"127.0.0.1:{port}\""),
    );
    std::fs::write(&path, &text).unwrap();
    let status = || {
        std::process::Command::new(env!("CARGO_BIN_EXE_outpost-agent"))
            .args(["status", "--config"])
            .arg(&path)
            .output()
            .unwrap()
    };
    // Nobody answers yet.
    assert_eq!(status().status.code(), Some(1));
    let _a = Running::start(w.parse(&text));
    let out = status();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["device_id"], "cfg-status");
    assert_eq!(v["models"][0]["version"], "1.0.0");
}
