//! What a report records about the run itself: the kiln that ran it, when, the command line
//! and the machine.

use serde::{Deserialize, Serialize};

/// Which kiln ran a run, when, how and where (`report.json`'s `run`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunInfo {
    /// `CARGO_PKG_VERSION` of the binary.
    pub kiln_version: String,
    /// When this invocation started, UTC, RFC 3339 (`2026-12-05T21:12:51Z`).
    pub started_at: String,
    /// The command line, program name first.
    pub command_line: Vec<String>,
    /// The machine.
    pub machine: Machine,
}

/// The machine a run trained on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Machine {
    /// CPU model (`/proc/cpuinfo`'s `model name`), or `unknown`.
    pub cpu: String,
    /// Compute threads per process (rayon's pool).
    pub threads: usize,
    /// The device that computed (`"cpu (Flex, 2 threads)"`, `"gpu:0 NVIDIA H200 (discrete,
    /// wgpu)"`); empty in reports written before kiln had devices.
    #[serde(default)]
    pub device: String,
    /// Processes training together (MPI ranks; 1 without).
    pub processes: usize,
    /// Operating system and architecture.
    pub os: String,
}

impl RunInfo {
    /// This invocation, now, on this machine, as one of `processes`.
    pub fn now(processes: usize) -> Self {
        let (y, m, d, hh, mm, ss) = utc_now();
        RunInfo {
            kiln_version: env!("CARGO_PKG_VERSION").to_string(),
            started_at: format!("{y:04}-{m:02}-{d:02}T{hh:02}:{mm:02}:{ss:02}Z"),
            command_line: std::env::args().collect(),
            machine: Machine {
                cpu: cpu_model().unwrap_or_else(|| "unknown".into()),
                threads: rayon_threads(),
                device: String::new(),
                processes,
                os: format!("{} {}", std::env::consts::OS, std::env::consts::ARCH),
            },
        }
    }
}

fn rayon_threads() -> usize {
    kiln_models::ops::compute_threads()
}

fn cpu_model() -> Option<String> {
    let info = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    info.lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_string())
}

/// The UTC date and time now: (year, month, day, hour, minute, second).
pub(crate) fn utc_now() -> (i64, u32, u32, u64, u64, u64) {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil-from-days (Howard Hinnant).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + if m <= 2 { 1 } else { 0 };
    (y, m, d, rem / 3600, rem % 3600 / 60, rem % 60)
}
