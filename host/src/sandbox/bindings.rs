//! The single `bindgen!` site for the plugin contract (`wit/`), the host side of its imports
//! (`log`) and of WASI (stdio captured, nothing else granted), and the per-call host state that
//! keeps every resource a plugin can make the host hold bounded.
//!
//! Two contract versions are served: 0.1.0 (frozen, one image per call) and 0.2.0 (every
//! rendition from one call). Component-model types are structural, so one set of host types
//! (generated from 0.1.0, plus the 0.2.0 records written here) fits both; only the import names
//! carry the version.

use std::sync::{Arc, Mutex};

use wasmtime::StoreContextMut;
use wasmtime::component::{ComponentType, HasSelf, Lift, Linker, Lower, ResourceTable};

use super::bounded::{BoundedList, BoundedText, OutputBytes};
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

wasmtime::component::bindgen!({
    path: "../wit/frozen/transform-0.1.0.wit",
    world: "plugin",
    // Calls run on the async executor so a deadline can cancel them wherever they are.
    imports: { default: async },
    exports: { default: async },
});

pub use self::pixbox::transform::log::Level;
pub use self::pixbox::transform::types::ParamSpec;
use crate::telemetry::PLUGIN_LOG_TARGET;

/// How many `log` calls one transform may make before further messages are dropped (and counted),
/// so a chatty plugin cannot flood the host's logs.
pub const LOG_CALLS_PER_CALL: u32 = 256;
/// Longest `log` message kept, in bytes; only this much is ever copied out of the guest.
pub const LOG_MESSAGE_BYTES: usize = 4096;
/// Host time one call's `log` messages may take (writing them to a slow log sink); past it
/// further messages are dropped.
const LOG_TIME_PER_CALL: std::time::Duration = std::time::Duration::from_millis(100);
/// How much plugin stdout/stderr is kept per call; the rest is dropped (the plugin never notices).
pub const STDIO_CAPTURE_BYTES: usize = 16 * 1024;
/// Largest `wasi:random` request; a plugin seeds a hasher with a few bytes, never megabytes.
pub const MAX_RANDOM_BYTES: u64 = 64 * 1024;
/// Most WASI resources (streams, pollables) one call may hold at once.
pub const MAX_RESOURCES: usize = 1024;
/// Longest error message copied out of a plugin's `transform-error`.
pub const ERROR_MESSAGE_BYTES: usize = 1024;
/// Longest media type a plugin may return.
pub const MEDIA_TYPE_BYTES: usize = 255;
/// What one table element costs the host, for the per-call memory budget.
const TABLE_ELEMENT_BYTES: usize = 16;

/// The WIT `image` record as the host sends it: borrowed, so the input is copied once, straight
/// into the guest's memory.
#[derive(ComponentType, Lower)]
#[component(record)]
pub struct ImageIn<'a> {
    pub bytes: &'a [u8],
    #[component(name = "media-type")]
    pub media_type: &'a str,
}

/// The WIT `image` record as a plugin returns it: the bytes are copied out only when within the
/// output cap, the media type only up to 255 bytes.
#[derive(ComponentType, Lift)]
#[component(record)]
pub struct ImageOut {
    pub bytes: OutputBytes,
    #[component(name = "media-type")]
    pub media_type: BoundedText<MEDIA_TYPE_BYTES>,
}

/// The WIT `transform-error` as a plugin returns it, each message copied up to 1 KiB.
#[derive(ComponentType, Lift)]
#[component(variant)]
pub enum ErrorOut {
    #[component(name = "bad-input")]
    BadInput(BoundedText<ERROR_MESSAGE_BYTES>),
    #[component(name = "unsupported")]
    Unsupported(BoundedText<ERROR_MESSAGE_BYTES>),
    #[component(name = "internal")]
    Internal(BoundedText<ERROR_MESSAGE_BYTES>),
}

/// The contract versions pixbox loads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Contract {
    /// `pixbox:transform@0.1.0`: `transform` makes one image; called once per rendition.
    V0_1,
    /// `pixbox:transform@0.2.0`: `transform` makes every rendition from one decode.
    V0_2,
}

impl Contract {
    pub fn version(self) -> &'static str {
        match self {
            Contract::V0_1 => "0.1.0",
            Contract::V0_2 => "0.2.0",
        }
    }
}

/// Most renditions one call may ask for (and a plugin may return).
pub const MAX_RENDITIONS: usize = 16;
/// Longest ThumbHash kept (the format's own maximum is 25 bytes).
pub const THUMBHASH_BYTES: usize = 64;

/// 0.1.0's `transform` signature: the input borrowed (copied once, into the guest), the output
/// read with bounds (see `bounded.rs`).
pub type TransformParams<'a> = (ImageIn<'a>, &'a [Param]);
pub type TransformResults = (Result<ImageOut, ErrorOut>,);

/// 0.2.0's `rendition-request`, borrowed.
#[derive(ComponentType, Lower)]
#[component(record)]
pub struct RenditionIn<'a> {
    pub name: &'a str,
    pub options: &'a [Param],
}

/// 0.2.0's `placeholder`, read with bounds.
#[derive(ComponentType, Lift)]
#[component(record)]
pub struct PlaceholderOut {
    #[component(name = "dominant-color")]
    pub dominant_color: (u8, u8, u8),
    pub thumbhash: BoundedList<u8, THUMBHASH_BYTES>,
}

/// 0.2.0's `transformed`, read with bounds: at most [`MAX_RENDITIONS`] images, whose bytes
/// together stay within the call's output cap.
#[derive(ComponentType, Lift)]
#[component(record)]
pub struct TransformedOut {
    pub renditions: BoundedList<ImageOut, MAX_RENDITIONS>,
    pub placeholder: Option<PlaceholderOut>,
}

/// 0.2.0's `transform` signature.
pub type RenditionParams<'a> = (ImageIn<'a>, &'a [RenditionIn<'a>]);
pub type RenditionResults = (Result<TransformedOut, ErrorOut>,);

/// Everything one call's `Store` holds. A fresh one per call: no state leaks between images.
pub struct HostState {
    wasi: WasiCtx,
    table: ResourceTable,
    pub limiter: CallLimiter,
    plugin: Arc<str>,
    log_calls: u32,
    log_time: std::time::Duration,
    /// `log` messages dropped past [`LOG_CALLS_PER_CALL`] or the host time allowed for logging.
    pub logs_dropped: u32,
    /// How the plugin said the call failed, from the first `error` message starting with
    /// [`BAD_INPUT_PREFIX`] or [`UNSUPPORTED_PREFIX`]: it is about to trap (see `classify`).
    pub declared: Option<Declared>,
}

/// How a plugin that cannot return an error (a C library's fatal error handler) says, before it
/// traps, that the input is unusable: a `log` message at level `error` starting with this.
pub const BAD_INPUT_PREFIX: &str = "bad-input: ";
/// The same, for a legal input the plugin does not support (a JPEG feature its decoder lacks).
pub const UNSUPPORTED_PREFIX: &str = "unsupported: ";

/// A failure a plugin declared in a log message before trapping; the reason is bounded and
/// escaped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Declared {
    BadInput(String),
    Unsupported(String),
}

impl HostState {
    pub fn new(plugin: Arc<str>, memory_limit: usize, stdio: CapturedOutput) -> Self {
        // No preopened directories, no environment, no arguments (the defaults of an empty
        // builder); no network, said here rather than left to the builder's defaults; stdout and
        // stderr go to a bounded buffer forwarded to the host's log.
        let wasi = WasiCtx::builder()
            .stdout(stdio.clone())
            .stderr(stdio)
            .max_random_size(MAX_RANDOM_BYTES)
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .socket_addr_check(|_, _| Box::pin(async { false }))
            .build();
        let mut table = ResourceTable::new();
        table.set_max_capacity(MAX_RESOURCES);
        HostState {
            wasi,
            table,
            limiter: CallLimiter::new(memory_limit),
            plugin,
            log_calls: 0,
            log_time: Default::default(),
            logs_dropped: 0,
            declared: None,
        }
    }

    /// Host side of the contract's `log` import. The message was lifted with a bound: no more
    /// than [`LOG_MESSAGE_BYTES`] of it was read out of the guest, whatever its length and string
    /// encoding. Control characters are escaped, so a plugin can neither grow the host, nor keep
    /// it busy, nor forge log lines.
    fn log(&mut self, level: Level, message: BoundedText<LOG_MESSAGE_BYTES>) {
        self.log_calls += 1;
        // Kept even past the log limits: it decides how the call's trap is reported. Logged at
        // info, not error: anyone can upload a damaged file, and the job's failure says it.
        let mut level = level;
        if matches!(level, Level::Error) && self.declared.is_none() {
            let reason = |prefix| message.text.strip_prefix(prefix).map(|r| escape(r, ERROR_MESSAGE_BYTES));
            self.declared = reason(BAD_INPUT_PREFIX)
                .map(Declared::BadInput)
                .or_else(|| reason(UNSUPPORTED_PREFIX).map(Declared::Unsupported));
            if self.declared.is_some() {
                level = Level::Info;
            }
        }
        if self.log_calls > LOG_CALLS_PER_CALL || self.log_time > LOG_TIME_PER_CALL {
            self.logs_dropped += 1;
            return;
        }
        let started = std::time::Instant::now();
        let mut text = escape(&message.text, LOG_MESSAGE_BYTES);
        if message.cut && !text.ends_with('…') {
            text.push('…');
        }
        let plugin = &*self.plugin;
        match level {
            Level::Trace => tracing::trace!(target: PLUGIN_LOG_TARGET, plugin, "{text}"),
            Level::Debug => tracing::debug!(target: PLUGIN_LOG_TARGET, plugin, "{text}"),
            Level::Info => tracing::info!(target: PLUGIN_LOG_TARGET, plugin, "{text}"),
            Level::Warn => tracing::warn!(target: PLUGIN_LOG_TARGET, plugin, "{text}"),
            Level::Error => tracing::error!(target: PLUGIN_LOG_TARGET, plugin, "{text}"),
        }
        self.log_time += started.elapsed();
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

/// At most `max` bytes of `text` (cut at a character boundary), with control characters escaped
/// (`\n`, `\u{1b}`) so one message is always one log line.
pub fn escape(text: &str, max: usize) -> String {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let mut out = String::with_capacity(end + 16);
    for c in text[..end].chars() {
        if c.is_control() {
            out.extend(c.escape_debug());
        } else {
            out.push(c);
        }
    }
    if end < text.len() {
        out.push('…');
    }
    out
}

/// `wasi:io` works on the call's resource table.
struct HasIo;

impl wasmtime::component::HasData for HasIo {
    type Data<'a> = &'a mut ResourceTable;
}

/// WASI, interface by interface, as a transform needs it: streams and polls, clocks, random
/// bytes, stdout/stderr (captured), exit. What a toolchain's startup code imports without a
/// transform needing it is linked but empty: the environment and arguments (none), stdin (at
/// end), the terminal (none), the filesystem (no preopened directory, so no path can be opened).
/// Sockets and name lookup are linked only to refuse: every use answers `access-denied` (see
/// [`HostState::new`]); nothing else of WASI is linked, so a component importing it is refused at
/// load.
fn add_wasi(l: &mut Linker<HostState>) -> wasmtime::Result<()> {
    use wasmtime_wasi::cli::{WasiCli, WasiCliView};
    use wasmtime_wasi::clocks::{WasiClocks, WasiClocksView};
    use wasmtime_wasi::filesystem::{WasiFilesystem, WasiFilesystemView};
    use wasmtime_wasi::p2::bindings::{cli, clocks, filesystem, random, sockets};
    use wasmtime_wasi::random::{WasiRandom, WasiRandomView};
    use wasmtime_wasi::sockets::{WasiSockets, WasiSocketsView};
    use wasmtime_wasi_io::bindings::wasi::io;

    io::error::add_to_linker::<HostState, HasIo>(l, |t| &mut t.table)?;
    io::poll::add_to_linker::<HostState, HasIo>(l, |t| &mut t.table)?;
    io::streams::add_to_linker::<HostState, HasIo>(l, |t| &mut t.table)?;
    clocks::wall_clock::add_to_linker::<HostState, WasiClocks>(l, HostState::clocks)?;
    clocks::monotonic_clock::add_to_linker::<HostState, WasiClocks>(l, HostState::clocks)?;
    random::random::add_to_linker::<HostState, WasiRandom>(l, HostState::random)?;
    random::insecure::add_to_linker::<HostState, WasiRandom>(l, HostState::random)?;
    random::insecure_seed::add_to_linker::<HostState, WasiRandom>(l, HostState::random)?;
    cli::exit::add_to_linker::<HostState, WasiCli>(l, HostState::cli)?;
    cli::environment::add_to_linker::<HostState, WasiCli>(l, HostState::cli)?;
    cli::stdin::add_to_linker::<HostState, WasiCli>(l, HostState::cli)?;
    cli::stdout::add_to_linker::<HostState, WasiCli>(l, HostState::cli)?;
    cli::stderr::add_to_linker::<HostState, WasiCli>(l, HostState::cli)?;
    cli::terminal_input::add_to_linker::<HostState, WasiCli>(l, HostState::cli)?;
    cli::terminal_output::add_to_linker::<HostState, WasiCli>(l, HostState::cli)?;
    cli::terminal_stdin::add_to_linker::<HostState, WasiCli>(l, HostState::cli)?;
    cli::terminal_stdout::add_to_linker::<HostState, WasiCli>(l, HostState::cli)?;
    cli::terminal_stderr::add_to_linker::<HostState, WasiCli>(l, HostState::cli)?;
    filesystem::types::add_to_linker::<HostState, WasiFilesystem>(l, HostState::filesystem)?;
    filesystem::preopens::add_to_linker::<HostState, WasiFilesystem>(l, HostState::filesystem)?;
    sockets::instance_network::add_to_linker::<HostState, WasiSockets>(l, HostState::sockets)?;
    sockets::network::add_to_linker::<HostState, WasiSockets>(l, &Default::default(), HostState::sockets)?;
    sockets::tcp_create_socket::add_to_linker::<HostState, WasiSockets>(l, HostState::sockets)?;
    sockets::tcp::add_to_linker::<HostState, WasiSockets>(l, HostState::sockets)?;
    sockets::udp_create_socket::add_to_linker::<HostState, WasiSockets>(l, HostState::sockets)?;
    sockets::udp::add_to_linker::<HostState, WasiSockets>(l, HostState::sockets)?;
    sockets::ip_name_lookup::add_to_linker::<HostState, WasiSockets>(l, HostState::sockets)?;
    Ok(())
}

/// Adds WASI and the contract's imports to a linker.
pub fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    add_wasi(linker)?;
    // `types` has no functions; `log` is linked by hand so its message is lifted with a bound
    // (the generated binding would copy the whole string first).
    self::pixbox::transform::types::add_to_linker::<HostState, HasSelf<HostState>>(linker, |state| state)?;
    linker.instance("pixbox:transform/types@0.2.0")?;
    // The `level` enum is the same in both versions (types are structural).
    for version in ["0.1.0", "0.2.0"] {
        linker.instance(&format!("pixbox:transform/log@{version}"))?.func_wrap(
            "log",
            |mut store: StoreContextMut<'_, HostState>, (level, message): (Level, BoundedText<LOG_MESSAGE_BYTES>)| {
                store.data_mut().log(level, message);
                Ok(())
            },
        )?;
    }
    Ok(())
}

impl self::pixbox::transform::types::Host for HostState {}

/// Turns a plugin's typed error, read with bounds, into a [`super::TransformError`].
pub fn take_error(error: ErrorOut) -> super::TransformError {
    use super::TransformError as E;
    let message = |m: &BoundedText<ERROR_MESSAGE_BYTES>| escape(&m.text, ERROR_MESSAGE_BYTES);
    match error {
        ErrorOut::BadInput(m) => E::BadInput(message(&m)),
        ErrorOut::Unsupported(m) => E::Unsupported(message(&m)),
        ErrorOut::Internal(m) => E::PluginFailed(message(&m)),
    }
}

/// Turns one returned image, read with bounds, into its bytes and media type. `size` is what
/// the call returned in all (over the cap when any image was).
pub fn take_image(image: ImageOut, max_output: usize) -> Result<(Vec<u8>, String), super::TransformError> {
    use super::TransformError as E;
    match image {
        ImageOut { bytes: OutputBytes::TooLarge(size), .. } => Err(E::OutputTooLarge { size, limit: max_output }),
        ImageOut { media_type, .. } if media_type.cut => {
            Err(E::InvalidOutput(format!("media type is longer than {MEDIA_TYPE_BYTES} bytes")))
        }
        ImageOut { bytes: OutputBytes::Kept(bytes), media_type } => Ok((bytes, media_type.text)),
    }
}

/// One memory budget for a whole call: the sum of every linear memory and table the call creates
/// or grows (a component may have several), not a cap per memory. Records the high-water mark and
/// whether the cap was hit, so an allocation failure (which a Rust guest turns into an abort) is
/// reported as out-of-memory.
pub struct CallLimiter {
    pub limit: usize,
    /// Bytes of all memories and tables now.
    pub total: usize,
    pub peak: usize,
    pub exceeded: bool,
}

impl CallLimiter {
    fn new(limit: usize) -> Self {
        CallLimiter { limit, total: 0, peak: 0, exceeded: false }
    }

    fn grow(&mut self, current: usize, desired: usize) -> bool {
        let total = self.total.saturating_sub(current).saturating_add(desired);
        if total > self.limit {
            self.exceeded = true;
            return false;
        }
        self.total = total;
        self.peak = self.peak.max(total);
        true
    }
}

impl wasmtime::ResourceLimiter for CallLimiter {
    fn memory_growing(&mut self, current: usize, desired: usize, _max: Option<usize>) -> wasmtime::Result<bool> {
        Ok(self.grow(current, desired))
    }

    // The component shape the pool admits, held per call whatever the allocator: with on-demand
    // allocation (the pool's fallback) nothing else stops a component declaring thousands of
    // empty memories, each reserving address space.
    fn instances(&self) -> usize {
        super::ComponentShape::ALLOWED.core_instances as usize
    }

    fn memories(&self) -> usize {
        super::ComponentShape::ALLOWED.memories as usize
    }

    fn tables(&self) -> usize {
        super::ComponentShape::ALLOWED.tables as usize
    }

    fn table_growing(&mut self, current: usize, desired: usize, _max: Option<usize>) -> wasmtime::Result<bool> {
        Ok(self.grow(current.saturating_mul(TABLE_ELEMENT_BYTES), desired.saturating_mul(TABLE_ELEMENT_BYTES)))
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

#[cfg(test)]
mod tests {
    use super::escape;

    #[test]
    fn escape_keeps_one_line_and_cuts_at_a_character_boundary() {
        assert_eq!(escape("fine", 10), "fine");
        assert_eq!(escape("two\nlines\u{1b}[31m", 64), "two\\nlines\\u{1b}[31m");
        // "é" is two bytes: a cut inside it keeps the whole character out.
        assert_eq!(escape("aé", 2), "a…");
        assert_eq!(escape("abcdef", 3), "abc…");
    }
}
