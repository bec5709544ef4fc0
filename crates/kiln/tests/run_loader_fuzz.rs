//! Fuzzing of the run loader: a run directory whose `preprocessor.json`, `model.json` or
//! `model.safetensors` was damaged or edited by hand must give an error naming the file,
//! never a panic, an out-of-bounds read or a NaN answer. Each case mutates one trained run
//! and runs `predict` on it. `PROPTEST_CASES` bounds the time (CI runs the default).

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use kiln::train::Silent;
use proptest::prelude::*;
use serde_json::Value;

/// A trained run, its prediction input, and the folder that holds both.
struct Fixture {
    _dir: tempfile::TempDir,
    run: PathBuf,
    data: PathBuf,
}

fn tabular_csv(rows: usize) -> String {
    let cities = ["Lyon", "Paris", "Nice", "Lille", "Brest"];
    let mut csv = String::from("id,age,city,plan,spend,label\n");
    for i in 0..rows {
        let age = 18 + (i * 37) % 60;
        let city = cities[(i * 7) % 5];
        let plan = if i % 3 == 0 { "premium" } else { "basic" };
        let spend = 20.0 + ((i * 13) % 80) as f64;
        let label = if (age as f64) + spend > 90.0 {
            "yes"
        } else {
            "no"
        };
        csv.push_str(&format!("R{i},{age},{city},{plan},{spend},{label}\n"));
    }
    csv
}

fn text_csv(rows: usize) -> String {
    let words = [
        "good", "bad", "great", "awful", "fine", "poor", "nice", "dull",
    ];
    let mut csv = String::from("review,label\n");
    for i in 0..rows {
        let a = words[i % 8];
        let b = words[(i * 3 + 1) % 8];
        let label = if i % 8 % 2 == 0 { "pos" } else { "neg" };
        csv.push_str(&format!("\"{a} film, {b} plot {i}\",{label}\n"));
    }
    csv
}

fn train(name: &str, csv: String, settings: &str) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data.csv");
    std::fs::write(&data, csv).unwrap();
    let toml = format!(
        "seed = 3\n[data]\nsource = \"{}\"\ntarget = \"label\"\n{settings}\n[trainer]\nepochs = 1\nbatch_size = 16\n[output]\ndir = \"{}\"\nname = \"{name}\"\nplots = false\n",
        data.display(),
        dir.path().join("runs").display()
    );
    let config = kiln::config::from_str(&toml, "fuzz.toml", &[]).unwrap();
    let summary = kiln::train_run(&config, None, &mut Silent).unwrap();
    Fixture {
        run: summary.run_dir,
        data,
        _dir: dir,
    }
}

fn tabular() -> &'static Fixture {
    static RUN: OnceLock<Fixture> = OnceLock::new();
    RUN.get_or_init(|| {
        train(
            "tabular",
            tabular_csv(120),
            "id_column = \"id\"\n[[features]]\nname = \"city\"\nencoding = \"embedding\"\n[model]\nhidden = [8]\nbatch_norm = true",
        )
    })
}

fn text() -> &'static Fixture {
    static RUN: OnceLock<Fixture> = OnceLock::new();
    RUN.get_or_init(|| {
        train(
            "text",
            text_csv(80),
            "[text]\ntokenizer = \"char\"\n[model]\ntype = \"transformer\"\nlayers = 1\nheads = 2\nembd = 8\ncontext = 16\nhidden = [8]",
        )
    })
}

/// Copies a run folder (flat files only) to a fresh temporary folder.
fn copy_run(run: &Path) -> tempfile::TempDir {
    let copy = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(run).unwrap().flatten() {
        if entry.file_type().unwrap().is_file() {
            std::fs::copy(entry.path(), copy.path().join(entry.file_name())).unwrap();
        }
    }
    copy
}

/// Replacement values for a JSON leaf: zero, negative, huge, fractional, wrong types.
fn replacement(choice: u8, random: i64) -> Value {
    match choice % 12 {
        0 => Value::from(0),
        1 => Value::from(-1),
        2 => Value::from(1u64 << 40),
        3 => Value::from(u64::MAX),
        4 => Value::from(1e300),
        5 => Value::from(-0.5),
        6 => Value::from("x"),
        7 => Value::Null,
        8 => Value::Array(Vec::new()),
        9 => Value::Bool(true),
        10 => Value::from(random % 64),
        _ => Value::from(random),
    }
}

/// Every path to a leaf or container in `v`, depth first.
fn paths(v: &Value, prefix: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
    out.push(prefix.clone());
    match v {
        Value::Object(m) => {
            for (k, child) in m {
                prefix.push(k.clone());
                paths(child, prefix, out);
                prefix.pop();
            }
        }
        Value::Array(a) => {
            for (i, child) in a.iter().enumerate() {
                prefix.push(i.to_string());
                paths(child, prefix, out);
                prefix.pop();
            }
        }
        _ => {}
    }
}

fn at<'a>(v: &'a mut Value, path: &[String]) -> &'a mut Value {
    path.iter().fold(v, |v, key| match v {
        Value::Object(m) => m.get_mut(key).unwrap(),
        Value::Array(a) => &mut a[key.parse::<usize>().unwrap()],
        _ => unreachable!("paths only descend into containers"),
    })
}

/// One mutation of a JSON document: replace a node, delete an object key, or drop the last
/// element of an array.
fn mutate_json(doc: &mut Value, pick: usize, op: u8, random: i64) -> String {
    let mut all = Vec::new();
    paths(doc, &mut Vec::new(), &mut all);
    let path = all[pick % all.len()].clone();
    let node = at(doc, &path);
    match (op % 4, node) {
        (1, Value::Object(m)) if !m.is_empty() => {
            let key = m
                .keys()
                .nth(random.unsigned_abs() as usize % m.len())
                .unwrap()
                .clone();
            m.remove(&key);
            format!("removed {path:?}.{key}")
        }
        (2, Value::Array(a)) if !a.is_empty() => {
            a.pop();
            format!("dropped the last element of {path:?}")
        }
        (_, node) => {
            *node = replacement(op / 4, random);
            format!("{path:?} = {node}")
        }
    }
}

/// Predicts with the (damaged) run in `dir`; a panic fails the case with `what`.
fn predict_survives(fixture: &Fixture, dir: &Path, what: &str) -> Result<(), TestCaseError> {
    let out = dir.join("predictions.csv");
    let result = catch_unwind(AssertUnwindSafe(|| {
        kiln::predict_run(dir, fixture.data.to_str().unwrap(), &out, true)
    }));
    match result {
        Err(_) => Err(TestCaseError::fail(format!(
            "predict panicked after {what}"
        ))),
        Ok(Err(e)) => {
            let message = e.to_string();
            prop_assert!(!message.is_empty());
            Ok(())
        }
        Ok(Ok(_)) => {
            let written = std::fs::read_to_string(&out).unwrap().to_lowercase();
            prop_assert!(
                !written.contains("nan") && !written.contains(",inf"),
                "{what}: NaN predictions written"
            );
            Ok(())
        }
    }
}

fn json_case(
    fixture: &Fixture,
    file: &str,
    mutations: &[(usize, u8, i64)],
) -> Result<(), TestCaseError> {
    let copy = copy_run(&fixture.run);
    let path = copy.path().join(file);
    let mut doc: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let what: Vec<String> = mutations
        .iter()
        .map(|&(pick, op, random)| mutate_json(&mut doc, pick, op, random))
        .collect();
    std::fs::write(&path, serde_json::to_vec(&doc).unwrap()).unwrap();
    predict_survives(fixture, copy.path(), &format!("{file}: {what:?}"))
}

fn weights_case(
    fixture: &Fixture,
    edits: &[(usize, u8)],
    truncate: Option<usize>,
) -> Result<(), TestCaseError> {
    let copy = copy_run(&fixture.run);
    let path = copy.path().join("model.safetensors");
    let mut bytes = std::fs::read(&path).unwrap();
    for &(at, value) in edits {
        let i = at % bytes.len();
        bytes[i] = value;
    }
    if let Some(len) = truncate {
        bytes.truncate(len % bytes.len());
    }
    std::fs::write(&path, &bytes).unwrap();
    predict_survives(
        fixture,
        copy.path(),
        &format!("model.safetensors: bytes {edits:?}, truncated to {truncate:?}"),
    )
}

fn mutations() -> impl Strategy<Value = Vec<(usize, u8, i64)>> {
    prop::collection::vec((any::<usize>(), any::<u8>(), any::<i64>()), 1..4)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(
        std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(200)
    ))]

    #[test]
    fn damaged_tabular_preprocessor(m in mutations()) {
        json_case(tabular(), "preprocessor.json", &m)?;
    }

    #[test]
    fn damaged_tabular_model_spec(m in mutations()) {
        json_case(tabular(), "model.json", &m)?;
    }

    #[test]
    fn damaged_text_preprocessor(m in mutations()) {
        json_case(text(), "preprocessor.json", &m)?;
    }

    #[test]
    fn damaged_text_model_spec(m in mutations()) {
        json_case(text(), "model.json", &m)?;
    }

    #[test]
    fn damaged_weights(
        edits in prop::collection::vec((any::<usize>(), any::<u8>()), 0..6),
        truncate in prop::option::of(any::<usize>()),
        text_run in any::<bool>(),
    ) {
        let fixture = if text_run { text() } else { tabular() };
        weights_case(fixture, &edits, truncate)?;
    }
}

/// The unmutated runs predict: the cases above start from working runs.
#[test]
fn fixtures_predict() {
    for fixture in [tabular(), text()] {
        let copy = copy_run(&fixture.run);
        let out = copy.path().join("p.csv");
        kiln::predict_run(copy.path(), fixture.data.to_str().unwrap(), &out, true).unwrap();
    }
}
