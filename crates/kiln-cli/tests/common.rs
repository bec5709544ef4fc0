//! Helpers shared by the CLI tests: run the real `kiln` binary and inspect its output.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The workspace root (examples live there).
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

/// Runs `kiln ARGS` in `dir`.
pub fn kiln(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(args)
        .current_dir(dir)
        .output()
        .expect("kiln runs")
}

/// Runs kiln, asserts success, returns stdout.
pub fn kiln_ok(dir: &Path, args: &[&str]) -> String {
    let out = kiln(dir, args);
    assert!(
        out.status.success(),
        "kiln {args:?} failed:\nstdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Runs kiln with `--json` output and parses the last stdout line.
pub fn kiln_json(dir: &Path, args: &[&str]) -> serde_json::Value {
    let stdout = kiln_ok(dir, args);
    serde_json::from_str(stdout.lines().last().expect("some output")).expect("JSON output")
}

/// Runs kiln expecting failure; returns stderr. Asserts there was no panic.
pub fn kiln_err(dir: &Path, args: &[&str]) -> String {
    let out = kiln(dir, args);
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(
        !out.status.success(),
        "kiln {args:?} should fail but succeeded: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(
        !stderr.contains("panicked"),
        "kiln {args:?} panicked: {stderr}"
    );
    assert_eq!(
        out.status.code(),
        Some(1),
        "kiln {args:?} exit code: {stderr}"
    );
    stderr
}

/// A synthetic churn table with numeric, categorical and binary columns, missing values and
/// an id column. The label follows a noisy rule, so a model can learn it.
pub fn churn_csv(rows: usize, seed: u64, with_target: bool, extra_city: Option<&str>) -> String {
    let mut state = seed;
    let mut next = move || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (state >> 33) as f64 / (1u64 << 31) as f64
    };
    let cities = ["Lyon", "Paris", "Nice", "Lille"];
    let mut out = String::from(if with_target {
        "customer_id,age,city,plan,monthly_spend,churn\n"
    } else {
        "customer_id,age,city,plan,monthly_spend\n"
    });
    for i in 0..rows {
        let age = 18.0 + 60.0 * next();
        let city = match extra_city {
            Some(c) if i % 7 == 0 => c,
            _ => cities[(next() * 4.0) as usize % 4],
        };
        let premium = next() < 0.4;
        let spend = 20.0 + 80.0 * next();
        let score = (age - 45.0) / 20.0
            + if premium { -1.0 } else { 0.8 }
            + if city == "Nice" { 1.0 } else { 0.0 }
            + (spend - 60.0) / 40.0
            + 0.5 * (next() - 0.5);
        let churn = if score > 0.3 { "yes" } else { "no" };
        let age_s = if next() < 0.08 {
            String::new()
        } else {
            format!("{age:.1}")
        };
        let city_s = if next() < 0.05 { "NA" } else { city };
        let plan = if premium { "premium" } else { "basic" };
        if with_target {
            out.push_str(&format!(
                "C{i:05},{age_s},{city_s},{plan},{spend:.2},{churn}\n"
            ));
        } else {
            out.push_str(&format!("C{i:05},{age_s},{city_s},{plan},{spend:.2}\n"));
        }
    }
    out
}
