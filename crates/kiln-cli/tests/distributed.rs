//! Data-parallel training across processes: `mpirun -np 2 kiln train` against one process.
//!
//! The tests that launch `mpirun` need a kiln built with the `mpi` feature and Open MPI
//! installed (`.ci/run` installs it and runs `cargo test -p kiln-cli --features mpi --test
//! distributed`); the test that a kiln without MPI refuses a launch runs in every build.

mod common;

#[cfg(feature = "mpi")]
use std::path::Path;
use std::process::Command;
#[cfg(feature = "mpi")]
use std::process::Output;

use common::*;

/// Sets the variables Open MPI's `mpirun` gives rank `rank` of `size`.
#[cfg(not(feature = "mpi"))]
fn as_rank(rank: usize, size: usize) -> Vec<(&'static str, String)> {
    vec![
        ("OMPI_COMM_WORLD_RANK", rank.to_string()),
        ("OMPI_COMM_WORLD_SIZE", size.to_string()),
    ]
}

#[cfg(not(feature = "mpi"))]
#[test]
fn a_kiln_without_mpi_refuses_an_mpi_launch_instead_of_training_twice() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("churn.csv"), churn_csv(120, 1, true, None)).unwrap();
    for rank in [0, 1] {
        let out = Command::new(env!("CARGO_BIN_EXE_kiln"))
            .args(["train", "--data", "churn.csv", "--target", "churn"])
            .envs(as_rank(rank, 2))
            .current_dir(dir.path())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(
            stderr.contains(&format!("rank {rank} of 2"))
                && stderr.contains("built without MPI")
                && stderr.contains("--features mpi"),
            "{stderr}"
        );
    }
    assert!(
        !dir.path().join("runs").exists(),
        "nothing may be written by a refused launch"
    );
}

/// Runs `mpirun -np N kiln ARGS` in `dir` (as root where the tests run as root, over
/// loopback), with a time limit so a hang fails the test instead of stalling it.
#[cfg(feature = "mpi")]
fn mpirun(dir: &Path, launches: &[(usize, &[&str])]) -> Output {
    let mut cmd = Command::new("timeout");
    cmd.args(["300", "mpirun", "--oversubscribe", "--bind-to", "none"]);
    for (i, (np, args)) in launches.iter().enumerate() {
        if i > 0 {
            cmd.arg(":");
        }
        cmd.args(["-np", &np.to_string(), env!("CARGO_BIN_EXE_kiln")]);
        cmd.args(*args);
    }
    cmd.env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        .env("OMPI_MCA_btl_tcp_if_include", "lo")
        .env("OMPI_MCA_oob_tcp_if_include", "lo")
        .env("RAYON_NUM_THREADS", "1")
        .current_dir(dir)
        .output()
        .expect("mpirun runs (apt-get install openmpi-bin)")
}

#[cfg(feature = "mpi")]
fn mpirun_json(dir: &Path, np: usize, args: &[&str]) -> serde_json::Value {
    let out = mpirun(dir, &[(np, args)]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "mpirun -np {np} kiln {args:?} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = stdout.lines().filter(|l| l.starts_with('{')).collect();
    assert_eq!(lines.len(), 1, "only rank 0 prints its summary: {stdout}");
    serde_json::from_str(lines[0]).unwrap()
}

/// Largest absolute difference between the same tensors of two safetensors files.
#[cfg(feature = "mpi")]
fn max_weight_difference(a: &Path, b: &Path) -> f32 {
    use safetensors::SafeTensors;
    let (a, b) = (std::fs::read(a).unwrap(), std::fs::read(b).unwrap());
    let (a, b) = (
        SafeTensors::deserialize(&a).unwrap(),
        SafeTensors::deserialize(&b).unwrap(),
    );
    let floats = |v: &safetensors::tensor::TensorView| -> Vec<f32> {
        v.data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect()
    };
    let mut names = a.names();
    names.sort();
    let mut other = b.names();
    other.sort();
    assert_eq!(names, other, "the two runs hold different tensors");
    let mut max = 0f32;
    for name in names {
        let (x, y) = (a.tensor(name).unwrap(), b.tensor(name).unwrap());
        assert_eq!(x.shape(), y.shape(), "{name}");
        if x.dtype() != safetensors::Dtype::F32 {
            assert_eq!(x.data(), y.data(), "{name}");
            continue;
        }
        for (p, q) in floats(&x).iter().zip(floats(&y)) {
            max = max.max((p - q).abs());
        }
    }
    max
}

/// Two ranks with the global batch split between them train the same model as one process:
/// weights within 1e-5 after 50+ steps, the same validation scores, one run directory.
#[cfg(feature = "mpi")]
#[test]
fn two_ranks_train_mlp_cnn_text_and_gpt_models_like_one_process() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("churn.csv"), churn_csv(400, 3, true, None)).unwrap();
    std::fs::write(d.join("notes.csv"), churn_with_notes(300)).unwrap();
    std::fs::create_dir_all(d.join("img")).unwrap();
    write_idx(&d.join("img"), "train", 200, 12);
    // Batch norm normalises over each rank's share of the batch: equal weights need none.
    std::fs::write(d.join("cnn.toml"), CNN.replace("batch_norm = true\n", "")).unwrap();
    std::fs::write(d.join("text.toml"), TEXT).unwrap();
    std::fs::write(d.join("gpt.toml"), GPT).unwrap();
    std::fs::write(
        d.join("corpus.txt"),
        "the cat sat on the mat. 人民日报。\n".repeat(40),
    )
    .unwrap();
    let mlp: &[&str] = &[
        "train",
        "--data",
        "churn.csv",
        "--target",
        "churn",
        "--set",
        "data.id_column=customer_id",
        "--set",
        "trainer.batch_size=16",
        "--set",
        "trainer.epochs=3",
        "--set",
        "trainer.optimizer=\"adamw\"",
        "--set",
        "trainer.weight_decay=0.01",
        "--set",
        "trainer.grad_clip_norm=1.0",
    ];
    let cnn: &[&str] = &[
        "train",
        "cnn.toml",
        "--set",
        "trainer.batch_size=8",
        "--set",
        "trainer.epochs=3",
    ];
    let text: &[&str] = &[
        "train",
        "text.toml",
        "--set",
        "trainer.batch_size=16",
        "--set",
        "trainer.epochs=4",
    ];
    let gpt: &[&str] = &[
        "train",
        "gpt.toml",
        "--set",
        "trainer.max_steps=50",
        "--set",
        "trainer.eval_every_steps=25",
        "--set",
        "trainer.eval_batches=3",
    ];
    for (kind, args) in [("mlp", mlp), ("cnn", cnn), ("text", text), ("gpt", gpt)] {
        let mut args = args.to_vec();
        // Dropout masks are drawn per rank, so equal weights need no dropout.
        args.extend(["--set", "model.dropout=0.0", "--json"]);
        let one = [args.clone(), vec!["--set", "output.name=\"one\""]].concat();
        let two = [args.clone(), vec!["--set", "output.name=\"two\""]].concat();
        let single = kiln_json(d, &one);
        let double = mpirun_json(d, 2, &two);
        let (a, b) = (
            d.join(single["run_dir"].as_str().unwrap()),
            d.join(double["run_dir"].as_str().unwrap()),
        );
        let steps = single["steps"].as_u64().unwrap();
        assert!(steps >= 50, "{kind}: only {steps} steps");
        assert_eq!(steps, double["steps"].as_u64().unwrap(), "{kind}");
        let diff =
            max_weight_difference(&a.join("model.safetensors"), &b.join("model.safetensors"));
        println!("{kind}: {steps} steps, largest weight difference 1 vs 2 processes {diff:e}");
        assert!(diff <= 1e-5, "{kind}: weights differ by {diff}");
        if kind == "gpt" {
            let (x, y) = (
                single["val_loss"].as_f64().unwrap(),
                double["val_loss"].as_f64().unwrap(),
            );
            assert!((x - y).abs() < 1e-5, "{kind}: validation loss {x} vs {y}");
        } else {
            for split in ["validation", "test"] {
                let (x, y) = (&single[split], &double[split]);
                for metric in ["accuracy", "loss"] {
                    let (x, y) = (x[metric].as_f64().unwrap(), y[metric].as_f64().unwrap());
                    assert!((x - y).abs() < 1e-5, "{kind} {split} {metric}: {x} vs {y}");
                }
            }
        }
        // Rank 0 alone wrote the run: its metrics log has each step once.
        let log = std::fs::read_to_string(b.join("metrics.jsonl")).unwrap();
        let single_log = std::fs::read_to_string(a.join("metrics.jsonl")).unwrap();
        assert_eq!(log.lines().count(), single_log.lines().count(), "{kind}");
        std::fs::remove_dir_all(&b).unwrap();
        std::fs::remove_dir_all(&a).unwrap();
    }
    assert_eq!(
        std::fs::read_dir(d.join("runs")).unwrap().count(),
        0,
        "no run directory besides the ones compared"
    );
}

/// Expects `mpirun` to fail with exit code 1 within the time limit, every rank stopped, and
/// returns its stderr.
#[cfg(feature = "mpi")]
fn mpirun_err(dir: &Path, launches: &[(usize, &[&str])]) -> String {
    let out = mpirun(dir, launches);
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    stderr
}

#[cfg(feature = "mpi")]
#[test]
fn bad_launches_stop_every_rank_with_a_clear_error_and_write_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("churn.csv"), churn_csv(200, 3, true, None)).unwrap();
    let base: &[&str] = &["train", "--data", "churn.csv", "--target", "churn"];
    let with = |extra: &[&'static str]| -> Vec<&str> { [base, extra].concat() };

    let odd = with(&["--set", "trainer.batch_size=15"]);
    let stderr = mpirun_err(d, &[(2, &odd)]);
    assert!(
        stderr.contains("trainer.batch_size: 15 does not split evenly over 2 processes"),
        "{stderr}"
    );

    let other_lr = with(&["--set", "trainer.lr=0.02"]);
    let stderr = mpirun_err(d, &[(1, base), (1, &other_lr)]);
    assert!(
        stderr.contains("rank 1 differs from rank 0: the config: in [trainer], rank 0 has `lr = 0.001`, this rank `lr = 0.02`"),
        "{stderr}"
    );

    // Another build on rank 1: the same program with one byte more.
    let other = d.join("kiln-other");
    let mut bytes = std::fs::read(env!("CARGO_BIN_EXE_kiln")).unwrap();
    bytes.push(0);
    std::fs::write(&other, bytes).unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&other, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let out = Command::new("timeout")
        .args([
            "300",
            "mpirun",
            "--oversubscribe",
            "-np",
            "1",
            env!("CARGO_BIN_EXE_kiln"),
        ])
        .args(base)
        .args([":", "-np", "1", other.to_str().unwrap()])
        .args(base)
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        .current_dir(d)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("differs from rank 0: the kiln binary"),
        "{stderr}"
    );

    let missing = ["train", "--data", "gone.csv", "--target", "churn"];
    let stderr = mpirun_err(d, &[(1, base), (1, &missing)]);
    assert!(
        stderr.contains("error (rank 1 of 2)") && stderr.contains("gone.csv"),
        "{stderr}"
    );
    assert!(
        !d.join("runs").exists(),
        "a launch refused before training writes no run directory"
    );

    // A loss that turns NaN stops every rank, each saying which it is.
    let diverging = with(&["--set", "trainer.lr=1e30", "--set", "trainer.batch_size=16"]);
    let stderr = mpirun_err(d, &[(2, &diverging)]);
    assert!(
        stderr.contains("error (rank") && stderr.contains("training diverged at step"),
        "{stderr}"
    );
}

/// A run with dropout, batch norm, gradient accumulation and checkpoints every few steps.
#[cfg(feature = "mpi")]
const CHECKPOINTED: &str = r#"
seed = 3
[data]
source = "builtin:digits"
[model]
hidden = [64, 32]
dropout = 0.3
batch_norm = true
[trainer]
epochs = 12
batch_size = 16
optimizer = "adamw"
lr = 0.002
schedule = "cosine"
warmup_steps = 20
grad_clip_norm = 1.0
grad_accum_steps = 2
checkpoint_every_steps = 7
monitor = "accuracy"
keep_best = true
[output]
plots = false
"#;

#[cfg(feature = "mpi")]
fn latest_step(run: &Path) -> Option<u64> {
    let name = std::fs::read_to_string(run.join("checkpoints/latest")).ok()?;
    name.trim().strip_prefix("step-")?.parse().ok()
}

/// Starts `mpirun -np 2 kiln train` of `config`, SIGKILLs rank 1's process once a checkpoint
/// past `step` exists, and checks that the launch ends within 60 s, naming the lost rank.
#[cfg(feature = "mpi")]
fn kill_one_rank_after(dir: &Path, config: &str, name: &str, step: u64) -> u64 {
    use std::time::{Duration, Instant};
    let mut child = Command::new("mpirun")
        .args(["--oversubscribe", "--bind-to", "none", "-np", "2"])
        .arg(env!("CARGO_BIN_EXE_kiln"))
        .args(["train", config, "--quiet", "--set"])
        .arg(format!("output.name=\"{name}\""))
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        .env("RAYON_NUM_THREADS", "1")
        .current_dir(dir)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let run = dir.join("runs").join(name);
    let started = Instant::now();
    while latest_step(&run).is_none_or(|s| s < step) {
        assert!(
            child.try_wait().unwrap().is_none(),
            "finished before the kill"
        );
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "no checkpoint"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    // The ranks are mpirun's children; the later-started one is rank 1 (or 0: either
    // rank lost must stop the other).
    let children =
        std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", child.id())).unwrap();
    let victim: i32 = children
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .max()
        .expect("mpirun has rank processes");
    let killed = Instant::now();
    assert_eq!(unsafe { libc::kill(victim, libc::SIGKILL) }, 0);
    let out = child.wait_with_output().unwrap();
    let waited = killed.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        waited < Duration::from_secs(60),
        "the other rank outlived the lost one by {waited:?}"
    );
    assert!(
        stderr.contains("exited on signal 9"),
        "the error names the lost rank: {stderr}"
    );
    println!(
        "lost rank ended the launch in {waited:?}: {}",
        stderr
            .lines()
            .find(|l| l.contains("signal 9"))
            .unwrap_or("")
    );
    assert!(
        !run.join("model.safetensors").exists(),
        "killed before the end"
    );
    latest_step(&run).unwrap()
}

/// Trains `config` at N = 2 uninterrupted (`runs/full`) and again with one rank killed after
/// step 120 (`runs/killed`); the killed run's last checkpoint step and directory.
#[cfg(feature = "mpi")]
fn full_and_killed_runs(d: &Path, config: &str) -> (u64, std::path::PathBuf) {
    std::fs::write(d.join("run.toml"), config).unwrap();
    let full = [
        "train",
        "run.toml",
        "--json",
        "--set",
        "output.name=\"full\"",
    ];
    mpirun_json(d, 2, &full);
    let killed_at = kill_one_rank_after(d, "run.toml", "killed", 120);
    (killed_at, d.join("runs/killed"))
}

/// Killed at N = 2 (one rank SIGKILLed), resumed at N = 2: bit-identical to the
/// uninterrupted N = 2 run, dropout, batch norm and gradient accumulation included.
#[cfg(feature = "mpi")]
#[test]
fn a_run_killed_at_two_ranks_resumes_at_two_ranks_bit_identically() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (killed_at, run) = full_and_killed_runs(d, CHECKPOINTED);
    let reference = std::fs::read(d.join("runs/full/model.safetensors")).unwrap();
    let out = mpirun_json(
        d,
        2,
        &["train", "--resume", run.to_str().unwrap(), "--json"],
    );
    assert_eq!(out["resumed_from"].as_u64(), Some(killed_at));
    let resumed = std::fs::read(run.join("model.safetensors")).unwrap();
    assert!(
        resumed == reference,
        "resumed weights differ from the uninterrupted run (killed at step {killed_at})"
    );
}

/// A checkpoint written at N = 2 resumes in one process: within 1e-5 of the uninterrupted
/// N = 2 run (no dropout or batch norm, whose statistics are per rank).
#[cfg(feature = "mpi")]
#[test]
fn a_checkpoint_written_by_two_ranks_resumes_in_one_process() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let config = CHECKPOINTED
        .replace("dropout = 0.3", "dropout = 0.0")
        .replace("batch_norm = true", "batch_norm = false");
    let (killed_at, run) = full_and_killed_runs(d, &config);
    let out = kiln_json(d, &["train", "--resume", run.to_str().unwrap(), "--json"]);
    assert_eq!(out["resumed_from"].as_u64(), Some(killed_at));
    let diff = max_weight_difference(
        &d.join("runs/full/model.safetensors"),
        &run.join("model.safetensors"),
    );
    println!("resumed at N = 1 from step {killed_at}: largest weight difference {diff:e}");
    assert!(diff <= 1e-5, "weights differ by {diff}");
}

/// Two "hosts" on loopback (127.0.0.1 and 127.0.0.2 in a hostfile, an rsh stand-in that runs
/// the remote command here, TCP between the ranks): the same model as one process.
#[cfg(feature = "mpi")]
#[test]
fn two_hosts_over_tcp_train_like_one_process() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("churn.csv"), churn_csv(300, 5, true, None)).unwrap();
    std::fs::write(d.join("hosts"), "127.0.0.1 slots=1\n127.0.0.2 slots=1\n").unwrap();
    let rsh = d.join("rsh");
    std::fs::write(
        &rsh,
        "#!/bin/sh\n# rsh HOST COMMAND: drop the options and the host, run COMMAND here.\n\
         while [ $# -gt 0 ]; do case \"$1\" in -*) shift ;; *) shift; break ;; esac; done\n\
         exec sh -c \"$*\"\n",
    )
    .unwrap();
    std::fs::set_permissions(&rsh, std::fs::Permissions::from_mode(0o755)).unwrap();
    let args = [
        "train",
        "--data",
        "churn.csv",
        "--target",
        "churn",
        "--set",
        "model.dropout=0.0",
        "--set",
        "trainer.epochs=2",
        "--json",
    ];
    let single = kiln_json(d, &[&args[..], &["--set", "output.name=\"one\""]].concat());
    let out = Command::new("timeout")
        .args(["300", "mpirun", "--hostfile", "hosts", "-np", "2"])
        .args(["--mca", "plm_rsh_agent", rsh.to_str().unwrap()])
        .args(["--mca", "btl", "self,tcp"])
        .args(["--mca", "btl_tcp_if_include", "lo"])
        .args(["--mca", "oob_tcp_if_include", "lo"])
        .arg("-x")
        .arg("RAYON_NUM_THREADS=1")
        .arg(env!("CARGO_BIN_EXE_kiln"))
        .args(args)
        .args(["--set", "output.name=\"hosts\""])
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        .current_dir(d)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let double: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(single["steps"], double["steps"]);
    let diff = max_weight_difference(
        &d.join("runs/one/model.safetensors"),
        &d.join("runs/hosts/model.safetensors"),
    );
    println!("two hosts over TCP vs one process: largest weight difference {diff:e}");
    assert!(diff <= 1e-5, "weights differ by {diff}");
}
