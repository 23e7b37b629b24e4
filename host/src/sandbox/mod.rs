//! The sandbox: one wasmtime engine, plugins compiled once (and cached on disk), and a fresh,
//! limited `Store` per transform call. See `wit/transform.wit` for the contract.
//!
//! Limits per call: linear memory (`memory_limit_mib`), wall-clock time (epoch interruption),
//! output size; WASI grants no files, no network and no environment. A trap or malformed output
//! becomes a [`TransformError`]; nothing a plugin does can crash the host.

mod bindings;
mod builtin;
mod cache;
mod error;
mod routes;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use wasmtime::component::{Component, Linker};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store, Trap};

use crate::imaging;
use bindings::{CapturedOutput, HostState, Image, Plugin, PluginPre, TransformError as WitError};
pub use bindings::{Param, ParamSpec, PluginInfo};
pub use builtin::{BUILT_PLUGINS_DIR, BUILTIN_NAMES};
pub use error::{LoadError, TransformError};
pub use routes::{OptionValue, Route, RouteConfig, Routes};

/// How often the epoch ticker fires; the time budget is enforced with this granularity.
const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Sandbox limits and settings (`[sandbox]` in pixbox.toml).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SandboxSettings {
    /// Linear memory one plugin call may use, in MiB.
    pub memory_limit_mib: u64,
    /// Wall-clock budget of one plugin call, in milliseconds.
    pub time_budget_ms: u64,
    /// Largest output image a plugin may return, in MiB.
    pub max_output_mib: u64,
    /// How many plugin calls may run at once in this process (slots of the pooling allocator).
    pub max_instances: u32,
    /// Where compiled plugins are cached; default `<data_dir>/plugin-cache`.
    pub cache_dir: Option<PathBuf>,
}

impl Default for SandboxSettings {
    fn default() -> Self {
        SandboxSettings {
            memory_limit_mib: 256,
            time_budget_ms: 10_000,
            max_output_mib: 64,
            max_instances: 32,
            cache_dir: None,
        }
    }
}

impl SandboxSettings {
    pub fn memory_limit_bytes(&self) -> usize {
        usize::try_from(self.memory_limit_mib << 20).unwrap_or(usize::MAX)
    }
    pub fn time_budget(&self) -> Duration {
        Duration::from_millis(self.time_budget_ms)
    }
    pub fn max_output_bytes(&self) -> usize {
        usize::try_from(self.max_output_mib << 20).unwrap_or(usize::MAX)
    }
}

/// A plugin compiled, linked and ready to instantiate (tens of microseconds per call).
pub struct LoadedPlugin {
    /// What the plugin was loaded from: a built-in name or a path.
    pub source: Arc<str>,
    /// What the plugin says about itself.
    pub info: PluginInfo,
    pre: PluginPre<HostState>,
}

impl std::fmt::Debug for LoadedPlugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedPlugin").field("source", &self.source).field("name", &self.info.name).finish()
    }
}

/// What one call cost.
#[derive(Debug, Clone, Copy)]
pub struct CallStats {
    pub elapsed: Duration,
    /// Linear-memory high-water mark in bytes.
    pub memory_peak: usize,
}

/// A successful transform: an image whose header the host has checked.
#[derive(Debug)]
pub struct Output {
    pub bytes: Vec<u8>,
    pub header: imaging::Header,
    pub stats: CallStats,
}

/// The engine and the limits every call runs under. Cheap to share (`Arc`).
pub struct Sandbox {
    engine: Engine,
    linker: Linker<HostState>,
    settings: SandboxSettings,
}

impl Sandbox {
    /// Sets up the engine (component model, epoch interruption, pooling allocator) and starts the
    /// epoch ticker, which stops by itself when the engine is dropped.
    pub fn new(settings: SandboxSettings) -> Result<Self, LoadError> {
        let mut pool = PoolingAllocationConfig::default();
        let slots = settings.max_instances.max(1);
        // A Rust component has one memory and a few small core instances and tables (shims).
        pool.total_component_instances(slots)
            .total_memories(slots)
            .total_core_instances(slots * 8)
            .total_tables(slots * 8)
            .max_memory_size(settings.memory_limit_bytes());
        let mut config = Config::new();
        config
            .wasm_component_model(true)
            .epoch_interruption(true)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        let engine = Engine::new(&config).map_err(|e| LoadError::Engine(format!("{e:#}")))?;
        let mut linker = Linker::new(&engine);
        bindings::add_to_linker(&mut linker).map_err(|e| LoadError::Engine(format!("{e:#}")))?;

        let weak = engine.weak();
        std::thread::Builder::new()
            .name("pixbox-epoch".into())
            .spawn(move || {
                while let Some(engine) = weak.upgrade() {
                    engine.increment_epoch();
                    drop(engine);
                    std::thread::sleep(EPOCH_TICK);
                }
            })
            .map_err(|e| LoadError::Engine(format!("cannot start the epoch ticker: {e}")))?;
        Ok(Sandbox { engine, linker, settings })
    }

    pub fn settings(&self) -> &SandboxSettings {
        &self.settings
    }

    /// Loads a plugin by built-in name (`resize`) or by path to a `.wasm` component.
    pub fn load(&self, spec: &str) -> Result<Arc<LoadedPlugin>, LoadError> {
        if let Some(bytes) = builtin::bytes(spec) {
            return self.load_bytes(spec, bytes);
        }
        if !spec.contains(['/', '\\']) && !spec.ends_with(".wasm") {
            return Err(LoadError::UnknownBuiltin { name: spec.into(), known: BUILTIN_NAMES.join(", ") });
        }
        let bytes = std::fs::read(spec).map_err(|source| LoadError::Read { path: spec.into(), source })?;
        self.load_bytes(spec, &bytes)
    }

    /// Compiles (or loads from the cache), links, and asks the plugin for its `info()`.
    pub fn load_bytes(&self, source: &str, bytes: &[u8]) -> Result<Arc<LoadedPlugin>, LoadError> {
        let invalid = |e: wasmtime::Error| LoadError::Invalid { plugin: source.into(), reason: format!("{e:#}") };
        let component = match &self.settings.cache_dir {
            Some(dir) => cache::load_or_compile(&self.engine, bytes, dir),
            None => Component::new(&self.engine, bytes),
        }
        .map_err(invalid)?;
        let pre = self.linker.instantiate_pre(&component).map_err(invalid)?;
        let pre = PluginPre::new(pre).map_err(invalid)?;
        let mut plugin = LoadedPlugin {
            source: source.into(),
            info: PluginInfo {
                name: String::new(),
                version: String::new(),
                description: String::new(),
                params: vec![],
            },
            pre,
        };
        let (info, _) = self
            .call(&plugin, |p, store| p.call_info(store))
            .map_err(|source_err| LoadError::Info { plugin: source.into(), source: source_err })?;
        plugin.info = info;
        Ok(Arc::new(plugin))
    }

    /// Runs one image through a plugin under this sandbox's limits and checks the output is an
    /// image of the media type the plugin claims.
    pub fn transform(
        &self,
        plugin: &LoadedPlugin,
        input: &[u8],
        media_type: &str,
        options: &[Param],
    ) -> Result<Output, TransformError> {
        // The contract's record owns its bytes, so the input is copied once here.
        let image = Image { bytes: input.to_vec(), media_type: media_type.into() };
        let (result, stats) = self.call(plugin, |p, store| p.call_transform(store, &image, options))?;
        let output = result.map_err(|e| match e {
            WitError::BadInput(m) => TransformError::BadInput(m),
            WitError::Unsupported(m) => TransformError::Unsupported(m),
            WitError::Internal(m) => TransformError::PluginFailed(m),
        })?;
        let limit = self.settings.max_output_bytes();
        if output.bytes.len() > limit {
            return Err(TransformError::OutputTooLarge { size: output.bytes.len(), limit });
        }
        let header = imaging::probe(&output.bytes).map_err(|e| TransformError::InvalidOutput(e.to_string()))?;
        if header.format.media_type() != output.media_type {
            return Err(TransformError::InvalidOutput(format!(
                "plugin says {} but the bytes are {}",
                output.media_type,
                header.format.media_type()
            )));
        }
        Ok(Output { bytes: output.bytes, header, stats })
    }

    /// One call in a fresh store: instantiate from the pre-linked plugin, run `f`, classify traps.
    fn call<R>(
        &self,
        plugin: &LoadedPlugin,
        f: impl FnOnce(&Plugin, &mut Store<HostState>) -> wasmtime::Result<R>,
    ) -> Result<(R, CallStats), TransformError> {
        let started = Instant::now();
        let stdio = CapturedOutput::default();
        let limit = self.settings.memory_limit_bytes();
        let mut store = Store::new(&self.engine, HostState::new(plugin.source.clone(), limit, stdio.clone()));
        store.limiter(|state| &mut state.limiter);
        let budget = self.settings.time_budget();
        store.set_epoch_deadline((budget.as_millis() / EPOCH_TICK.as_millis()).max(1) as u64);
        store.epoch_deadline_trap();

        let result = match plugin.pre.instantiate(&mut store) {
            Ok(instance) => f(&instance, &mut store).map_err(|e| classify(e, &store, budget, &stdio)),
            Err(e) if e.downcast_ref::<Trap>().is_some() || store.data().limiter.exceeded => {
                Err(classify(e, &store, budget, &stdio))
            }
            Err(e) => Err(TransformError::Unavailable(format!("cannot instantiate plugin: {e:#}"))),
        };
        let printed = stdio.text();
        for line in printed.lines().filter(|l| !l.trim().is_empty()) {
            tracing::debug!(plugin = &*plugin.source, "plugin output: {line}");
        }
        let stats = CallStats { elapsed: started.elapsed(), memory_peak: store.data().limiter.peak };
        result.map(|r| (r, stats))
    }
}

/// Turns a wasmtime error from a call into the reason a user can act on.
fn classify(e: wasmtime::Error, store: &Store<HostState>, budget: Duration, stdio: &CapturedOutput) -> TransformError {
    if store.data().limiter.exceeded {
        return TransformError::OutOfMemory { limit_bytes: store.data().limiter.limit };
    }
    match e.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => TransformError::Timeout { budget },
        Some(trap) => {
            // A Rust panic prints "panicked at FILE:", its message, then a "note:" line to stderr
            // before aborting: the message is the useful part.
            let printed = stdio.text();
            let last = printed.lines().rev().find(|l| !l.trim().is_empty() && !l.starts_with("note: "));
            match last {
                Some(line) => TransformError::Trap(format!("{trap}: {}", line.trim())),
                None => TransformError::Trap(trap.to_string()),
            }
        }
        None => TransformError::Trap(format!("{e:#}")),
    }
}

/// Where compiled plugins are cached when the settings do not say.
pub fn default_cache_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("plugin-cache")
}
