//! The process-wide GPU context: one adapter, one device, the compiled
//! kernels. Found once (the probe) and shared by every GPU model.

use std::sync::{Arc, Mutex, OnceLock};

use serde::Serialize;

use crate::error::{Error, Result};

/// What the capability probe found: whether a GPU adapter is usable, which
/// one, and why not when it is not.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GpuProbe {
    /// An adapter was found, a device opened on it and every kernel compiled.
    pub available: bool,
    /// Adapter name as the driver reports it (`llvmpipe (LLVM 15.0.6, 256 bits)`).
    pub adapter: Option<String>,
    /// wgpu backend (`vulkan`, `metal`, `dx12`, `gl`).
    pub backend: Option<String>,
    /// `discrete_gpu`, `integrated_gpu`, `virtual_gpu`, `cpu` (a software
    /// rasterizer such as lavapipe) or `other`.
    pub device_type: Option<String>,
    /// Driver name and version.
    pub driver: Option<String>,
    /// Why the GPU is not available; `None` when it is.
    pub reason: Option<String>,
}

impl GpuProbe {
    fn unavailable(reason: impl Into<String>) -> Self {
        GpuProbe {
            available: false,
            adapter: None,
            backend: None,
            device_type: None,
            driver: None,
            reason: Some(reason.into()),
        }
    }

    /// One line for logs and decisions: `llvmpipe (…) on vulkan (cpu)`.
    pub fn describe(&self) -> String {
        match (&self.adapter, &self.reason) {
            (Some(a), None) => format!(
                "{a} on {} ({})",
                self.backend.as_deref().unwrap_or("?"),
                self.device_type.as_deref().unwrap_or("?")
            ),
            (_, Some(r)) => format!("no usable GPU: {r}"),
            (None, None) => "no usable GPU".into(),
        }
    }
}

/// The kernels of `kernels.wgsl`, one entry point each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Kernel {
    Unary,
    Binary,
    Copy,
    MatMul,
    Conv,
    ConvTranspose,
    Pool,
    Reduce,
    Resize,
}

impl Kernel {
    const ALL: [Kernel; 9] = [
        Kernel::Unary,
        Kernel::Binary,
        Kernel::Copy,
        Kernel::MatMul,
        Kernel::Conv,
        Kernel::ConvTranspose,
        Kernel::Pool,
        Kernel::Reduce,
        Kernel::Resize,
    ];

    fn entry(self) -> &'static str {
        match self {
            Kernel::Unary => "unary",
            Kernel::Binary => "binary",
            Kernel::Copy => "copy",
            Kernel::MatMul => "matmul",
            Kernel::Conv => "conv",
            Kernel::ConvTranspose => "conv_transpose",
            Kernel::Pool => "pool",
            Kernel::Reduce => "reduce",
            Kernel::Resize => "resize",
        }
    }
}

/// An open device with its kernels.
pub(crate) struct Gpu {
    pub(crate) device: wgpu::Device,
    pub(crate) queue: wgpu::Queue,
    pub(crate) layout: wgpu::BindGroupLayout,
    pipelines: Vec<(Kernel, wgpu::ComputePipeline)>,
    /// Bound where a kernel has fewer inputs than bindings.
    pub(crate) placeholder: wgpu::Buffer,
    pub(crate) probe: GpuProbe,
    /// Largest storage binding the device accepts, in bytes.
    pub(crate) max_binding: u64,
    /// Errors wgpu reported outside an error scope (device loss, …).
    uncaptured: Arc<Mutex<Vec<String>>>,
}

impl std::fmt::Debug for Gpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gpu").field("probe", &self.probe).finish()
    }
}

static CONTEXT: OnceLock<std::result::Result<Arc<Gpu>, Box<GpuProbe>>> = OnceLock::new();

/// Finds a GPU adapter and opens it, once per process; later calls return
/// what the first one found.
///
/// Design: the probe is not only "is there an adapter": it opens a device and
/// compiles every kernel, so `available` means the engine can run here. A
/// software adapter (lavapipe, `device_type` `cpu`) counts as available; the
/// per-model micro-benchmark decides whether it is worth using.
pub fn probe() -> GpuProbe {
    match context() {
        Ok(gpu) => gpu.probe.clone(),
        Err(p) => *p,
    }
}

pub(crate) fn context() -> std::result::Result<Arc<Gpu>, Box<GpuProbe>> {
    CONTEXT.get_or_init(open).clone()
}

fn open() -> std::result::Result<Arc<Gpu>, Box<GpuProbe>> {
    // wgpu's backends honour WGPU_BACKEND (vulkan, gl, …) and the
    // instance flags their own variables.
    let desc = wgpu::InstanceDescriptor::new_without_display_handle().with_env();
    let instance = wgpu::Instance::new(desc);
    let adapter = pollster::block_on(instance.request_adapter(&wgpu::RequestAdapterOptions {
        power_preference: wgpu::PowerPreference::HighPerformance,
        force_fallback_adapter: false,
        compatible_surface: None,
        apply_limit_buckets: false,
    }))
    .map_err(|e| Box::new(GpuProbe::unavailable(format!("no GPU adapter: {e}"))))?;
    let info = adapter.get_info();
    let mut probe = GpuProbe {
        available: false,
        adapter: Some(info.name.clone()),
        backend: Some(info.backend.to_str().to_owned()),
        device_type: Some(
            match info.device_type {
                wgpu::DeviceType::DiscreteGpu => "discrete_gpu",
                wgpu::DeviceType::IntegratedGpu => "integrated_gpu",
                wgpu::DeviceType::VirtualGpu => "virtual_gpu",
                wgpu::DeviceType::Cpu => "cpu",
                wgpu::DeviceType::Other => "other",
            }
            .to_owned(),
        ),
        driver: Some(
            format!("{} {}", info.driver, info.driver_info)
                .trim()
                .to_owned(),
        ),
        reason: None,
    };
    let fail = |probe: &GpuProbe, why: String| {
        Box::new(GpuProbe {
            reason: Some(why),
            ..probe.clone()
        })
    };
    let limits = adapter.limits();
    if limits.max_storage_buffers_per_shader_stage < 5 {
        return Err(fail(
            &probe,
            format!(
                "adapter allows {} storage buffers per shader stage, the kernels need 5",
                limits.max_storage_buffers_per_shader_stage
            ),
        ));
    }
    let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
        label: Some("outpost"),
        required_features: wgpu::Features::empty(),
        // The adapter's own limits: large feature maps at batch 32 need
        // bindings beyond the WebGPU defaults (128 MiB).
        required_limits: limits.clone(),
        ..Default::default()
    }))
    .map_err(|e| fail(&probe, format!("cannot open a device: {e}")))?;
    let uncaptured = Arc::new(Mutex::new(Vec::new()));
    {
        let sink = uncaptured.clone();
        device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
            if let Ok(mut v) = sink.lock() {
                v.push(e.to_string());
            }
        }));
    }
    let scope = device.push_error_scope(wgpu::ErrorFilter::Validation);
    let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
        label: Some("outpost kernels"),
        source: wgpu::ShaderSource::Wgsl(include_str!("kernels.wgsl").into()),
    });
    let entry = |binding, read_only| wgpu::BindGroupLayoutEntry {
        binding,
        visibility: wgpu::ShaderStages::COMPUTE,
        ty: wgpu::BindingType::Buffer {
            ty: wgpu::BufferBindingType::Storage { read_only },
            has_dynamic_offset: false,
            min_binding_size: None,
        },
        count: None,
    };
    let layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
        label: Some("outpost kernel bindings"),
        entries: &[
            entry(0, true),
            entry(1, false),
            entry(2, true),
            entry(3, true),
            entry(4, true),
        ],
    });
    let pipeline_layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
        label: Some("outpost kernels"),
        bind_group_layouts: &[Some(&layout)],
        immediate_size: 0,
    });
    let pipelines = Kernel::ALL
        .iter()
        .map(|&k| {
            let p = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(k.entry()),
                layout: Some(&pipeline_layout),
                module: &module,
                entry_point: Some(k.entry()),
                compilation_options: Default::default(),
                cache: None,
            });
            (k, p)
        })
        .collect();
    let placeholder = device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("placeholder"),
        size: 16,
        usage: wgpu::BufferUsages::STORAGE,
        mapped_at_creation: false,
    });
    if let Some(e) = pollster::block_on(scope.pop()) {
        return Err(fail(&probe, format!("kernels do not compile here: {e}")));
    }
    probe.available = true;
    let max_binding = limits
        .max_storage_buffer_binding_size
        .min(limits.max_buffer_size);
    Ok(Arc::new(Gpu {
        device,
        queue,
        layout,
        pipelines,
        placeholder,
        probe,
        max_binding,
        uncaptured,
    }))
}

impl Gpu {
    pub(crate) fn pipeline(&self, k: Kernel) -> &wgpu::ComputePipeline {
        // Every kernel is compiled at open; the list is complete.
        let ix = Kernel::ALL.iter().position(|&x| x == k).unwrap_or(0);
        &self.pipelines[ix].1
    }

    /// Runs `f` inside a validation and an out-of-memory error scope,
    /// turning what wgpu reports into [`Error::Engine`].
    pub(crate) fn scoped<T>(
        &self,
        stage: &'static str,
        f: impl FnOnce() -> Result<T>,
    ) -> Result<T> {
        let oom = self.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let validation = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let out = f();
        let v = pollster::block_on(validation.pop());
        let o = pollster::block_on(oom.pop());
        if let Some(e) = v.or(o) {
            return Err(engine_error(stage, e.to_string()));
        }
        if let Ok(mut errors) = self.uncaptured.lock()
            && let Some(e) = errors.pop()
        {
            errors.clear();
            return Err(engine_error(stage, e));
        }
        out
    }
}

pub(crate) fn engine_error(stage: &'static str, message: impl Into<String>) -> Error {
    Error::Engine {
        engine: "gpu",
        stage,
        message: message.into(),
    }
}
