//! Files that matter: atomic writes, JSON in and out, and the temporaries a killed writer
//! leaves behind.

use std::fs::{self, File};
use std::io::Write;
use std::path::Path;

use crate::RuntimeError;

fn io(path: &Path, e: std::io::Error) -> RuntimeError {
    RuntimeError::Io {
        path: path.display().to_string(),
        source: e,
    }
}

/// Writes `bytes` to `path` atomically: a temporary file in the same directory, synced, then
/// renamed over the target, then the directory synced.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), RuntimeError> {
    let mut file = AtomicFile::create(path)?;
    file.write_all(bytes).map_err(|e| io(&file.tmp, e))?;
    file.finish()
}

/// A file written as it goes that appears at its path only once finished ([`write_atomic`]
/// for output too large to hold): a temporary `.NAME.tmp-PID` beside it, removed if the
/// writer is dropped unfinished.
pub struct AtomicFile {
    path: std::path::PathBuf,
    tmp: std::path::PathBuf,
    file: Option<std::io::BufWriter<File>>,
}

impl AtomicFile {
    /// Creates the temporary file (and `path`'s folder).
    pub fn create(path: &Path) -> Result<Self, RuntimeError> {
        let dir = path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
        let tmp = dir.join(format!(
            ".{}.tmp-{}",
            path.file_name().and_then(|n| n.to_str()).unwrap_or("file"),
            std::process::id()
        ));
        let file = File::create(&tmp).map_err(|e| io(&tmp, e))?;
        Ok(AtomicFile {
            path: path.to_path_buf(),
            tmp,
            file: Some(std::io::BufWriter::with_capacity(1 << 20, file)),
        })
    }

    /// Syncs the data, renames the temporary over the target and syncs the folder.
    pub fn finish(mut self) -> Result<(), RuntimeError> {
        // On an error below, the temporary is removed when `self` drops.
        let file = self.file.as_mut().expect("finished once");
        file.flush().map_err(|e| io(&self.tmp, e))?;
        file.get_ref().sync_all().map_err(|e| io(&self.tmp, e))?;
        fs::rename(&self.tmp, &self.path).map_err(|e| io(&self.path, e))?;
        self.file = None;
        let dir = self
            .path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    }
}

impl Write for AtomicFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.file.as_mut().expect("not finished").write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.as_mut().expect("not finished").flush()
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if self.file.take().is_some() {
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

/// The writer's process id in a temporary name [`write_atomic`] or [`write_checkpoint`]
/// made (`.NAME.tmp-PID`), if `name` is one.
fn temporary_owner(name: &str) -> Option<u32> {
    let (stem, pid) = name.strip_prefix('.')?.rsplit_once(".tmp-")?;
    (!stem.is_empty()).then_some(())?;
    pid.parse().ok()
}

/// Whether process `pid` still runs (so its temporaries may still be written).
fn process_alive(pid: u32) -> bool {
    if pid == std::process::id() {
        return true;
    }
    #[cfg(target_os = "linux")]
    {
        Path::new("/proc").join(pid.to_string()).exists()
    }
    #[cfg(not(target_os = "linux"))]
    {
        // Without /proc, only our own are known to be live: keep the others.
        true
    }
}

/// How long a temporary must have gone unmodified before it is taken for abandoned: a
/// writer on another host (a shared folder) has a PID this host cannot see, but keeps its
/// file fresh while it writes.
const ABANDONED_AFTER: std::time::Duration = std::time::Duration::from_secs(60);

/// Removes the temporary files and checkpoint directories that a killed writer (SIGKILL, a
/// full disk) left in `dir`: `.NAME.tmp-PID` entries whose process is gone and that have not
/// changed for a minute. Entries of a live process, or still changing, are kept, so a
/// concurrent writer is never disturbed. Returns how many went.
pub fn remove_stale_temporaries(dir: &Path) -> usize {
    let Ok(entries) = fs::read_dir(dir) else {
        return 0;
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(temporary_owner) else {
            continue;
        };
        let fresh = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_none_or(|age| age < ABANDONED_AFTER);
        if fresh || process_alive(pid) {
            continue;
        }
        let path = entry.path();
        let gone = if entry.file_type().is_ok_and(|t| t.is_dir()) {
            fs::remove_dir_all(&path)
        } else {
            fs::remove_file(&path)
        };
        removed += usize::from(gone.is_ok());
    }
    removed
}

/// Writes a JSON file atomically.
pub fn write_json(path: &Path, value: &impl serde::Serialize) -> Result<(), RuntimeError> {
    write_atomic(
        path,
        &serde_json::to_vec_pretty(value).expect("serializable"),
    )
}

/// Reads a JSON file, naming it in errors.
pub fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, RuntimeError> {
    let bytes = std::fs::read(path).map_err(|e| io(path, e))?;
    serde_json::from_slice(&bytes)
        .map_err(|e| RuntimeError::Run(format!("{}: {e}", path.display())))
}
