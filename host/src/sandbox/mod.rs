//! The sandbox: one wasmtime engine, plugins compiled once (and cached on disk), and a fresh,
//! limited `Store` per transform call. See `wit/transform.wit` for the contract.
//!
//! Limits per call: linear memory (`memory_limit_mib`), wall-clock time (epoch interruption),
//! output size; WASI grants no files, no network and no environment. A trap or malformed output
//! becomes a [`TransformError`]; nothing a plugin does can crash the host.

mod bindings;
mod bounded;
mod builtin;
mod cache;
mod error;
mod routes;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use wasmtime::component::{Component, ComponentExportIndex, Instance, InstancePre, Linker};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store, Trap, UpdateDeadline};

use crate::imaging;
use crate::telemetry::PLUGIN_LOG_TARGET;
use bindings::{
    CapturedOutput, HostState, ImageIn, LOG_CALLS_PER_CALL, RenditionIn, RenditionParams, RenditionResults,
    TransformParams, TransformResults,
};
pub use bindings::{Contract, MAX_RENDITIONS, Param, ParamSpec, PluginInfo};
pub use builtin::{BUILT_PLUGINS_DIR, BUILTIN_NAMES};
pub use error::{LoadError, TransformError};
pub use routes::{
    AUTO_FORMAT, DEFAULT_RENDITION, OptionValue, RenditionNames, Route, RouteConfig, Routes, configured_route,
    is_variant, rendition_names, result_format, variant_name,
};

/// Guard pages after each linear memory when calls allocate their own (the pool's fallback):
/// small, so a call reserves little more than its memory limit; bounds checks do the rest.
const ON_DEMAND_GUARD: u64 = 64 << 10;
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
    /// Output a plugin may return for one image, all its renditions together, in MiB.
    pub max_output_mib: u64,
    /// How many plugin calls may run at once in this process (slots of the pooling allocator).
    pub max_instances: u32,
    /// MiB of each pool slot's linear memory kept mapped between calls (zeroed instead of returned
    /// to the kernel), so the next call does not page-fault them in again: 5-20 % faster calls on
    /// 2-6 MP photos (a 4 MP photo to 1024 px grows its memory to 12-14 MiB). No more is kept than a
    /// call grew its memory to, and calls reuse the least recently used slot of their own plugin,
    /// so resident memory grows by up to this x (the most calls run at once) for each plugin
    /// loaded, never past `max_instances` x this. 128 by default (an 18 MP progressive JPEG's
    /// decode grows to ~100 MiB); 0 returns every page to the kernel after each call.
    pub keep_resident_mib: u64,
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
            keep_resident_mib: 128,
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
    /// Which version of the contract it implements.
    pub contract: Contract,
    pre: InstancePre<HostState>,
    transform: ComponentExportIndex,
}

impl LoadedPlugin {
    /// The plugin's own name once it is loaded, its source (path or built-in name) while loading.
    pub fn label(&self) -> Arc<str> {
        if self.info.name.is_empty() { self.source.clone() } else { Arc::from(self.info.name.as_str()) }
    }
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
    /// High-water mark of all the call's linear memories and tables, in bytes.
    pub memory_peak: usize,
    /// `log` messages the host dropped (over the per-call count or time allowance).
    pub logs_dropped: u32,
}

/// A successful transform: an image whose header the host has checked.
#[derive(Debug)]
pub struct Output {
    pub bytes: Vec<u8>,
    pub header: imaging::Header,
    pub stats: CallStats,
}

/// One output asked of a plugin: a named rendition with its options.
#[derive(Debug, Clone)]
pub struct RenditionRequest {
    pub name: String,
    pub options: Vec<Param>,
}

/// One rendition made: an image whose header the host has checked.
#[derive(Debug)]
pub struct Image {
    pub bytes: Vec<u8>,
    pub header: imaging::Header,
}

/// Placeholder data a plugin computed from the decoded input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placeholder {
    pub dominant_color: (u8, u8, u8),
    pub thumbhash: Vec<u8>,
}

/// Every rendition of one image, in request order.
#[derive(Debug)]
pub struct Rendered {
    pub images: Vec<Image>,
    pub placeholder: Option<Placeholder>,
    /// The calls together: time summed, memory high-water the largest.
    pub stats: CallStats,
    /// How many plugin calls it took (1 for a 0.2.0 plugin, one per rendition for 0.1.0).
    pub calls: u32,
}

/// The engine and the limits every call runs under. Cheap to share (`Arc`).
pub struct Sandbox {
    engine: Engine,
    linker: Linker<HostState>,
    settings: SandboxSettings,
    /// One permit per slot of the pooling allocator: a call waits here for a free slot (at most
    /// one time budget, the longest any call holds one) instead of failing to instantiate.
    pool: tokio::sync::Semaphore,
}

impl Sandbox {
    /// Sets up the engine (component model, epoch interruption, pooling allocator) and starts the
    /// epoch ticker, which stops by itself when the engine is dropped.
    pub fn new(settings: SandboxSettings) -> Result<Self, LoadError> {
        let mut pool = PoolingAllocationConfig::default();
        let slots = settings.max_instances.max(1);
        let per = ComponentShape::ALLOWED;
        pool.total_component_instances(slots)
            .total_memories(slots * per.memories)
            .total_core_instances(slots * per.core_instances)
            .total_tables(slots * per.tables)
            .total_stacks(slots)
            .max_core_instances_per_component(per.core_instances)
            .max_memories_per_component(per.memories)
            .max_tables_per_component(per.tables)
            .max_memories_per_module(per.memories)
            .max_tables_per_module(per.tables)
            .table_elements(per.table_elements)
            .max_memory_size(settings.memory_limit_bytes());
        // A fresh linear memory costs a page fault per 4 KiB touched; zeroing pages a call used is
        // cheaper than faulting them in again, at the price of keeping them resident.
        pool.linear_memory_keep_resident(usize::try_from(settings.keep_resident_mib << 20).unwrap_or(usize::MAX));
        // Reuse the least recently used slot of the same plugin rather than a never-used one, so the
        // slots ever used (and the memory they keep resident) follow the peak number of calls at
        // once per plugin instead of creeping towards `max_instances` (wasmtime's default).
        pool.max_unused_warm_slots(0);
        let mut config = Config::new();
        config
            .wasm_component_model(true)
            .epoch_interruption(true)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        let engine = match Engine::new(&config) {
            Ok(engine) => engine,
            // Only a failed reservation falls back; any other engine error is reported as is.
            Err(e) if format!("{e:#}").contains("failed to reserve") => {
                // The pool reserves address space for every slot up front (gigabytes of it,
                // never touched); under `ulimit -v` or on a small VM that fails. Each call then
                // allocates its own memory, reserving only what its limit allows.
                tracing::warn!(
                    slots,
                    "the pooling allocator cannot reserve its address space ({e:#}); plugin calls will \
                     allocate their memory one by one instead (slower instantiation, same limits)"
                );
                config
                    .allocation_strategy(InstanceAllocationStrategy::OnDemand)
                    .memory_reservation(settings.memory_limit_bytes() as u64)
                    .memory_guard_size(ON_DEMAND_GUARD)
                    .memory_reservation_for_growth(0);
                Engine::new(&config).map_err(|e| LoadError::Engine(format!("{e:#}")))?
            }
            Err(e) => return Err(LoadError::Engine(format!("{e:#}"))),
        };
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
        let pool = tokio::sync::Semaphore::new(slots as usize);
        Ok(Sandbox { engine, linker, settings, pool })
    }

    pub fn settings(&self) -> &SandboxSettings {
        &self.settings
    }

    /// Loads a plugin by built-in name (`resize`) or by path to a `.wasm` component.
    pub async fn load(&self, spec: &str) -> Result<Arc<LoadedPlugin>, LoadError> {
        if let Some(bytes) = builtin::bytes(spec) {
            return self.load_bytes(spec, bytes.to_vec()).await;
        }
        if !spec.contains(['/', '\\']) && !spec.ends_with(".wasm") {
            return Err(LoadError::UnknownBuiltin { name: spec.into(), known: BUILTIN_NAMES.join(", ") });
        }
        let bytes = tokio::fs::read(spec).await.map_err(|source| {
            // `cargo component build` writes under wasm32-wasip1 even for a wasip2 world.
            let wasip1 = spec.replace("wasm32-wasip2", "wasm32-wasip1");
            let path = if wasip1 != spec && Path::new(&wasip1).exists() {
                format!("{spec} (there is a build at {wasip1}: `cargo component build` writes there)")
            } else {
                spec.into()
            };
            LoadError::Read { path, source }
        })?;
        self.load_bytes(spec, bytes).await
    }

    /// Compiles (or loads from the cache), links, checks the exports' types and the component's
    /// shape against the pool's limits, and asks the plugin for its `info()`.
    pub async fn load_bytes(&self, source: &str, bytes: Vec<u8>) -> Result<Arc<LoadedPlugin>, LoadError> {
        let invalid = |e: wasmtime::Error| LoadError::Invalid { plugin: source.into(), reason: format!("{e:#}") };
        // Compiling takes from milliseconds to seconds: keep it off the async threads.
        let (engine, cache_dir, label) = (self.engine.clone(), self.settings.cache_dir.clone(), source.to_string());
        let component = tokio::task::spawn_blocking(move || match cache_dir {
            Some(dir) => cache::load_or_compile(&engine, &bytes, &dir, &label),
            None => Component::new(&engine, &bytes),
        })
        .await
        .map_err(|e| LoadError::Engine(format!("compiling task: {e}")))?
        .map_err(|e| LoadError::Invalid { plugin: source.into(), reason: ComponentShape::explain(e) })?;
        let transform = component
            .get_export_index(None, "transform")
            .ok_or_else(|| LoadError::Invalid { plugin: source.into(), reason: "it exports no `transform`".into() })?;
        let pre = self.linker.instantiate_pre(&component).map_err(invalid)?;
        let mut plugin = LoadedPlugin {
            source: source.into(),
            info: PluginInfo {
                name: String::new(),
                version: String::new(),
                description: String::new(),
                params: vec![],
            },
            contract: Contract::V0_2,
            pre,
            transform,
        };
        let (found, _) = self
            .call(&plugin, async |store, instance| {
                // The `transform` export's type says the contract version; checked now rather
                // than on the first image.
                let v2 =
                    instance.get_typed_func::<RenditionParams<'_>, RenditionResults>(&mut *store, &plugin.transform);
                let contract = match v2 {
                    Ok(_) => Contract::V0_2,
                    Err(v2) => match instance
                        .get_typed_func::<TransformParams<'_>, TransformResults>(&mut *store, &plugin.transform)
                    {
                        Ok(_) => Contract::V0_1,
                        Err(_) => {
                            let reason = format!(
                                "its `transform` export matches neither pixbox:transform@0.2.0 nor @0.1.0: {v2:#}"
                            );
                            return Ok(Err(reason));
                        }
                    },
                };
                let info = instance.get_typed_func::<(), (PluginInfo,)>(&mut *store, "info")?;
                let (info,) = info.call_async(&mut *store, ()).await?;
                Ok(Ok((contract, info)))
            })
            .await
            .map_err(|e| LoadError::Info { plugin: source.into(), source: e })?;
        let (contract, info) = found.map_err(|reason| LoadError::Invalid { plugin: source.into(), reason })?;
        plugin.contract = contract;
        plugin.info = info;
        Ok(Arc::new(plugin))
    }

    /// Runs one image through a plugin under this sandbox's limits and checks the output is an
    /// image of the media type the plugin claims. The input is copied once, straight into the
    /// guest; the output is copied out only when it is within the output cap.
    pub async fn transform(
        &self,
        plugin: &LoadedPlugin,
        input: &[u8],
        media_type: &str,
        options: &[Param],
    ) -> Result<Output, TransformError> {
        let request = RenditionRequest { name: "default".into(), options: options.to_vec() };
        let rendered = self.render(plugin, input, media_type, std::slice::from_ref(&request)).await?;
        let image = rendered.images.into_iter().next().expect("one image per request");
        Ok(Output { bytes: image.bytes, header: image.header, stats: rendered.stats })
    }

    /// Makes every requested rendition of one image: one call of a 0.2.0 plugin (one decode), or
    /// one call per rendition of a 0.1.0 plugin. Each image is checked as [`Sandbox::transform`]
    /// checks its one; every image of the job shares the output cap.
    pub async fn render(
        &self,
        plugin: &LoadedPlugin,
        input: &[u8],
        media_type: &str,
        requests: &[RenditionRequest],
    ) -> Result<Rendered, TransformError> {
        let started = Instant::now();
        let result = async {
            if requests.is_empty() || requests.len() > MAX_RENDITIONS {
                return Err(TransformError::Unsupported(format!(
                    "{} renditions asked for; one call makes 1 to {MAX_RENDITIONS}",
                    requests.len()
                )));
            }
            let limit = self.settings.max_output_bytes();
            // One output budget for the job, whichever contract: a 0.1.0 plugin's renditions (one
            // call each) share it as a 0.2.0 plugin's (one call) do.
            let budget = std::cell::Cell::new(limit);
            let lifted = bounded::OUTPUT_LIMIT.scope(budget, self.calls(plugin, input, media_type, requests));
            let (raw, placeholder, stats, calls) = lifted.await?;
            // Sizes first: an image over the cap fails the call whatever comes before it.
            let raw = raw.into_iter().map(|image| bindings::take_image(image, limit)).collect::<Result<Vec<_>, _>>()?;
            if raw.len() != requests.len() {
                return Err(TransformError::InvalidOutput(format!(
                    "asked for {} renditions, the plugin returned {}",
                    requests.len(),
                    raw.len()
                )));
            }
            let mut images = Vec::with_capacity(raw.len());
            for (bytes, out_type) in raw {
                let header = imaging::probe_output(&bytes).map_err(|e| TransformError::InvalidOutput(e.to_string()))?;
                if header.format.media_type() != out_type {
                    return Err(TransformError::InvalidOutput(format!(
                        "plugin says {out_type} but the bytes are {}",
                        header.format.media_type()
                    )));
                }
                images.push(Image { bytes, header });
            }
            Ok(Rendered { images, placeholder, stats, calls })
        }
        .await;
        let (label, peak) = match &result {
            Ok(rendered) => (crate::jobs::codes::OK, Some(rendered.stats.memory_peak)),
            Err(e) => (e.code(), None),
        };
        crate::telemetry::sandbox_call(&plugin.info.name, label, started.elapsed(), peak);
        result
    }

    /// The plugin calls of one job, within an [`bounded::OUTPUT_LIMIT`] scope: the images as
    /// lifted, the placeholder, the calls' stats and how many calls it took.
    async fn calls(
        &self,
        plugin: &LoadedPlugin,
        input: &[u8],
        media_type: &str,
        requests: &[RenditionRequest],
    ) -> Result<(Vec<bindings::ImageOut>, Option<Placeholder>, CallStats, u32), TransformError> {
        Ok(match plugin.contract {
            Contract::V0_2 => {
                let borrowed: Vec<RenditionIn<'_>> =
                    requests.iter().map(|r| RenditionIn { name: &r.name, options: &r.options }).collect();
                let (out, stats) = self
                    .call(plugin, async |store, instance| {
                        let func = instance
                            .get_typed_func::<RenditionParams<'_>, RenditionResults>(&mut *store, &plugin.transform)?;
                        let (out,) =
                            func.call_async(&mut *store, (ImageIn { bytes: input, media_type }, &borrowed)).await?;
                        Ok(out)
                    })
                    .await?;
                let out = out.map_err(bindings::take_error)?;
                let placeholder =
                    out.placeholder.map(|p| Placeholder { dominant_color: p.dominant_color, thumbhash: p.thumbhash.0 });
                (out.renditions.0, placeholder, stats, 1)
            }
            Contract::V0_1 => {
                let mut images = Vec::with_capacity(requests.len());
                let mut total = CallStats { elapsed: Duration::ZERO, memory_peak: 0, logs_dropped: 0 };
                for request in requests {
                    let (out, stats) = self
                        .call(plugin, async |store, instance| {
                            let func = instance.get_typed_func::<TransformParams<'_>, TransformResults>(
                                &mut *store,
                                &plugin.transform,
                            )?;
                            let (out,) = func
                                .call_async(&mut *store, (ImageIn { bytes: input, media_type }, &request.options[..]))
                                .await?;
                            Ok(out)
                        })
                        .await?;
                    let image = out.map_err(bindings::take_error)?;
                    // The job's budget is spent: the later renditions would be refused anyway.
                    let spent = matches!(image.bytes, bounded::OutputBytes::TooLarge(_));
                    images.push(image);
                    total.elapsed += stats.elapsed;
                    total.memory_peak = total.memory_peak.max(stats.memory_peak);
                    total.logs_dropped += stats.logs_dropped;
                    if spent {
                        break;
                    }
                }
                let calls = images.len() as u32;
                (images, None, total, calls)
            }
        })
    }

    /// One call in a fresh store, under the time budget: instantiate from the pre-linked plugin,
    /// run `f`, classify traps. The deadline holds wherever the call is: guest code yields to the
    /// executor at every epoch tick, host calls (WASI sleeps, polls) are async, and the timeout
    /// drops the whole call, which cancels it.
    async fn call<R>(
        &self,
        plugin: &LoadedPlugin,
        f: impl AsyncFnOnce(&mut Store<HostState>, Instance) -> wasmtime::Result<R>,
    ) -> Result<(R, CallStats), TransformError> {
        // A pool slot first: the call's time budget starts once it has one. Declared before the
        // store, so it is released after the store (and its instance) is gone.
        let waiting = Instant::now();
        let _slot = match tokio::time::timeout(self.settings.time_budget(), self.pool.acquire()).await {
            Ok(slot) => slot.expect("the pool semaphore is never closed"),
            Err(_) => return Err(TransformError::PoolBusy { waited: waiting.elapsed() }),
        };
        crate::telemetry::pool_wait(waiting.elapsed());
        let started = Instant::now();
        let stdio = CapturedOutput::default();
        let limit = self.settings.memory_limit_bytes();
        // Log lines name the plugin as it names itself; before `info()` answered, by its source.
        let label = plugin.label();
        let mut store = Store::new(&self.engine, HostState::new(label.clone(), limit, stdio.clone()));
        store.limiter(|state| &mut state.limiter);
        let budget = self.settings.time_budget();
        store.set_epoch_deadline(1);
        // Yield to the executor every tick so the timeout below can fire; past the budget (if the
        // call is somehow still polled) trap instead.
        store.epoch_deadline_callback(move |_| {
            if started.elapsed() >= budget { Err(Trap::Interrupt.into()) } else { Ok(UpdateDeadline::Yield(1)) }
        });

        let run = async {
            match plugin.pre.instantiate_async(&mut store).await {
                Ok(instance) => f(&mut store, instance).await.map_err(|e| (e, true)),
                Err(e) => Err((e, false)),
            }
        };
        let result = match tokio::time::timeout(budget, run).await {
            Err(_elapsed) => Err(TransformError::Timeout { budget }),
            Ok(Ok(r)) => Ok(r),
            Ok(Err((e, _))) if e.downcast_ref::<Trap>() == Some(&Trap::Interrupt) => {
                Err(TransformError::Timeout { budget })
            }
            Ok(Err((e, instantiated))) => {
                if instantiated || e.downcast_ref::<Trap>().is_some() || store.data().limiter.exceeded {
                    Err(classify(e, &store, &stdio))
                } else {
                    Err(TransformError::Unavailable(format!("cannot instantiate plugin: {e:#}")))
                }
            }
        };
        let printed = stdio.text();
        for line in printed.lines().filter(|l| !l.trim().is_empty()) {
            tracing::debug!(target: PLUGIN_LOG_TARGET, plugin = &*label, "output: {}", bindings::escape(line, 1024));
        }
        let dropped = store.data().logs_dropped;
        if dropped > 0 {
            tracing::warn!(
                target: PLUGIN_LOG_TARGET,
                plugin = &*label,
                dropped,
                "plugin log messages dropped (over {LOG_CALLS_PER_CALL} per call, or over the host time for logging)"
            );
        }
        let stats =
            CallStats { elapsed: started.elapsed(), memory_peak: store.data().limiter.peak, logs_dropped: dropped };
        result.map(|r| (r, stats))
    }
}

/// The shape of a component the pool admits, checked when a plugin is loaded, so a component
/// cannot multiply its share of the pool by declaring many memories or tables. A Rust
/// `wasm32-wasip2` component (and a C one linked by the same `wasm-component-ld`) has 3 core
/// instances (main module, import shim, fixup), 1 memory and 2 tables (measured on pixbox's own
/// plugins, which load with exactly that); the allowance is that plus one of each for a
/// WASI adapter module (`cargo component` builds carry one).
#[derive(Debug, Clone, Copy)]
pub struct ComponentShape {
    pub core_instances: u32,
    pub memories: u32,
    pub tables: u32,
    pub table_elements: usize,
}

impl ComponentShape {
    pub const ALLOWED: ComponentShape =
        ComponentShape { core_instances: 4, memories: 2, tables: 3, table_elements: 100_000 };

    /// Says which pool limit a refused component ran into, in the user's terms.
    fn explain(e: wasmtime::Error) -> String {
        let text = format!("{e:#}");
        if text.contains("component parser") {
            format!(
                "it is a core WebAssembly module, not a component: build it with `cargo build --target \
                 wasm32-wasip2` (wasm32-wasip1 and wasm32-unknown-unknown builds give core modules; \
                 `cargo component build` gives a component, under target/wasm32-wasip1/): {text}"
            )
        } else if text.contains("pooling allocator") {
            let a = Self::ALLOWED;
            format!(
                "it is larger than a plugin may be ({} core instances, {} memories, {} tables of {} elements \
                 at most): {text}",
                a.core_instances, a.memories, a.tables, a.table_elements
            )
        } else {
            text
        }
    }
}

/// Turns a wasmtime error from a call into the reason a user can act on.
fn classify(e: wasmtime::Error, store: &Store<HostState>, stdio: &CapturedOutput) -> TransformError {
    if store.data().limiter.exceeded {
        return TransformError::OutOfMemory { limit_bytes: store.data().limiter.limit };
    }
    // The plugin said why before it trapped: its input is unusable, not the plugin broken.
    if let (Some(_), Some(declared)) = (e.downcast_ref::<Trap>(), &store.data().declared) {
        return match declared {
            bindings::Declared::BadInput(reason) => TransformError::BadInput(reason.clone()),
            bindings::Declared::Unsupported(reason) => TransformError::Unsupported(reason.clone()),
        };
    }
    match e.downcast_ref::<Trap>() {
        Some(trap) => {
            // A Rust panic prints "panicked at FILE:", its message, then a "note:" line to stderr
            // before aborting: the message is the useful part.
            let printed = stdio.text();
            let last = printed.lines().rev().find(|l| !l.trim().is_empty() && !l.starts_with("note: "));
            match last {
                Some(line) => TransformError::Trap(format!("{trap}: {}", bindings::escape(line.trim(), 1024))),
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
