//! `kiln train --resume`: where a run continues from, and the few settings that may change
//! on the way (to train a finished run further).

use std::path::{Path, PathBuf};

use kiln_config::{Config, ModelKind};
use kiln_runtime::run::{self, files};
use kiln_train::World;
use kiln_train::checkpoint::{LoadedCheckpoint, read_latest};

use crate::{KilnError, Result};

/// The settings `--resume` may change: how long the run goes on, and the arithmetic it goes
/// on in (weights and optimizer state are f32 in every precision, so a run moves to a device
/// that lacks its precision). Everything else stays as the run was checkpointed with, or it
/// would no longer be the same run.
pub const RESUME_KEYS: [&str; 4] = [
    "trainer.epochs",
    "trainer.max_steps",
    "trainer.early_stopping_patience",
    "trainer.precision",
];

/// A run to continue: a run directory or one of its checkpoints, and `KEY=VALUE` changes
/// limited to [`RESUME_KEYS`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resume {
    /// The run directory, or a checkpoint directory inside it.
    pub path: PathBuf,
    /// `--set` assignments, e.g. `trainer.epochs=60`.
    pub overrides: Vec<String>,
}

impl Resume {
    /// Continues the run at `path` with its saved settings.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            overrides: Vec::new(),
        }
    }

    /// Also applies `overrides` (each must set one of [`RESUME_KEYS`]).
    pub fn with_overrides(mut self, overrides: Vec<String>) -> Self {
        self.overrides = overrides;
        self
    }
}

/// A run opened for resuming.
pub(crate) struct Resumed {
    pub config: Config,
    pub run_dir: PathBuf,
    pub checkpoint: LoadedCheckpoint,
}

/// Opens the run `resume` names: reads its latest checkpoint and saved config, applies the
/// allowed changes, refuses changes that leave nothing to train, and (rank 0) saves the
/// changed config so that a later plain `--resume` goes on with it.
pub(crate) fn open(resume: &Resume, world: &World) -> Result<Resumed> {
    let path = &resume.path;
    if !path.exists() {
        return Err(KilnError::Invalid(format!(
            "--resume {}: there is no such run (no file or directory at that path)",
            path.display()
        )));
    }
    for assignment in &resume.overrides {
        let key = assignment
            .split_once('=')
            .map_or(assignment.as_str(), |(k, _)| k);
        let key = key.trim();
        if !RESUME_KEYS.contains(&key) {
            return Err(KilnError::Invalid(format!(
                "--set {assignment}: a resumed run keeps the settings it was checkpointed with; only {} may change on --resume (to train it further, or in another precision); start a new run to change `{key}`",
                RESUME_KEYS.map(|k| format!("`{k}`")).join(", ")
            )));
        }
    }
    let checkpoint = read_latest(path)?;
    // A checkpoint lives in RUN/checkpoints/step-N.
    let run_dir = if path.join(files::CONFIG).exists() {
        path.to_path_buf()
    } else {
        checkpoint
            .dir
            .parent()
            .and_then(Path::parent)
            .map(Path::to_path_buf)
            .ok_or_else(|| {
                KilnError::Invalid(format!("{}: cannot find its run directory", path.display()))
            })?
    };
    let config = kiln_config::load(&run_dir.join(files::CONFIG), &resume.overrides)?;
    let progress = checkpoint.progress()?;
    let t = &config.trainer;
    let run = run_dir.display();
    let (done, below, extend) = if config.model.kind == ModelKind::Gpt {
        let steps = progress.steps;
        (
            steps >= t.max_steps as u64,
            (steps > t.max_steps as u64).then(|| {
                format!(
                    "trainer.max_steps = {} is below the {steps} steps",
                    t.max_steps
                )
            }),
            format!(
                "{steps} of {} steps; to train on: kiln train --resume {run} --set trainer.max_steps=N (N > {steps})",
                t.max_steps
            ),
        )
    } else {
        let epochs = progress.epochs;
        let patience = t.early_stopping_patience;
        let stopped = patience > 0 && progress.epochs_without_improvement >= patience;
        (
            epochs >= t.epochs || stopped,
            (epochs > t.epochs)
                .then(|| format!("trainer.epochs = {} is below the {epochs} epochs", t.epochs)),
            if stopped {
                format!(
                    "early stopping ended it after epoch {epochs}, {} epochs without a better validation {}; to train on: kiln train --resume {run} --set trainer.early_stopping_patience=N (N > {patience})",
                    progress.epochs_without_improvement, t.monitor
                )
            } else {
                format!(
                    "{epochs} of {} epochs; to train on: kiln train --resume {run} --set trainer.epochs=N (N > {epochs})",
                    t.epochs
                )
            },
        )
    };
    if let Some(below) = below {
        return Err(KilnError::Invalid(format!(
            "{run}: {below} it has already run; a resumed run can only be extended"
        )));
    }
    // A plain resume of a finished run gives its report again (and finishes one killed
    // between its last checkpoint and its report); asking to extend it and leaving nothing
    // to train is an error.
    if done && !resume.overrides.is_empty() {
        return Err(KilnError::Invalid(format!(
            "{run}: this run has finished ({extend})"
        )));
    }
    if !resume.overrides.is_empty() && world.is_leader() {
        run::save_config(&run_dir, &config)?;
    }
    Ok(Resumed {
        config,
        run_dir,
        checkpoint,
    })
}
