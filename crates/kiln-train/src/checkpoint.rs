//! Atomic, verified checkpoints.
//!
//! A checkpoint is a directory `checkpoints/step-NNNNNNNN/` holding its files and a
//! `manifest.json` with each file's size and CRC-32. It is written under a temporary name,
//! every file is synced, and only then is the directory renamed into place and the
//! `checkpoints/latest` pointer replaced (itself by write-then-rename). A process killed at
//! any moment leaves either the old or the new checkpoint, never a half-written one; a
//! damaged or foreign directory is detected by the manifest and reported by name.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::{CheckpointError, TrainError};
pub use kiln_runtime::fs::{remove_stale_temporaries, write_atomic};

const FORMAT: &str = "kiln-checkpoint";
const VERSION: u32 = 1;
const MANIFEST: &str = "manifest.json";
/// How many checkpoints to keep.
const KEEP: usize = 2;

#[derive(Debug, Serialize, Deserialize)]
struct FileEntry {
    bytes: u64,
    crc32: u32,
}

#[derive(Debug, Serialize, Deserialize)]
struct Manifest {
    format: String,
    version: u32,
    step: u64,
    files: BTreeMap<String, FileEntry>,
}

fn io_err(path: &Path, e: std::io::Error) -> TrainError {
    TrainError::Io {
        path: path.display().to_string(),
        source: e,
    }
}

/// Writes a checkpoint of `files` for optimizer step `step` under `checkpoints_dir`, points
/// `latest` at it and prunes old ones. Returns its directory.
pub fn write_checkpoint(
    checkpoints_dir: &Path,
    step: u64,
    files: &[(&str, Vec<u8>)],
) -> Result<PathBuf, TrainError> {
    fs::create_dir_all(checkpoints_dir).map_err(|e| io_err(checkpoints_dir, e))?;
    let name = format!("step-{step:08}");
    let final_dir = checkpoints_dir.join(&name);
    let tmp_dir = checkpoints_dir.join(format!(".{name}.tmp-{}", std::process::id()));
    if tmp_dir.exists() {
        fs::remove_dir_all(&tmp_dir).map_err(|e| io_err(&tmp_dir, e))?;
    }
    fs::create_dir_all(&tmp_dir).map_err(|e| io_err(&tmp_dir, e))?;
    let mut manifest = Manifest {
        format: FORMAT.into(),
        version: VERSION,
        step,
        files: BTreeMap::new(),
    };
    for (file, bytes) in files {
        let path = tmp_dir.join(file);
        let mut f = File::create(&path).map_err(|e| io_err(&path, e))?;
        f.write_all(bytes).map_err(|e| io_err(&path, e))?;
        f.sync_all().map_err(|e| io_err(&path, e))?;
        manifest.files.insert(
            file.to_string(),
            FileEntry {
                bytes: bytes.len() as u64,
                crc32: crc32fast::hash(bytes),
            },
        );
    }
    let manifest_bytes = serde_json::to_vec_pretty(&manifest).expect("manifest serializes");
    write_atomic(&tmp_dir.join(MANIFEST), &manifest_bytes)?;
    if final_dir.exists() {
        fs::remove_dir_all(&final_dir).map_err(|e| io_err(&final_dir, e))?;
    }
    fs::rename(&tmp_dir, &final_dir).map_err(|e| io_err(&final_dir, e))?;
    write_atomic(&checkpoints_dir.join("latest"), name.as_bytes())?;
    prune(checkpoints_dir, &name)?;
    Ok(final_dir)
}

fn prune(checkpoints_dir: &Path, keep_name: &str) -> Result<(), TrainError> {
    let mut names = list_checkpoints(checkpoints_dir)?;
    names.retain(|n| n != keep_name);
    while names.len() + 1 > KEEP {
        let old = names.remove(0);
        let path = checkpoints_dir.join(&old);
        fs::remove_dir_all(&path).map_err(|e| io_err(&path, e))?;
    }
    Ok(())
}

/// Checkpoint directory names under `checkpoints_dir`, oldest first.
pub fn list_checkpoints(checkpoints_dir: &Path) -> Result<Vec<String>, TrainError> {
    let mut names: Vec<String> = match fs::read_dir(checkpoints_dir) {
        Ok(rd) => rd
            .filter_map(|e| e.ok())
            .filter(|e| e.path().is_dir())
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| n.starts_with("step-"))
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(io_err(checkpoints_dir, e)),
    };
    names.sort();
    Ok(names)
}

/// A verified checkpoint's files.
#[derive(Debug)]
pub struct LoadedCheckpoint {
    /// Its directory.
    pub dir: PathBuf,
    /// Optimizer step it was taken at.
    pub step: u64,
    /// File name to contents.
    pub files: BTreeMap<String, Vec<u8>>,
}

/// How far the run a checkpoint belongs to had got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// Whole epochs done (tabular runs; 0 for language models).
    pub epochs: usize,
    /// Optimizer steps taken.
    pub steps: u64,
    /// Epochs since the best validation value (what early stopping counts).
    pub epochs_without_improvement: usize,
}

impl LoadedCheckpoint {
    /// The progress recorded in the checkpoint's `trainer_state.json` (either trainer's).
    pub fn progress(&self) -> Result<Progress, TrainError> {
        #[derive(Deserialize)]
        struct State {
            #[serde(default)]
            epoch: usize,
            #[serde(default, alias = "step")]
            global_step: u64,
            #[serde(default)]
            bad_epochs: usize,
        }
        let state: State =
            serde_json::from_slice(self.file("trainer_state.json")?).map_err(|e| {
                TrainError::checkpoint(
                    &self.dir,
                    CheckpointError::Contents {
                        file: "trainer_state.json".into(),
                        detail: e.to_string(),
                    },
                )
            })?;
        Ok(Progress {
            epochs: state.epoch,
            steps: state.global_step,
            epochs_without_improvement: state.bad_epochs,
        })
    }

    /// The contents of `name`, or an error naming the checkpoint.
    pub fn file(&self, name: &str) -> Result<&[u8], TrainError> {
        self.files.get(name).map(Vec::as_slice).ok_or_else(|| {
            TrainError::checkpoint(
                &self.dir,
                CheckpointError::Missing {
                    file: name.to_string(),
                },
            )
        })
    }
}

/// Reads and verifies one checkpoint directory.
pub fn read_checkpoint(dir: &Path) -> Result<LoadedCheckpoint, TrainError> {
    let bad = |problem: CheckpointError| TrainError::checkpoint(dir, problem);
    let manifest_path = dir.join(MANIFEST);
    let manifest_bytes = fs::read(&manifest_path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            bad(CheckpointError::NoManifest)
        } else {
            io_err(&manifest_path, e)
        }
    })?;
    let manifest: Manifest =
        serde_json::from_slice(&manifest_bytes).map_err(|e| bad(CheckpointError::Manifest(e)))?;
    if manifest.format != FORMAT {
        return Err(bad(CheckpointError::Format {
            found: manifest.format,
            expected: FORMAT,
        }));
    }
    if manifest.version != VERSION {
        return Err(bad(CheckpointError::Version {
            found: manifest.version,
            expected: VERSION,
        }));
    }
    let mut files = BTreeMap::new();
    for (name, entry) in &manifest.files {
        let path = dir.join(name);
        let bytes = fs::read(&path).map_err(|source| {
            bad(CheckpointError::Unreadable {
                file: name.clone(),
                source,
            })
        })?;
        if bytes.len() as u64 != entry.bytes {
            return Err(bad(CheckpointError::Truncated {
                file: name.clone(),
                actual: bytes.len() as u64,
                expected: entry.bytes,
            }));
        }
        if crc32fast::hash(&bytes) != entry.crc32 {
            return Err(bad(CheckpointError::Checksum { file: name.clone() }));
        }
        files.insert(name.clone(), bytes);
    }
    Ok(LoadedCheckpoint {
        dir: dir.to_path_buf(),
        step: manifest.step,
        files,
    })
}

/// Resolves what `--resume PATH` names: a checkpoint directory, or a run directory whose
/// `checkpoints/latest` points at one. The error for a damaged checkpoint lists the others
/// that are still usable.
pub fn read_latest(run_or_checkpoint: &Path) -> Result<LoadedCheckpoint, TrainError> {
    remove_stale_temporaries(run_or_checkpoint);
    remove_stale_temporaries(&run_or_checkpoint.join("checkpoints"));
    if run_or_checkpoint.join(MANIFEST).exists() {
        return read_checkpoint(run_or_checkpoint);
    }
    let checkpoints = run_or_checkpoint.join("checkpoints");
    let latest_path = checkpoints.join("latest");
    let latest = fs::read_to_string(&latest_path)
        .map_err(|_| TrainError::checkpoint(run_or_checkpoint, CheckpointError::NoLatest))?;
    let dir = checkpoints.join(latest.trim());
    read_checkpoint(&dir).map_err(|mut e| {
        if let TrainError::Checkpoint { usable, .. } = &mut e {
            *usable = list_checkpoints(&checkpoints)
                .unwrap_or_default()
                .into_iter()
                .filter(|n| n != latest.trim())
                .map(|n| checkpoints.join(n))
                .filter(|p| read_checkpoint(p).is_ok())
                .collect();
        }
        e
    })
}
