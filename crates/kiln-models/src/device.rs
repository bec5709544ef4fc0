//! Opening the device a run computes on: the CPU (Burn's Flex backend, kiln's fused kernels)
//! or a GPU through Burn's wgpu runtime (cargo feature `wgpu`; `vulkan` pins Vulkan and
//! SPIR-V) or its CUDA runtime (cargo feature `cuda`), from the config's `device`
//! ([`DeviceRequest`]).

use burn::module::{Module, ModuleVisitor, Param};
use burn::prelude::{Device, Tensor};
use kiln_config::DeviceRequest;

/// A device that is open, with the words a report uses for it.
#[derive(Debug, Clone)]
pub struct OpenedDevice {
    /// The device tensors are created on (without autodiff).
    pub device: Device,
    /// What ran: `"cpu (Flex, 2 threads)"`, `"gpu:0 NVIDIA H200 (discrete, wgpu)"`.
    pub description: String,
    /// Whether it is a GPU runtime (a software renderer included).
    pub is_gpu: bool,
}

/// Why a device could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// The build has no runtime for what was asked.
    #[error("device \"{requested}\": {reason}")]
    NotBuilt {
        /// The `device` value.
        requested: String,
        /// What is missing and how to get it.
        reason: String,
    },
    /// The runtime is there but the machine has no such adapter.
    #[error("device \"{requested}\": {reason}")]
    NotFound {
        /// The `device` value.
        requested: String,
        /// What was looked for and what exists.
        reason: String,
    },
}

/// Opens `request`. `auto` falls back to the CPU when no hardware GPU is found (a software
/// renderer is slower than the CPU backend); `gpu` takes a software renderer when it is all
/// there is, so the GPU code path can be tested on machines without one.
pub fn open(request: DeviceRequest) -> Result<OpenedDevice, DeviceError> {
    match request {
        DeviceRequest::Cpu => Ok(cpu()),
        DeviceRequest::Auto => Ok(cuda::open(request, None)
            .ok()
            .or_else(gpu::auto)
            .unwrap_or_else(cpu)),
        DeviceRequest::Gpu(index) => gpu::open(request, index, false),
        DeviceRequest::Vulkan(index) => gpu::open(request, index, true),
        DeviceRequest::Cuda(index) => cuda::open(request, index),
    }
}

#[cfg(feature = "cuda")]
mod cuda {
    use super::{DeviceError, OpenedDevice, quietly};
    use burn::prelude::Device;
    use burn::tensor::DeviceType;
    use kiln_config::DeviceRequest;

    /// The CUDA devices, listed once per process; `None` when the driver library cannot be
    /// loaded (Burn's runtime panics then).
    fn devices() -> Option<Vec<(Device, String)>> {
        static DEVICES: std::sync::OnceLock<Option<Vec<(Device, String)>>> =
            std::sync::OnceLock::new();
        DEVICES
            .get_or_init(|| {
                quietly(|| {
                    Device::enumerate(DeviceType::Cuda)
                        .into_iter()
                        .map(|device| {
                            let name = device
                                .identity()
                                .map(|identity| identity.name)
                                .unwrap_or_else(|| "unnamed GPU".into());
                            (device, name)
                        })
                        .collect()
                })
                .ok()
            })
            .clone()
    }

    pub(super) fn open(
        request: DeviceRequest,
        index: Option<usize>,
    ) -> Result<OpenedDevice, DeviceError> {
        let not_found = |reason: String| DeviceError::NotFound {
            requested: request.to_string(),
            reason,
        };
        let Some(list) = devices() else {
            return Err(not_found(
                "the CUDA driver library (libcuda.so) could not be loaded: install the NVIDIA \
                 driver, or use --device gpu (wgpu) or cpu"
                    .into(),
            ));
        };
        if list.is_empty() {
            return Err(not_found(
                "no CUDA GPU found (none there, or no NVIDIA driver: libcuda.so); use --device \
                 gpu (wgpu) or cpu"
                    .into(),
            ));
        }
        let i = index.unwrap_or(0);
        let Some((device, name)) = list.get(i).cloned() else {
            let names = list
                .iter()
                .enumerate()
                .map(|(i, (_, name))| format!("cuda:{i} {name}"))
                .collect::<Vec<_>>()
                .join(", ");
            return Err(not_found(format!(
                "there is no CUDA device {i}: this machine has {} ({names})",
                list.len()
            )));
        };
        Ok(OpenedDevice {
            description: format!("cuda:{i} {name} (CUDA)"),
            device,
            is_gpu: true,
        })
    }
}

#[cfg(not(feature = "cuda"))]
mod cuda {
    use super::{DeviceError, OpenedDevice};
    use kiln_config::DeviceRequest;

    pub(super) fn open(
        request: DeviceRequest,
        _index: Option<usize>,
    ) -> Result<OpenedDevice, DeviceError> {
        Err(DeviceError::NotBuilt {
            requested: request.to_string(),
            reason: "this kiln was built without CUDA: run scripts/setup-cuda-build.sh, then \
                     `cargo build --release --features cuda`; or, through Vulkan, \
                     `--features vulkan` and --device vulkan (or gpu)"
                .into(),
        })
    }
}

/// `build(device)` with its weights drawn from `seed` on the CPU: a model built on a GPU is
/// drawn on the CPU and moved there, so one seed gives one set of initial weights on every
/// device (each runtime has its own random stream). `device` may have autodiff on; the
/// module's parameters stay trainable.
pub fn build_seeded<M: Module>(device: &Device, seed: u64, build: impl FnOnce(&Device) -> M) -> M {
    if crate::ops::on_flex(device) {
        device.seed(seed);
        return build(device);
    }
    let cpu = match device.is_autodiff() {
        true => Device::flex().autodiff(),
        false => Device::flex(),
    };
    cpu.seed(seed);
    let module = build(&cpu);
    // Burn draws a parameter when it is first read: draw them all here, on the CPU, or the
    // move would carry the recipe and the GPU's stream would draw them.
    module.visit(&mut DrawParameters);
    module.fork(device)
}

/// Reads every parameter once, which draws the lazily initialised ones.
struct DrawParameters;

impl ModuleVisitor for DrawParameters {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let _ = param.val();
    }
}

/// The CPU device.
pub fn cpu() -> OpenedDevice {
    OpenedDevice {
        device: Device::flex(),
        description: format!("cpu (Flex, {} threads)", crate::ops::compute_threads()),
        is_gpu: false,
    }
}

/// The GPU adapters this build and machine have, as `gpu:N` numbers them: `(name, kind)`.
/// Empty without the `wgpu` feature.
pub fn gpu_adapters() -> Vec<(String, &'static str)> {
    gpu::adapters()
        .into_iter()
        .map(|adapter| (adapter.name, adapter.kind))
        .collect()
}

#[cfg(feature = "wgpu")]
mod gpu {
    use super::{DeviceError, OpenedDevice};
    use burn::backend::DispatchDevice;
    use burn::backend::{CubeDevice, WgpuDeviceKind};
    use burn::prelude::Device;
    use burn::tensor::DeviceType;
    use kiln_config::DeviceRequest;

    /// One wgpu adapter, in the order wgpu enumerates them.
    #[derive(Clone)]
    pub(super) struct Adapter {
        pub(super) device: Device,
        pub(super) name: String,
        pub(super) kind: &'static str,
    }

    fn kind_of(device: &Device) -> &'static str {
        match device.as_dispatch() {
            DispatchDevice::Cube(CubeDevice::Wgpu(wgpu)) => match wgpu.kind {
                WgpuDeviceKind::DiscreteGpu(_) => "discrete",
                WgpuDeviceKind::IntegratedGpu(_) => "integrated",
                WgpuDeviceKind::VirtualGpu(_) => "virtual",
                WgpuDeviceKind::Cpu => "software",
                _ => "other",
            },
            _ => "other",
        }
    }

    /// Enumerated (each adapter opened to ask its name) once per process.
    pub(super) fn adapters() -> Vec<Adapter> {
        static ADAPTERS: std::sync::OnceLock<Vec<Adapter>> = std::sync::OnceLock::new();
        ADAPTERS
            .get_or_init(|| {
                Device::enumerate(DeviceType::Wgpu)
                    .into_iter()
                    .map(|device| {
                        let name = device
                            .identity()
                            .map(|identity| identity.name)
                            .unwrap_or_else(|| "unnamed adapter".into());
                        let kind = kind_of(&device);
                        Adapter { device, name, kind }
                    })
                    .collect()
            })
            .clone()
    }

    fn opened(name: &str, index: usize, adapter: Adapter, api: &str) -> OpenedDevice {
        OpenedDevice {
            description: format!("{name}:{index} {} ({}, {api})", adapter.name, adapter.kind),
            device: adapter.device,
            is_gpu: true,
        }
    }

    pub(super) fn auto() -> Option<OpenedDevice> {
        adapters()
            .into_iter()
            .enumerate()
            .find(|(_, adapter)| adapter.kind != "software")
            .map(|(i, adapter)| opened("gpu", i, adapter, "wgpu"))
    }

    pub(super) fn open(
        request: DeviceRequest,
        index: Option<usize>,
        vulkan: bool,
    ) -> Result<OpenedDevice, DeviceError> {
        let list = adapters();
        if list.is_empty() {
            return Err(DeviceError::NotFound {
                requested: request.to_string(),
                reason: "no GPU adapter found (wgpu sees no Vulkan, Metal or DX12 device; on \
                         Linux install the GPU's Vulkan driver, or mesa-vulkan-drivers for \
                         the software one)"
                    .into(),
            });
        }
        let count = list.len();
        let names = list
            .iter()
            .enumerate()
            .map(|(i, a)| format!("gpu:{i} {} ({})", a.name, a.kind))
            .collect::<Vec<_>>()
            .join(", ");
        let chosen = match index {
            Some(i) if i < count => i,
            Some(i) => {
                return Err(DeviceError::NotFound {
                    requested: request.to_string(),
                    reason: format!("there is no adapter {i}: this machine has {count} ({names})"),
                });
            }
            None => list.iter().position(|a| a.kind != "software").unwrap_or(0),
        };
        let adapter = list.into_iter().nth(chosen).expect("index checked");
        if vulkan {
            return vulkan_device(request, chosen, adapter);
        }
        Ok(opened("gpu", chosen, adapter, "wgpu"))
    }

    #[cfg(feature = "vulkan")]
    fn vulkan_device(
        _request: DeviceRequest,
        index: usize,
        adapter: Adapter,
    ) -> Result<OpenedDevice, DeviceError> {
        use burn::backend::WgpuBackend;
        let DispatchDevice::Cube(CubeDevice::Wgpu(wgpu)) = adapter.device.as_dispatch() else {
            unreachable!("wgpu enumerates wgpu devices");
        };
        let pinned = Device::new(CubeDevice::Wgpu(wgpu.clone().on(WgpuBackend::Vulkan)));
        Ok(opened(
            "vulkan",
            index,
            Adapter {
                device: pinned,
                ..adapter
            },
            "Vulkan, SPIR-V",
        ))
    }

    #[cfg(not(feature = "vulkan"))]
    fn vulkan_device(
        request: DeviceRequest,
        _index: usize,
        _adapter: Adapter,
    ) -> Result<OpenedDevice, DeviceError> {
        Err(DeviceError::NotBuilt {
            requested: request.to_string(),
            reason: "this build's GPU runtime is wgpu with WGSL kernels; for SPIR-V on Vulkan \
                     build with `cargo build --release --features vulkan`, or use --device gpu"
                .into(),
        })
    }
}

#[cfg(not(feature = "wgpu"))]
mod gpu {
    use super::{DeviceError, OpenedDevice};
    use kiln_config::DeviceRequest;

    pub(super) struct Adapter {
        pub(super) name: String,
        pub(super) kind: &'static str,
    }

    pub(super) fn adapters() -> Vec<Adapter> {
        Vec::new()
    }

    pub(super) fn auto() -> Option<OpenedDevice> {
        None
    }

    pub(super) fn open(
        request: DeviceRequest,
        _index: Option<usize>,
        _vulkan: bool,
    ) -> Result<OpenedDevice, DeviceError> {
        Err(DeviceError::NotBuilt {
            requested: request.to_string(),
            reason: "this kiln was built without a GPU runtime; build it with \
                     `cargo build --release --features wgpu` (or `vulkan` for SPIR-V on \
                     Vulkan GPUs), or use --device cpu"
                .into(),
        })
    }
}

/// Runs `f`, turning a panic that says the device ran out of memory (Burn's GPU runtimes
/// panic on a failed allocation) into `Err` with the runtime's words; any other panic goes
/// on unwinding. While `f` runs, such a panic is not printed: the caller reports it.
pub fn catch_out_of_memory<R>(f: impl FnOnce() -> R) -> Result<R, String> {
    install_quiet_hook();
    let was = CATCHING.with(|c| c.replace(true));
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    CATCHING.with(|c| c.set(was));
    match result {
        Ok(r) => Ok(r),
        Err(payload) => match panic_text(payload.as_ref()).filter(|m| is_out_of_memory(m)) {
            Some(message) => Err(out_of_memory_line(&message)),
            None => std::panic::resume_unwind(payload),
        },
    }
}

/// Whether a runtime's panic message says memory ran out (a failed allocation, or a buffer
/// larger than the device allows).
pub fn is_out_of_memory(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    [
        "out of memory",
        "out-of-memory",
        "outofmemory",
        "out of device memory",
        "buffertoobig",
        "buffer too big",
        "max_buffer_size",
        "max_storage_buffer_binding_size",
    ]
    .iter()
    .any(|p| m.contains(p))
}

thread_local! {
    static CATCHING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    static QUIET: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `f`, catching any panic without printing it: for probing a runtime that panics when
/// its driver is missing.
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
fn quietly<R>(f: impl FnOnce() -> R) -> std::thread::Result<R> {
    install_quiet_hook();
    let was = QUIET.with(|q| q.replace(true));
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    QUIET.with(|q| q.set(was));
    result
}

/// Chains a panic hook, once per process, that keeps out-of-memory panics inside
/// [`catch_out_of_memory`] quiet and hands every other panic to the hook before it.
fn install_quiet_hook() {
    static INSTALLED: std::sync::Once = std::sync::Once::new();
    INSTALLED.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let quiet = QUIET.with(|q| q.get())
                || (CATCHING.with(|c| c.get())
                    && panic_text(info.payload()).is_some_and(|m| is_out_of_memory(&m)));
            if !quiet {
                previous(info);
            }
        }));
    });
}

fn panic_text(payload: &(dyn std::any::Any + Send)) -> Option<String> {
    payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
}

/// The line of a runtime's message that says memory ran out (the messages nest causes and go
/// on with backtraces).
fn out_of_memory_line(message: &str) -> String {
    message
        .lines()
        .map(str::trim)
        .find(|l| is_out_of_memory(l))
        .unwrap_or("out of memory")
        .to_string()
}
