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
    /// The arithmetic training used (f32 in reports written before kiln had a choice).
    #[serde(default)]
    pub precision: PrecisionUsed,
}

/// The arithmetic a run trained in (`trainer.precision`), and float16's loss scaling.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PrecisionUsed {
    /// `"f32"`, `"bf16-mixed"` or `"f16-mixed"`.
    pub name: String,
    /// float16: the loss scale at the end of training.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss_scale: Option<f64>,
    /// float16: optimizer steps skipped because their gradients overflowed.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub skipped_steps: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl Default for PrecisionUsed {
    fn default() -> Self {
        PrecisionUsed::new(kiln_config::Precision::F32, None)
    }
}

impl PrecisionUsed {
    /// `precision`, with the loss scaler float16 training ended with.
    pub fn new(
        precision: kiln_config::Precision,
        scaler: Option<&kiln_train::precision::LossScaler>,
    ) -> Self {
        PrecisionUsed {
            name: precision.name().to_string(),
            loss_scale: scaler.map(|s| s.scale()),
            skipped_steps: scaler.map_or(0, |s| s.skipped_steps()),
        }
    }
}

impl std::fmt::Display for PrecisionUsed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name)?;
        if let Some(scale) = self.loss_scale {
            let steps = match self.skipped_steps {
                1 => "step",
                _ => "steps",
            };
            write!(
                f,
                " (loss scale {scale}, {} {steps} skipped)",
                self.skipped_steps
            )?;
        }
        Ok(())
    }
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
            precision: PrecisionUsed::default(),
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
