//! Image folders and path lists through the real `kiln`: a CNN trained with augmentation on
//! colour images, predictions named by path, a mid-epoch resume that repeats the augmented
//! run bit for bit, and bad folders refused with their paths.

mod common;

use std::path::Path;

use common::*;

const CONFIG: &str = r#"
seed = 5
[data]
source = "train"
test_source = "test"
split = { validation = 0.1 }
augment = { flip = true, crop_padding = 1, rotate_degrees = 8, brightness = 0.2, contrast = 0.2, saturation = 0.2 }
[model]
type = "cnn"
conv = [{ filters = 8, kernel = 3, padding = 1, pool = 2, batch_norm = true }]
hidden = [16]
[trainer]
epochs = 3
batch_size = 16
optimizer = "adam"
lr = 0.003
checkpoint_every_steps = 3
[output]
plots = false
"#;

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        let target = to.join(path.file_name().unwrap());
        if path.is_dir() {
            copy_dir(&path, &target);
        } else {
            std::fs::copy(&path, &target).unwrap();
        }
    }
}

#[test]
fn an_augmented_cnn_learns_colour_images_predicts_by_path_and_resumes_bit_identically() {
    let dir = tempfile::tempdir().unwrap();
    write_image_folder(&dir.path().join("train"), 40, 12, 1);
    write_image_folder(&dir.path().join("test"), 20, 12, 2);
    std::fs::write(dir.path().join("run.toml"), CONFIG).unwrap();
    let out = kiln_json(dir.path(), &["train", "run.toml", "--json", "--quiet"]);
    let accuracy = out["test"]["accuracy"].as_f64().unwrap();
    assert!(accuracy >= 0.9, "held-out accuracy {accuracy}");
    let wait = &out["data_wait"];
    assert!(wait["step_seconds"].as_f64().unwrap() > 0.0, "{wait}");
    assert!(wait["wait_seconds"].as_f64().unwrap() >= 0.0, "{wait}");
    let run = Path::new(out["run_dir"].as_str().unwrap()).to_path_buf();
    let run = if run.is_absolute() {
        run
    } else {
        dir.path().join(run)
    };
    let report = std::fs::read_to_string(run.join("report.txt")).unwrap();
    assert!(report.contains("augmented on their own thread"), "{report}");
    let spec: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("model.json")).unwrap()).unwrap();
    assert_eq!(spec["input"]["channels"], 3, "{spec}");

    // Predictions are named by the image's path.
    kiln_ok(
        dir.path(),
        &[
            "predict",
            run.to_str().unwrap(),
            "--data",
            "test",
            "--out",
            "p.csv",
        ],
    );
    let predictions = std::fs::read_to_string(dir.path().join("p.csv")).unwrap();
    let mut lines = predictions.lines();
    assert_eq!(lines.next(), Some("path,label"));
    let rows: Vec<(&str, &str)> = lines.map(|l| l.split_once(',').unwrap()).collect();
    assert_eq!(rows.len(), 40);
    let right = rows
        .iter()
        .filter(|(path, label)| path.starts_with(&format!("{label}/")))
        .count();
    assert!(right >= 36, "{right} of 40 predictions right");

    // New images, in one folder without classes: each named by its file.
    let new = dir.path().join("new");
    std::fs::create_dir_all(&new).unwrap();
    for class in ["top", "bottom"] {
        for i in 0..5 {
            std::fs::copy(
                dir.path().join(format!("test/{class}/{i:03}.png")),
                new.join(format!("{class}-{i}.png")),
            )
            .unwrap();
        }
    }
    std::fs::write(new.join("notes.txt"), "not an image").unwrap();
    kiln_ok(
        dir.path(),
        &[
            "predict",
            run.to_str().unwrap(),
            "--data",
            "new",
            "--out",
            "new.csv",
        ],
    );
    let predictions = std::fs::read_to_string(dir.path().join("new.csv")).unwrap();
    let mut lines = predictions.lines();
    assert_eq!(lines.next(), Some("path,label"));
    let rows: Vec<(&str, &str)> = lines.map(|l| l.split_once(',').unwrap()).collect();
    assert_eq!(rows.len(), 10, "{predictions}");
    let right = rows
        .iter()
        .filter(|(path, label)| path.starts_with(&format!("{label}-")))
        .count();
    assert!(
        right >= 8,
        "{right} of 10 predictions right:\n{predictions}"
    );

    // Resumed from a checkpoint inside the last epoch, the run ends with the same weights:
    // each row's augmentation is drawn from the seed, the step and its place in the step.
    let copy = dir.path().join("copy");
    copy_dir(&run, &copy);
    let checkpoints = kiln_train::checkpoint::list_checkpoints(&copy.join("checkpoints")).unwrap();
    let earliest = checkpoints.first().unwrap();
    let step: u64 = earliest.trim_start_matches("step-").parse().unwrap();
    assert!(
        !step.is_multiple_of(5),
        "{earliest} is not inside an epoch (5 steps each)"
    );
    let resumed = kiln_json(
        dir.path(),
        &[
            "train",
            "--resume",
            copy.join("checkpoints").join(earliest).to_str().unwrap(),
            "--json",
            "--quiet",
        ],
    );
    assert_eq!(resumed["resumed_from"].as_u64(), Some(step));
    let a = std::fs::read(run.join("model.safetensors")).unwrap();
    let b = std::fs::read(copy.join("model.safetensors")).unwrap();
    assert!(
        a == b,
        "resumed from step {step}: weights differ from the uninterrupted run"
    );
}

#[test]
fn a_table_of_image_paths_trains_and_predicts_grey_images() {
    let dir = tempfile::tempdir().unwrap();
    write_image_folder(&dir.path().join("pics"), 30, 8, 3);
    let mut csv = String::from("file,kind\n");
    for class in ["top", "bottom"] {
        for i in 0..30 {
            csv.push_str(&format!("pics/{class}/{i:03}.png,{class}\n"));
        }
    }
    std::fs::create_dir_all(dir.path().join("lists")).unwrap();
    // Paths are relative to the table's folder.
    let csv = csv.replace("pics/", "../pics/");
    std::fs::write(dir.path().join("lists/all.csv"), &csv).unwrap();
    let out = kiln_json(
        dir.path(),
        &[
            "train",
            "--data",
            "lists/all.csv",
            "--target",
            "kind",
            "--set",
            "data.image.column=\"file\"",
            "--set",
            "data.image.channels=\"grey\"",
            "--set",
            "model.type=\"cnn\"",
            "--set",
            "model.conv=[{filters=4,kernel=3,padding=1,pool=2}]",
            "--set",
            "trainer.epochs=8",
            "--json",
            "--quiet",
        ],
    );
    let run = out["run_dir"].as_str().unwrap().to_string();
    let spec: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join(&run).join("model.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(spec["input"]["channels"], 1, "{spec}");
    kiln_ok(
        dir.path(),
        &["predict", &run, "--data", "lists/all.csv", "--out", "p.csv"],
    );
    let predictions = std::fs::read_to_string(dir.path().join("p.csv")).unwrap();
    assert_eq!(predictions.lines().count(), 61);
}

#[test]
fn bad_image_folders_are_refused_with_the_path() {
    let dir = tempfile::tempdir().unwrap();
    write_image_folder(&dir.path().join("one"), 3, 8, 4);
    std::fs::remove_dir_all(dir.path().join("one/bottom")).unwrap();
    let err = kiln_err(dir.path(), &["data", "describe", "one"]);
    assert!(err.contains("only one class folder (\"top\")"), "{err}");
    // Images without class folders are for predict; training on them says what is missing.
    std::fs::rename(dir.path().join("one/top"), dir.path().join("flat")).unwrap();
    let err = kiln_err(dir.path(), &["train", "--data", "flat"]);
    assert!(err.contains("images lie in the folder itself"), "{err}");

    write_image_folder(&dir.path().join("bad"), 6, 8, 4);
    std::fs::write(dir.path().join("bad/top/000.png"), b"\x89PNG but cut").unwrap();
    let err = kiln_err(dir.path(), &["train", "--data", "bad"]);
    assert!(err.contains("000.png: cannot read the image"), "{err}");
    let out = kiln_ok(
        dir.path(),
        &[
            "train",
            "--data",
            "bad",
            "--set",
            "data.bad_rows=\"skip\"",
            "--set",
            "trainer.epochs=1",
        ],
    );
    assert!(out.contains("1 malformed rows skipped"), "{out}");

    // Augmentation asks for images.
    std::fs::write(
        dir.path().join("t.csv"),
        "x,label\n1,a\n2,b\n3,a\n4,b\n5,a\n6,b\n",
    )
    .unwrap();
    let err = kiln_err(
        dir.path(),
        &[
            "train",
            "--data",
            "t.csv",
            "--set",
            "data.augment.flip=true",
        ],
    );
    assert!(err.contains("data.augment"), "{err}");
}

#[test]
fn an_mlp_learns_from_a_cnn_teacher_that_sees_its_augmented_images() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write_image_folder(&d.join("train"), 40, 12, 1);
    write_image_folder(&d.join("test"), 20, 12, 2);
    std::fs::write(d.join("run.toml"), CONFIG).unwrap();
    let teacher = kiln_json(
        d,
        &[
            "train",
            "run.toml",
            "--json",
            "--quiet",
            "--set",
            "output.name=\"teacher\"",
        ],
    );
    let teacher_dir = teacher["run_dir"].as_str().unwrap().to_string();
    // The student: an MLP taught by the teacher alone (alpha = 1) on another split (its
    // pixel statistics differ from the teacher's), the teacher run on each augmented batch.
    let student = [
        "seed=9".to_string(),
        "model.type=\"mlp\"".into(),
        "model.conv=[]".into(),
        "model.hidden=[32]".into(),
        "trainer.epochs=6".into(),
        "trainer.checkpoint_every_steps=0".into(),
        format!("distill.teacher=\"{teacher_dir}\""),
        "distill.alpha=1.0".into(),
        "distill.cache=false".into(),
        "output.name=\"student\"".into(),
    ];
    let args = |extra: &[&str]| {
        let mut args = vec!["train", "run.toml"];
        for s in student
            .iter()
            .map(String::as_str)
            .chain(extra.iter().copied())
        {
            args.extend(["--set", s]);
        }
        args.into_iter().map(String::from).collect::<Vec<_>>()
    };
    let mut train = args(&[]);
    train.extend(["--json".into(), "--quiet".into()]);
    let train: Vec<&str> = train.iter().map(String::as_str).collect();
    let out = kiln_json(d, &train);
    let accuracy = out["test"]["accuracy"].as_f64().unwrap();
    assert!(
        accuracy >= 0.9,
        "distilled student accuracy {accuracy}: {out}"
    );
    assert!(out["distillation"]["teacher_latency_ms"].as_f64().unwrap() > 0.0);
    assert_eq!(out["distillation"]["cached"], false, "{out}");
    // The teacher was split otherwise: it may have trained on the student's validation rows.
    assert!(out["distillation"]["teacher_validation"].is_null(), "{out}");
    let report =
        std::fs::read_to_string(d.join(out["run_dir"].as_str().unwrap()).join("report.txt"))
            .unwrap();
    assert!(report.contains("run on each augmented batch"), "{report}");

    // An ensemble of two teachers, their logits cached once and computed per batch.
    let second = kiln_json(
        d,
        &[
            "train",
            "run.toml",
            "--json",
            "--quiet",
            "--set",
            "seed=6",
            "--set",
            "data.split.seed=5",
            "--set",
            "output.name=\"second\"",
        ],
    );
    let second_dir = second["run_dir"].as_str().unwrap().to_string();
    let both = format!("distill.teacher=[\"{teacher_dir}\", \"{second_dir}\"]");
    for cache in ["true", "false"] {
        // Split as the teachers were, so they can be scored on the student's validation rows.
        let mut ensemble = args(&[
            both.as_str(),
            "data.split.seed=5",
            &format!("distill.cache={cache}"),
            &format!("output.name=\"ensemble-{cache}\""),
        ]);
        ensemble.extend(["--json".into(), "--quiet".into()]);
        let ensemble: Vec<&str> = ensemble.iter().map(String::as_str).collect();
        let out = kiln_json(d, &ensemble);
        let accuracy = out["test"]["accuracy"].as_f64().unwrap();
        assert!(
            accuracy >= 0.9,
            "ensemble-taught accuracy {accuracy}: {out}"
        );
        let distill = &out["distillation"];
        assert_eq!(distill["teachers"], 2, "{distill}");
        assert!(
            distill["teacher_validation"]["accuracy"].as_f64().unwrap() >= 0.9,
            "{distill}"
        );
        assert_eq!(
            distill["teacher_parameters"].as_u64().unwrap(),
            teacher["parameters"].as_u64().unwrap() + second["parameters"].as_u64().unwrap()
        );
        let report =
            std::fs::read_to_string(d.join(out["run_dir"].as_str().unwrap()).join("report.txt"))
                .unwrap();
        assert!(
            report.contains("an ensemble of 2 teachers") && report.contains("val accuracy"),
            "{report}"
        );
    }

    // The teacher must take the student's images as they are.
    let smaller = args(&["data.image.size=[10, 10]", "output.name=\"small\""]);
    let smaller: Vec<&str> = smaller.iter().map(String::as_str).collect();
    let err = kiln_err(d, &smaller);
    assert!(
        err.contains("distill.teacher") && err.contains("12x12") && err.contains("10x10"),
        "{err}"
    );
    // Without augmentation the cache gives the same logits.
    let plain = args(&["data.augment={}", "output.name=\"plain\""]);
    let plain: Vec<&str> = plain.iter().map(String::as_str).collect();
    let err = kiln_err(d, &plain);
    assert!(err.contains("distill.cache"), "{err}");
}
