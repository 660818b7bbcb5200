//! Alerts through a real server: rules and sinks from `--alerts`, a
//! devices-offline rule fed by the inventory tick, a webhook sink (a tiny
//! HTTP listener here), escalation to an MQTT sink, acknowledgement over
//! the CLI, persistence across a restart, resolution when the device is
//! back.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::mpsc;

use outpost_protocol::messages::{Birth, Death, DeviceMessage};
use serde_json::Value;

use crate::support::*;

/// A birth of a device of class `target` that runs nothing yet.
pub fn birth(session: u64, target: &str) -> DeviceMessage {
    DeviceMessage::Birth(Birth {
        session,
        at: 1,
        agent_version: "0.1.0".into(),
        target: target.into(),
        arch: "aarch64".into(),
        models: vec![],
        root_version: 1,
        last_directive: 0,
    })
}

/// A webhook receiver: every POST body (JSON) is forwarded to `rx`.
struct Webhook {
    url: String,
    rx: mpsc::Receiver<Value>,
}

fn read_post(stream: &mut TcpStream) -> Option<Value> {
    stream.set_read_timeout(Some(T)).ok()?;
    let mut reader = BufReader::new(stream.try_clone().ok()?);
    let mut length = 0usize;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).ok()? == 0 {
            return None;
        }
        if line == "\r\n" {
            break;
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            length = v.trim().parse().ok()?;
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).ok()?;
    serde_json::from_slice(&body).ok()
}

impl Webhook {
    fn start() -> Webhook {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let body = read_post(&mut stream);
                let _ = stream.write_all(
                    b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                );
                if let Some(body) = body
                    && tx.send(body).is_err()
                {
                    return;
                }
            }
        });
        Webhook { url, rx }
    }

    /// Notifications of `kind` until every rule in `rules` has one.
    fn wait_kind(&self, kind: &str, rules: &[&str]) -> Vec<Value> {
        let mut seen = Vec::new();
        let want: BTreeSet<&str> = rules.iter().copied().collect();
        wait_for(&format!("{kind} notifications of {rules:?}"), T, || {
            while let Ok(v) = self.rx.try_recv() {
                if v["kind"] == kind {
                    seen.push(v);
                }
            }
            let got: BTreeSet<&str> = seen
                .iter()
                .filter_map(|v| v["alert"]["id"]["rule"].as_str())
                .collect();
            want.is_subset(&got).then_some(())
        });
        seen
    }
}

fn alert<'a>(list: &'a Value, rule: &str) -> &'a Value {
    list["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["id"]["rule"] == rule)
        .unwrap_or_else(|| panic!("no alert of rule {rule} in {list}"))
}

#[test]
fn devices_offline_fires_a_webhook_escalates_over_mqtt_and_ack_stops_escalation() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let hook = Webhook::start();
    let file = d.join("alerts.toml");
    // Three rules on one condition, so they fire at the same second:
    // `offline` escalates after 1 s; `offline-acked` is acknowledged at
    // once and would escalate after 4 s; `offline-late` escalates after
    // 5 s, so when its escalation arrives `offline-acked`'s is overdue.
    let rule = |name: &str, after: &str| {
        format!(
            "[[rule]]\nname = \"{name}\"\nsink = \"ops\"\n\
             condition = {{ kind = \"devices_offline\", max = 0 }}\n\
             escalate = {{ after = \"{after}\", sink = \"pager\" }}\n"
        )
    };
    std::fs::write(
        &file,
        format!(
            "[[sink]]\nname = \"ops\"\nkind = \"webhook\"\nurl = \"{}\"\n\
             [[sink]]\nname = \"pager\"\nkind = \"mqtt\"\ntopic = \"test/alerts/pager\"\n{}{}{}",
            hook.url,
            rule("offline", "1s"),
            rule("offline-acked", "4s"),
            rule("offline-late", "5s"),
        ),
    )
    .unwrap();
    let args = ["--alerts", s(&file), "--alerts-every", "1"];
    let mut server = Server::start(d, &args);
    let viewer = server.token("vera", "viewer");
    let op = server.token("otto", "operator");

    let v = server.json(&viewer, &["alerts", "list"], 0);
    assert_eq!(v["alerts"], serde_json::json!([]), "{v}");
    assert_eq!(v["rules"].as_array().unwrap().len(), 3, "{v}");
    assert_eq!(v["sinks"][0]["name"], "ops");
    assert!(
        !v.to_string().contains(&hook.url),
        "a webhook URL may hold a secret: never listed"
    );

    let pager = Mqtt::connect(server.mqtt_port(), "pager");
    pager.subscribe("test/alerts/pager");
    let dev = Mqtt::connect(server.mqtt_port(), "pump-9");
    dev.send("pump-9", birth(1, "rpi5"));
    dev.send("pump-9", DeviceMessage::Death(Death { session: 1 }));

    let firing = hook.wait_kind("firing", &["offline", "offline-acked", "offline-late"]);
    let first = firing
        .iter()
        .find(|v| v["alert"]["id"]["rule"] == "offline")
        .unwrap();
    assert_eq!(first["alert"]["id"]["subject"], "fleet");
    assert!(
        first["alert"]["message"]
            .as_str()
            .unwrap()
            .contains("1 devices offline"),
        "{first}"
    );
    let v = server.json(&op, &["alerts", "ack", "offline-acked", "fleet"], 0);
    assert_eq!(v["alert"]["acknowledged"][1], "otto", "{v}");

    let listed = server.json(&viewer, &["alerts", "list"], 0);
    assert_eq!(listed["alerts"].as_array().unwrap().len(), 3, "{listed}");
    assert_eq!(alert(&listed, "offline-late")["acknowledged"], Value::Null);

    // Escalations arrive on the pager topic in time order; the acknowledged
    // alert's never does.
    let mut escalated = Vec::new();
    while !escalated.contains(&"offline-late".to_owned()) {
        let n = pager.next_json();
        assert_eq!(n["kind"], "escalated", "{n}");
        escalated.push(n["alert"]["id"]["rule"].as_str().unwrap().to_owned());
    }
    assert_eq!(escalated, ["offline", "offline-late"]);

    // Acknowledged after its escalation; a viewer may not; an alert that
    // does not fire is not found.
    server.json(&viewer, &["alerts", "ack", "offline", "fleet"], 3);
    server.json(&op, &["alerts", "ack", "offline", "pump-9"], 4);
    server.json(&op, &["alerts", "ack", "offline", "fleet"], 0);
    let listed = server.json(&viewer, &["alerts", "list"], 0);
    let a = alert(&listed, "offline");
    assert_eq!(
        (&a["escalated"], &a["acknowledged"][1]),
        (&Value::Bool(true), &Value::from("otto"))
    );
    let a = alert(&listed, "offline-acked");
    assert_eq!(a["escalated"], false, "acknowledged in time: {a}");
    let out = server.cli(&viewer, &["alerts", "list"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("escalated, acknowledged by otto") && text.contains("offline-late"),
        "{text}"
    );
    let audit = server.json(&viewer, &["audit", "list", "--action", "alert.ack"], 0);
    assert_eq!(audit["entries"].as_array().unwrap().len(), 2, "{audit}");

    // A restart still lists them, acknowledgements included.
    server.stop();
    let server = Server::start(d, &args);
    let listed = server.json(&viewer, &["alerts", "list"], 0);
    assert_eq!(listed["alerts"].as_array().unwrap().len(), 3, "{listed}");
    assert_eq!(alert(&listed, "offline")["acknowledged"][1], "otto");

    // The device is back: every alert resolves, to the webhook too.
    let dev = Mqtt::connect(server.mqtt_port(), "pump-9-again");
    dev.send("pump-9", birth(2, "rpi5"));
    let resolved = hook.wait_kind("resolved", &["offline", "offline-acked", "offline-late"]);
    assert!(
        resolved
            .iter()
            .all(|v| v["alert"]["id"]["subject"] == "fleet")
    );
    wait_for("the list to empty", T, || {
        let v = server.json(&viewer, &["alerts", "list"], 0);
        v["alerts"].as_array().unwrap().is_empty().then_some(())
    });
}

#[test]
fn a_rule_naming_an_unknown_sink_stops_the_server_with_exit_code_2() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let file = d.join("alerts.toml");
    std::fs::write(
        &file,
        "[[sink]]\nname = \"ops\"\nkind = \"log\"\n\
         [[rule]]\nname = \"offline\"\nsink = \"pager\"\n\
         condition = { kind = \"devices_offline\", max = 0 }\n",
    )
    .unwrap();
    let Err((code, err)) = Server::try_start(d, &["--alerts", s(&file)]) else {
        panic!("the server started with a rule naming an unknown sink");
    };
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("names sink \"pager\", which is not defined"),
        "{err}"
    );
}

/// A metric rule on a fleet metric: fires with no device online, resolves
/// when one comes; an unknown metric name is a configuration error.
#[test]
fn a_metric_rule_fires_and_resolves_and_unknown_metrics_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let file = d.join("alerts.toml");
    std::fs::write(
        &file,
        "[[sink]]\nname = \"ops\"\nkind = \"log\"\n\
         [[rule]]\nname = \"nobody-online\"\nsink = \"ops\"\n\
         condition = { kind = \"metric_below\", metric = \"devices_online\", threshold = 1 }\n",
    )
    .unwrap();
    let server = Server::start(d, &["--alerts", s(&file), "--alerts-every", "1"]);
    let viewer = server.token("vera", "viewer");
    let firing = wait_for("the metric alert", T, || {
        let v = server.json(&viewer, &["alerts", "list"], 0);
        let a = v["alerts"].as_array().unwrap().first().cloned();
        a.filter(|a| a["id"]["rule"] == "nobody-online")
    });
    assert_eq!(firing["id"]["subject"], "devices_online", "{firing}");
    let dev = Mqtt::connect(server.mqtt_port(), "pump-1");
    dev.send("pump-1", birth(1, "rpi5"));
    wait_for("the metric alert to resolve", T, || {
        let v = server.json(&viewer, &["alerts", "list"], 0);
        v["alerts"].as_array().unwrap().is_empty().then_some(())
    });
    drop(server);

    let bad = dir.path().join("bad");
    std::fs::create_dir_all(&bad).unwrap();
    let file = bad.join("alerts.toml");
    std::fs::write(
        &file,
        "[[sink]]\nname = \"ops\"\nkind = \"log\"\n\
         [[rule]]\nname = \"typo\"\nsink = \"ops\"\n\
         condition = { kind = \"metric_above\", metric = \"digits/eror_rate\", threshold = 0.1 }\n",
    )
    .unwrap();
    let Err((code, err)) = Server::try_start(&bad, &["--alerts", s(&file)]) else {
        panic!("the server started with an unknown metric");
    };
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("unknown metric \"digits/eror_rate\"") && err.contains("MODEL/error_rate"),
        "{err}"
    );
}
