//! Cross-language check: KLL images read and written by Apache DataSketches
//! for Python (`datasketches` on PyPI, pinned in scripts/requirements.txt).

use std::process::Command;

use outpost_telemetry::Kll;

use crate::common::{normal, rng, skip_or_fail};

/// Runs `script` with `python3 -c`; `None` (after skip_or_fail) when Python
/// or the `datasketches` module is missing.
fn python(script: &str, args: &[&str]) -> Option<String> {
    let probe = Command::new("python3")
        .args(["-c", "import datasketches"])
        .output();
    match probe {
        Err(e) => {
            skip_or_fail(&format!("python3 not runnable: {e}"));
            return None;
        }
        Ok(out) if !out.status.success() => {
            skip_or_fail(
                "Python module datasketches missing (pip install -r scripts/requirements.txt)",
            );
            return None;
        }
        Ok(_) => {}
    }
    let out = Command::new("python3")
        .arg("-c")
        .arg(script)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "python failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(String::from_utf8(out.stdout).unwrap())
}

#[test]
fn python_datasketches_reads_our_kll_image() {
    let mut kll = Kll::new(200).unwrap();
    let mut r = rng(11);
    (0..20_000).for_each(|_| kll.update(normal(&mut r)));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sketch.bin");
    std::fs::write(&path, kll.to_datasketches_bytes()).unwrap();
    let script = r#"
import sys
from datasketches import kll_floats_sketch
raw = open(sys.argv[1], 'rb').read()
s = kll_floats_sketch.deserialize(raw)
# Before any query: C++ sorts level 0 in place when it is first queried.
same = s.serialize() == raw
print(s.n, s.k, s.num_retained, repr(s.get_min_value()), repr(s.get_max_value()))
print(repr(s.get_quantile(0.5)), repr(s.get_quantile(0.9)), repr(s.get_rank(1.0)))
print(1 if same else 0)
"#;
    let Some(out) = python(script, &[path.to_str().unwrap()]) else {
        return;
    };
    let lines: Vec<Vec<&str>> = out
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(lines[0][0].parse::<u64>().unwrap(), kll.n());
    assert_eq!(lines[0][1].parse::<u16>().unwrap(), kll.k());
    assert_eq!(lines[0][2].parse::<usize>().unwrap(), kll.retained());
    let (min, max) = kll.min_max().unwrap();
    assert_eq!(lines[0][3].parse::<f64>().unwrap(), min);
    assert_eq!(lines[0][4].parse::<f64>().unwrap(), max);
    // Same retained items, same query rules: identical answers.
    assert_eq!(
        lines[1][0].parse::<f64>().unwrap(),
        kll.quantile(0.5).unwrap()
    );
    assert_eq!(
        lines[1][1].parse::<f64>().unwrap(),
        kll.quantile(0.9).unwrap()
    );
    assert_eq!(lines[2][0], "1", "Python re-serializes to the same bytes");
}

#[test]
fn we_read_a_kll_image_written_by_python_datasketches() {
    let script = r#"
import sys
from datasketches import kll_floats_sketch
s = kll_floats_sketch(160)
for i in range(10000):
    s.update((i * 7919) % 1000 / 10.0)
sys.stdout.write(s.serialize().hex() + "\n")
print(s.n, repr(s.get_min_value()), repr(s.get_max_value()), repr(s.get_quantile(0.25)))
"#;
    let Some(out) = python(script, &[]) else {
        return;
    };
    let mut lines = out.lines();
    let hex = lines.next().unwrap();
    let bytes: Vec<u8> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect();
    let kll = Kll::from_datasketches_bytes(&bytes).unwrap();
    let facts: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(kll.n(), facts[0].parse::<u64>().unwrap());
    assert_eq!(kll.k(), 160);
    assert_eq!(
        kll.min_max(),
        Some((facts[1].parse().unwrap(), facts[2].parse().unwrap()))
    );
    assert_eq!(
        kll.quantile(0.25).unwrap(),
        facts[3].parse::<f64>().unwrap()
    );
}
