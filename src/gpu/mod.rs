//! The WebGPU engine: the same Rust + WGSL runs natively through wgpu (Vulkan, Metal, DX12) and in
//! the browser through WebGPU.
//!
//! - [`GpuContext`]: the device and queue, the buffer allocator that counts every byte, readback.
//! - [`kernels`]: one pipeline per file in `shaders/`, the constants the shaders share, and the
//!   small typed parameter blocks.
//! - [`matrix`]: the weight-format seam: a [`matrix::GpuMatrix`] in int8 or int4 picks its
//!   kernels' variant.
//! - [`ops`]: one typed constructor per kernel, which binds its buffers in its shader's order.
//! - [`layout`] and [`weights`]: where each weight piece goes (matrices read together stacked in
//!   one buffer), and the buffers they are streamed into.
//! - [`forward`]: the per-chunk command list, step by step beside
//!   [`crate::model::Model::forward`].
//! - [`engine`]: buffers, submission and the public API.

pub mod cost;
pub mod engine;
pub mod forward;
pub mod kernels;
pub mod layout;
pub mod matrix;
pub mod ops;
pub mod weights;

use std::cell::Cell;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use crate::{Error, Result};

/// Numbers the contexts, so that a lost device's listener is found by its context.
#[cfg(target_arch = "wasm32")]
static NEXT_CONTEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

#[cfg(target_arch = "wasm32")]
type LostListener = Rc<dyn Fn(&str)>;

#[cfg(target_arch = "wasm32")]
thread_local! {
    /// What to tell when a context's device is lost, by context. wgpu's device-lost callback must
    /// be `Send`, which a JS function is not: the callback reaches the listener through this
    /// (wasm runs the engine on one thread).
    static LOST_LISTENERS: std::cell::RefCell<std::collections::HashMap<u64, LostListener>> = Default::default();
}

/// A device and queue plus a running count of the bytes of every buffer created through it.
/// Device errors and device loss are recorded, not panicked on: [`GpuContext::check`] turns the
/// first one into an [`Error`] for whoever uses the device next.
#[derive(Clone)]
pub struct GpuContext {
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    pub adapter_info: wgpu::AdapterInfo,
    allocated: Rc<Cell<u64>>,
    failure: Arc<Mutex<Option<String>>>,
    lost: Arc<AtomicBool>,
    #[cfg(target_arch = "wasm32")]
    id: u64,
}

impl GpuContext {
    /// Requests the default adapter, asking for its own limits (not WebGPU's defaults), so that
    /// larger buffers are used where the hardware allows.
    pub async fn new() -> Result<Self> {
        let instance = wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle());
        let adapter = instance
            .request_adapter(&wgpu::RequestAdapterOptions {
                power_preference: wgpu::PowerPreference::HighPerformance,
                ..Default::default()
            })
            .await
            .map_err(|e| Error::Gpu(format!("no GPU adapter: {e}")))?;
        let (device, queue) = adapter
            .request_device(&wgpu::DeviceDescriptor {
                label: Some("recurrentgemma"),
                // Natively, GPU timestamps for `rg bench --profile` where the adapter has them.
                required_features: if cfg!(target_arch = "wasm32") {
                    wgpu::Features::empty()
                } else {
                    adapter.features() & wgpu::Features::TIMESTAMP_QUERY
                },
                required_limits: adapter.limits(),
                experimental_features: wgpu::ExperimentalFeatures::disabled(),
                memory_hints: wgpu::MemoryHints::Performance,
                trace: wgpu::Trace::Off,
            })
            .await
            .map_err(|e| Error::Gpu(format!("requesting the device: {e}")))?;
        Ok(Self::from_device(device, queue, adapter.get_info()))
    }

    pub fn from_device(device: wgpu::Device, queue: wgpu::Queue, adapter_info: wgpu::AdapterInfo) -> Self {
        let failure = Arc::new(Mutex::new(None));
        let record = |failure: &Arc<Mutex<Option<String>>>| {
            let failure = failure.clone();
            move |message: String| {
                let mut slot = failure.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                slot.get_or_insert(message);
            }
        };
        let on_error = record(&failure);
        device.on_uncaptured_error(Arc::new(move |error: wgpu::Error| on_error(error.to_string())));
        let on_lost = record(&failure);
        let lost = Arc::new(AtomicBool::new(false));
        let lost_flag = lost.clone();
        #[cfg(target_arch = "wasm32")]
        let id = NEXT_CONTEXT.fetch_add(1, Ordering::Relaxed);
        device.set_device_lost_callback(move |reason, message| {
            lost_flag.store(true, Ordering::Relaxed);
            let message = format!("device lost ({reason:?}): {message}");
            #[cfg(target_arch = "wasm32")]
            if let Some(listener) = LOST_LISTENERS.with_borrow_mut(|listeners| listeners.remove(&id)) {
                listener(&message);
            }
            on_lost(message)
        });
        GpuContext {
            device,
            queue,
            adapter_info,
            allocated: Rc::new(Cell::new(0)),
            failure,
            lost,
            #[cfg(target_arch = "wasm32")]
            id,
        }
    }

    /// Calls `listener` once when the device is lost (at once if it is already), until
    /// [`GpuContext::forget_lost_listener`]: a page learns of the loss while idle, not only at its
    /// next call.
    #[cfg(target_arch = "wasm32")]
    pub fn on_lost(&self, listener: impl Fn(&str) + 'static) {
        if self.is_lost() {
            listener(&self.check().err().map(|e| e.to_string()).unwrap_or_default());
            return;
        }
        LOST_LISTENERS.with_borrow_mut(|listeners| listeners.insert(self.id, Rc::new(listener)));
    }

    /// Drops the device-lost listener: before a device is destroyed on purpose.
    pub fn forget_lost_listener(&self) {
        #[cfg(target_arch = "wasm32")]
        LOST_LISTENERS.with_borrow_mut(|listeners| listeners.remove(&self.id));
    }

    /// The first device error or loss since the device was made, if any.
    pub fn check(&self) -> Result<()> {
        let failure = self.failure.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        match failure.as_ref() {
            Some(message) => Err(Error::Gpu(message.clone())),
            None => Ok(()),
        }
    }

    /// Whether a device error or loss was reported: every later call fails with it ([`GpuContext::check`]),
    /// so the engine must be made again.
    pub fn has_failed(&self) -> bool {
        self.failure.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).is_some()
    }

    /// Whether the device is gone (and with it every buffer): the engine must be made again.
    pub fn is_lost(&self) -> bool {
        self.lost.load(Ordering::Relaxed)
    }

    /// Bytes of all buffers created through this context so far.
    pub fn allocated_bytes(&self) -> u64 {
        self.allocated.get()
    }

    /// A storage buffer of at least `size` bytes (rounded up to 4), zero-initialized.
    pub fn storage(&self, label: &str, size: u64) -> wgpu::Buffer {
        self.buffer(
            label,
            size,
            wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST | wgpu::BufferUsages::COPY_SRC,
        )
    }

    pub fn uniform(&self, label: &str, contents: &[u8]) -> wgpu::Buffer {
        let buffer =
            self.buffer(label, contents.len() as u64, wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST);
        self.queue.write_buffer(&buffer, 0, contents);
        buffer
    }

    pub fn buffer(&self, label: &str, size: u64, usage: wgpu::BufferUsages) -> wgpu::Buffer {
        let size = size.max(4).next_multiple_of(4);
        self.allocated.set(self.allocated.get() + size);
        self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size,
            usage,
            mapped_at_creation: false,
        })
    }

    /// Copies `size` bytes at `offset` of `source` back to the host through `staging` (a
    /// MAP_READ buffer at least `size` long), waiting for the GPU.
    pub async fn read(&self, source: &wgpu::Buffer, offset: u64, size: u64, staging: &wgpu::Buffer) -> Result<Vec<u8>> {
        let size = size.next_multiple_of(4);
        let mut encoder = self.device.create_command_encoder(&Default::default());
        encoder.copy_buffer_to_buffer(source, offset, staging, 0, size);
        self.queue.submit([encoder.finish()]);
        let (sender, receiver) = futures_channel::oneshot::channel();
        staging.map_async(wgpu::MapMode::Read, ..size, move |result| {
            let _ = sender.send(result);
        });
        // Natively the callback runs inside poll; on the web the browser runs it and poll is a no-op.
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| Error::Gpu(format!("waiting for the GPU: {e}")))?;
        receiver
            .await
            .map_err(|_| Error::Gpu("readback was cancelled".into()))?
            .map_err(|e| Error::Gpu(format!("reading back: {e}")))?;
        let bytes = staging.get_mapped_range(..size).map_err(|e| Error::Gpu(format!("reading back: {e}")))?.to_vec();
        staging.unmap();
        self.check()?;
        Ok(bytes)
    }
}
