//! The single `bindgen!` site for the plugin contract (`wit/`), and the per-call host state that
//! backs the contract's imports (`log`) and WASI (stdio captured, nothing else granted).

use std::sync::{Arc, Mutex};

use wasmtime::component::{HasSelf, Linker, ResourceTable};
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

wasmtime::component::bindgen!({
    path: "../wit",
    world: "plugin",
});

pub use self::pixbox::transform::log::Level;
pub use self::pixbox::transform::types::ParamSpec;

/// How many `log` calls one transform may make before further messages are dropped, so a chatty
/// plugin cannot flood the host's logs.
const LOG_CALLS_PER_CALL: u32 = 256;
/// Longest `log` message kept, in bytes.
const LOG_MESSAGE_BYTES: usize = 4096;
/// How much plugin stdout/stderr is kept per call; the rest is dropped (the plugin never notices).
pub const STDIO_CAPTURE_BYTES: usize = 16 * 1024;

/// Everything one call's `Store` holds. A fresh one per call: no state leaks between images.
pub struct HostState {
    wasi: WasiCtx,
    table: ResourceTable,
    pub limiter: MemoryLimiter,
    plugin: Arc<str>,
    log_calls: u32,
}

impl HostState {
    pub fn new(plugin: Arc<str>, memory_limit: usize, stdio: CapturedOutput) -> Self {
        // No preopened directories, no environment, no arguments, no network (the defaults of an
        // empty builder); stdout and stderr go to a bounded buffer forwarded to the host's log.
        let wasi = WasiCtx::builder().stdout(stdio.clone()).stderr(stdio).build();
        HostState { wasi, table: ResourceTable::new(), limiter: MemoryLimiter::new(memory_limit), plugin, log_calls: 0 }
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

impl self::pixbox::transform::types::Host for HostState {}

impl self::pixbox::transform::log::Host for HostState {
    fn log(&mut self, level: Level, mut message: String) {
        self.log_calls += 1;
        if self.log_calls > LOG_CALLS_PER_CALL {
            return;
        }
        if message.len() > LOG_MESSAGE_BYTES {
            let mut end = LOG_MESSAGE_BYTES;
            while !message.is_char_boundary(end) {
                end -= 1;
            }
            message.truncate(end);
        }
        let plugin = &*self.plugin;
        match level {
            Level::Trace => tracing::trace!(plugin, "{message}"),
            Level::Debug => tracing::debug!(plugin, "{message}"),
            Level::Info => tracing::info!(plugin, "{message}"),
            Level::Warn => tracing::warn!(plugin, "{message}"),
            Level::Error => tracing::error!(plugin, "{message}"),
        }
    }
}

/// Adds WASI and the contract's imports to a linker.
pub fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    wasmtime_wasi::p2::add_to_linker_sync(linker)?;
    Plugin::add_to_linker::<HostState, HasSelf<HostState>>(linker, |state| state)?;
    Ok(())
}

/// Caps linear memory per call and remembers the high-water mark and whether the cap was hit, so
/// an allocation failure (which a Rust guest turns into an abort) is reported as out-of-memory.
pub struct MemoryLimiter {
    pub limit: usize,
    pub peak: usize,
    pub exceeded: bool,
}

impl MemoryLimiter {
    fn new(limit: usize) -> Self {
        MemoryLimiter { limit, peak: 0, exceeded: false }
    }
}

impl wasmtime::ResourceLimiter for MemoryLimiter {
    fn memory_growing(&mut self, _current: usize, desired: usize, _max: Option<usize>) -> wasmtime::Result<bool> {
        if desired > self.limit {
            self.exceeded = true;
            return Ok(false);
        }
        self.peak = self.peak.max(desired);
        Ok(true)
    }

    fn table_growing(&mut self, _current: usize, desired: usize, _max: Option<usize>) -> wasmtime::Result<bool> {
        // Tables hold function references; no sane plugin needs a million.
        Ok(desired <= 1_000_000)
    }
}

/// A bounded, shared buffer for a plugin's stdout and stderr. Writes past the cap are accepted and
/// dropped, so a plugin that prints a lot neither fails nor grows host memory.
#[derive(Clone, Default)]
pub struct CapturedOutput(Arc<Mutex<Vec<u8>>>);

impl CapturedOutput {
    /// The captured text, lossily decoded.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

impl IsTerminal for CapturedOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for CapturedOutput {
    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

impl tokio::io::AsyncWrite for CapturedOutput {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let mut kept = self.0.lock().unwrap();
        let room = STDIO_CAPTURE_BYTES.saturating_sub(kept.len());
        kept.extend_from_slice(&buf[..buf.len().min(room)]);
        std::task::Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}
