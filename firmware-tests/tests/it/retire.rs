//! Retirement end to end (the agent-update issue's retire directive): the
//! registry retires a deprecated version; every device running it gets a
//! signed retire directive over MQTT, unloads the model, deletes its
//! package files and reports a state without it.

use std::path::Path;

use crate::rollouts::deployed;
use crate::support::*;

/// Package files (`*.opk`) under an agent's update folder.
fn packages(dir: &Path) -> usize {
    std::fs::read_dir(dir.join("update").join("packages"))
        .map(|d| {
            d.flatten()
                .filter(|e| e.path().extension().is_some_and(|x| x == "opk"))
                .count()
        })
        .unwrap_or(0)
}

#[test]
fn retire_directives_unload_and_delete_the_model_on_every_device() {
    let Some(f) = fleet(4) else {
        return;
    };
    let (traffic, _) = deployed(&f);
    drop(traffic);
    let agents = f.opts.dir.join("agents");
    let before: usize = f.ids.iter().map(|id| packages(&agents.join(id))).sum();
    assert!(before >= f.ids.len(), "no package installed: {before}");
    f.cli(
        Some(&f.operator),
        &["model", "deprecate", "digits", "1.0.0"],
    )
    .unwrap();
    let v = f
        .cli(Some(&f.operator), &["model", "retire", "digits", "1.0.0"])
        .unwrap();
    assert_eq!(v["status"], "retired", "{v}");
    assert_eq!(
        v["directives"].as_array().map(Vec::len),
        Some(f.ids.len()),
        "a retire directive per device: {v}"
    );
    // The inventory sees no device holding digits any more.
    f.wait("every device to drop digits", || {
        let holding = f
            .devices()?
            .iter()
            .filter(|d| {
                d["installed"]
                    .as_array()
                    .is_some_and(|i| i.iter().any(|m| m["name"] == "digits"))
            })
            .count();
        Ok((holding == 0).then_some(()))
    })
    .unwrap_or_else(|e| panic!("{e:#}\n{}", logs(&f.opts.dir)));
    // Each agent unloaded it and deleted its files.
    for (id, api) in f.ids.iter().zip(&f.apis) {
        let s = agent_status(api);
        assert_eq!(s["models"], serde_json::json!([]), "{id}: {s}");
        assert_eq!(packages(&agents.join(id)), 0, "{id} kept package files");
    }
    println!(
        "SUMMARY retirement: digits 1.0.0 retired; {} signed retire directives, every device unloaded it and deleted its {before} package file(s)",
        f.ids.len()
    );
}
