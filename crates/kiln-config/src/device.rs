//! The `device` key: which device a run computes on, as the user names it.

use std::fmt;
use std::str::FromStr;

/// A device as a config or `--device` names it. Opening it (finding the adapter) is
/// `kiln_models::device::open`'s job; this is only the name, checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceRequest {
    /// The CPU: Burn's Flex backend with kiln's fused kernels.
    Cpu,
    /// A hardware GPU if the build has a GPU runtime and the machine has one, else the CPU.
    Auto,
    /// A GPU through wgpu (Vulkan, Metal, DX12): the `N`th adapter, or the best one. A
    /// software renderer (lavapipe) counts when nothing else is there.
    Gpu(Option<usize>),
    /// A GPU through wgpu pinned to Vulkan with SPIR-V kernels (cargo feature `vulkan`).
    Vulkan(Option<usize>),
    /// An NVIDIA GPU through CUDA.
    Cuda(Option<usize>),
}

/// What `device` may be, for error messages.
pub const DEVICE_CHOICES: &str =
    "\"cpu\", \"auto\", \"gpu\", \"gpu:N\", \"vulkan\", \"vulkan:N\", \"cuda\" or \"cuda:N\"";

impl FromStr for DeviceRequest {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let lower = s.trim().to_ascii_lowercase();
        let (kind, index) = match lower.split_once(':') {
            Some((kind @ ("cpu" | "auto"), _)) => {
                return Err(format!(
                    "device \"{s}\": \"{kind}\" takes no index; expected {DEVICE_CHOICES}"
                ));
            }
            Some((kind, index)) => {
                let index = index.parse::<usize>().map_err(|_| {
                    format!("device \"{s}\": the adapter index after ':' must be a number (e.g. \"gpu:0\")")
                })?;
                (kind, Some(index))
            }
            None => (lower.as_str(), None),
        };
        match (kind, index) {
            ("cpu", None) => Ok(Self::Cpu),
            ("auto", None) => Ok(Self::Auto),
            ("gpu" | "wgpu", index) => Ok(Self::Gpu(index)),
            ("vulkan", index) => Ok(Self::Vulkan(index)),
            ("cuda", index) => Ok(Self::Cuda(index)),
            _ => Err(format!("unknown device \"{s}\", expected {DEVICE_CHOICES}")),
        }
    }
}

impl fmt::Display for DeviceRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (name, index) = match self {
            Self::Cpu => ("cpu", None),
            Self::Auto => ("auto", None),
            Self::Gpu(i) => ("gpu", *i),
            Self::Vulkan(i) => ("vulkan", *i),
            Self::Cuda(i) => ("cuda", *i),
        };
        match index {
            Some(i) => write!(f, "{name}:{i}"),
            None => f.write_str(name),
        }
    }
}
