//! Renders on request: a preset (`[presets.NAME]` in pixbox.toml) of a done image is made by its
//! plugin in the sandbox on the first request, stored write-once next to the image's renditions
//! (`{key}/p/{preset}.{ext}`) and served from the store afterwards. However many ask for a missing
//! variant at once, one render runs (across processes the write-once put keeps one result); at
//! most `[renders] max_concurrent` run at once (more are refused at once, not queued); a failed
//! render is answered from memory for `failure_ttl_secs` instead of being tried on every request.
//! Signed transform URLs (`urls`) are rendered the same way, by the built-in `resize`.

pub mod urls;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::FutureExt;
use futures::future::{BoxFuture, Shared};
use serde::{Deserialize, Serialize};

use crate::imaging::Format;
use crate::jobs::{self, ImageMeta, State, codes};
use crate::sandbox::{LoadError, LoadedPlugin, OptionValue, Param, Sandbox, TransformError};
use crate::storage::{BlobStore, Bucket, GetObject, ObjectInfo, StoreError};
use urls::{Signing, Transform, UrlError};

/// Longest preset name (it is part of stored keys and URLs).
const MAX_PRESET_NAME: usize = 32;
/// Most failed renders remembered at once; past it the expired ones go, then all.
const MAX_REMEMBERED_FAILURES: usize = 10_000;
/// The longest a failed render is remembered, whatever `failure_ttl_secs` says.
const MAX_FAILURE_TTL_SECS: u64 = 86_400;
/// How long a finished render stays joinable: a request that missed the store just before the
/// result landed joins it (and reads the store) instead of rendering again.
const FLIGHT_LINGER: Duration = Duration::from_secs(2);

/// `[renders]` of pixbox.toml: renders on request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RenderSettings {
    /// Renders that may run at once in one api process; a request for another missing variant is
    /// answered `503 too-busy` with `Retry-After` at once.
    pub max_concurrent: u32,
    /// How long a failed render's answer is repeated before the variant is tried again.
    pub failure_ttl_secs: u64,
    /// Largest source image a render reads, in bytes.
    pub max_source_bytes: u64,
    /// Renders one caller (API key, else address) may start per second, in bursts of as many;
    /// over it, `429 rate-limited`. Hits and joining a running render do not count. 0: no limit.
    pub rate_per_caller: u32,
}

impl Default for RenderSettings {
    fn default() -> Self {
        RenderSettings { max_concurrent: 4, failure_ttl_secs: 30, max_source_bytes: 64 << 20, rate_per_caller: 10 }
    }
}

/// One `[presets.NAME]` of pixbox.toml: a plugin (default `resize`) and its options.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PresetConfig {
    /// A built-in plugin name or a path to a `.wasm` component; default `resize`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plugin: Option<String>,
    /// The plugin's options (`width = 600`, `mode = "cover"`, `format = "webp"` or `"auto"`).
    #[serde(flatten)]
    pub options: BTreeMap<String, OptionValue>,
}

/// The formats a `format = "auto"` preset may answer in besides the image's own, in order of
/// preference.
const AUTO_FORMATS: [Format; 2] = [Format::Avif, Format::Webp];

/// What a render runs: a loaded plugin, its options and the output format.
#[derive(Debug)]
struct Recipe {
    plugin: Arc<LoadedPlugin>,
    /// The options, `format` left out: it is chosen per request.
    params: Vec<Param>,
    format: PresetFormat,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum PresetFormat {
    /// The format of the image's stored result (its key's extension).
    Same,
    Fixed(Format),
    /// The first of [`AUTO_FORMATS`] the client accepts, else the image's own.
    Auto,
}

/// Why a variant cannot be served.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RenderError {
    #[error("no preset {name:?} (configured: {known})")]
    NoSuchPreset { name: String, known: String },
    #[error("no image with key {0:?}")]
    NotFound(String),
    /// The image's own job has not finished yet.
    #[error("{0} is still being processed")]
    Pending(String),
    /// The image's own job failed: there is nothing to render from.
    #[error("{key} could not be processed ({code})")]
    JobFailed { key: String, code: String },
    /// Every render slot is taken.
    #[error("{0} renders are running; try again shortly")]
    Busy(u32),
    /// The sandbox could not run the call now; not remembered.
    #[error("the sandbox could not run the render now: {0}")]
    Unavailable(String),
    /// The caller may not start another render now (its answer, from the api's policy).
    #[error("not admitted")]
    NotAdmitted,
    /// The plugin failed (or made something else than asked); remembered for a while.
    #[error("the render failed ({code}): {message}")]
    Failed { code: &'static str, message: String },
    /// A transform URL whose signature does not match it.
    #[error("the transform URL's signature does not match it")]
    BadSignature,
    /// A transform URL that asks for something pixbox does not serve.
    #[error("{0}")]
    InvalidTransform(String),
    /// Transform URLs are not configured.
    #[error("transform URLs are not configured")]
    NoTransforms,
    #[error(transparent)]
    Store(Arc<StoreError>),
}

impl From<StoreError> for RenderError {
    fn from(e: StoreError) -> Self {
        RenderError::Store(Arc::new(e))
    }
}

/// The `result` labels of `pixbox_renders_total` besides `ok` and a failed render's job code.
pub mod results {
    /// Served from the store.
    pub const HIT: &str = "hit";
    /// No render slot was free.
    pub const BUSY: &str = "busy";
    /// The caller may not start another render now.
    pub const RATE_LIMITED: &str = "rate-limited";
    /// Nothing to render from: no such image (or preset), or its own job is pending.
    pub const NO_SOURCE: &str = "no-source";
    /// A transform URL that is refused (its signature, or what it asks for).
    pub const REFUSED: &str = "refused";
    /// A failed render's answer, repeated from memory.
    pub const REMEMBERED: &str = "remembered";
}

type Flight = Shared<BoxFuture<'static, Result<(), RenderError>>>;

/// One variant asked for: what makes it and where it is stored.
struct Wanted {
    /// Names it in logs and metrics: the preset, or `transform`.
    label: String,
    recipe: Arc<Recipe>,
    /// The image's key.
    key: String,
    format: Format,
    /// Where the variant is (or will be) stored.
    stored: String,
}

/// The presets and what renders them.
pub struct Renderer {
    store: Arc<dyn BlobStore>,
    sandbox: Arc<Sandbox>,
    presets: BTreeMap<String, Arc<Recipe>>,
    /// Transform URLs' signing pair and the plugin that renders them (`resize`).
    transforms: Option<(Signing, Arc<LoadedPlugin>)>,
    settings: RenderSettings,
    slots: Arc<tokio::sync::Semaphore>,
    /// Renders running now, by stored key: a second request for one waits for it.
    flights: Mutex<HashMap<String, Flight>>,
    /// Failed renders, by stored key, until when they are repeated.
    failures: Mutex<HashMap<String, (Instant, RenderError)>>,
}

impl std::fmt::Debug for Renderer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Renderer").field("presets", &self.presets.keys()).field("settings", &self.settings).finish()
    }
}

impl Renderer {
    /// Loads every preset's plugin and checks its options against the plugin's `info()`.
    pub async fn load(
        store: Arc<dyn BlobStore>,
        sandbox: Arc<Sandbox>,
        configs: &BTreeMap<String, PresetConfig>,
        signing: Option<Signing>,
        settings: RenderSettings,
    ) -> Result<Renderer, LoadError> {
        let mut presets = BTreeMap::new();
        for (name, config) in configs {
            let refuse = |reason: String| LoadError::Route { prefix: format!("presets.{name}"), reason };
            let ok = (1..=MAX_PRESET_NAME).contains(&name.len())
                && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
            if !ok {
                return Err(refuse(format!("a preset name must be 1 to {MAX_PRESET_NAME} of a-z, 0-9 and -")));
            }
            let plugin = sandbox.load(config.plugin.as_deref().unwrap_or("resize")).await?;
            for option in config.options.keys() {
                if !plugin.info.params.iter().any(|p| &p.name == option) {
                    let takes: Vec<&str> = plugin.info.params.iter().map(|p| p.name.as_str()).collect();
                    return Err(refuse(format!(
                        "plugin {} has no option {option:?}; it takes: {}",
                        plugin.info.name,
                        takes.join(", ")
                    )));
                }
            }
            let format = match config.options.get("format").map(|f| f.to_string().to_ascii_lowercase()) {
                None => PresetFormat::Same,
                Some(f) if f == "same" => PresetFormat::Same,
                Some(f) if f == crate::sandbox::AUTO_FORMAT => PresetFormat::Auto,
                Some(f) => match [Format::Jpeg, Format::Png, Format::Webp, Format::Avif, Format::Gif]
                    .into_iter()
                    .find(|format| format.extension() == f || (f == "jpeg" && *format == Format::Jpeg))
                {
                    Some(format) => PresetFormat::Fixed(format),
                    None => return Err(refuse(format!("format = {f:?} is not one pixbox stores"))),
                },
            };
            let params = config
                .options
                .iter()
                .filter(|(name, _)| name.as_str() != "format")
                .map(|(name, value)| Param { name: name.clone(), value: value.to_string() })
                .collect();
            presets.insert(name.clone(), Arc::new(Recipe { plugin, params, format }));
        }
        let transforms = match signing {
            Some(signing) => Some((signing, sandbox.load("resize").await?)),
            None => None,
        };
        let slots = Arc::new(tokio::sync::Semaphore::new(settings.max_concurrent as usize));
        Ok(Renderer {
            store,
            sandbox,
            presets,
            transforms,
            settings,
            slots,
            flights: Mutex::default(),
            failures: Mutex::default(),
        })
    }

    /// The configured presets' names.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.presets.keys().map(String::as_str)
    }

    /// Whether a preset's answer depends on the client's `Accept`.
    pub fn negotiates(&self, preset: &str) -> bool {
        self.presets.get(preset).is_some_and(|p| p.format == PresetFormat::Auto)
    }

    /// Preset `name` of the image `key`: from the store, or rendered now (and stored). `accepts`
    /// says whether the client takes a format, for `format = "auto"` presets.
    /// `admit` is asked before a render is started for this request (not for a hit, nor to join
    /// a running render): `false` answers [`RenderError::NotAdmitted`].
    pub async fn preset(
        self: &Arc<Self>,
        name: &str,
        key: &str,
        accepts: impl Fn(Format) -> bool,
        admit: impl FnOnce() -> bool,
    ) -> Result<GetObject, RenderError> {
        let Some(recipe) = self.presets.get(name) else {
            let known = self.presets.keys().cloned().collect::<Vec<_>>().join(", ");
            return Err(RenderError::NoSuchPreset { name: name.into(), known });
        };
        let own = key_format(key).ok_or_else(|| RenderError::NotFound(key.into()))?;
        let format = match recipe.format {
            PresetFormat::Same => own,
            PresetFormat::Fixed(format) => format,
            PresetFormat::Auto => AUTO_FORMATS.into_iter().find(|f| accepts(*f)).unwrap_or(own),
        };
        let stored = jobs::preset_key(key, name, format);
        let wanted = Wanted { label: name.into(), recipe: recipe.clone(), key: key.into(), format, stored };
        self.variant(Arc::new(wanted), admit).await
    }

    /// Reads a transform URL's path (what follows `/t`): its signature checked against the rest.
    pub fn transform_url(&self, path: &str) -> Result<Transform, RenderError> {
        let Some((signing, _)) = &self.transforms else { return Err(RenderError::NoTransforms) };
        let path = path.strip_prefix('/').unwrap_or(path);
        let (signature, _) = path.split_once('/').ok_or(RenderError::BadSignature)?;
        let rest = &path[signature.len()..];
        let checked = signing.verify(signature, rest).map_err(|_| RenderError::BadSignature).and_then(|()| {
            urls::parse(rest).map_err(|e| match e {
                UrlError::BadSignature => RenderError::BadSignature,
                UrlError::Invalid(message) => RenderError::InvalidTransform(message),
            })
        });
        if checked.is_err() {
            crate::telemetry::variant("transform", results::REFUSED);
        }
        checked
    }

    /// The variant a checked transform URL asks for: from the store (`{key}/t/{id}.{ext}`), or
    /// rendered now by `resize` (and stored).
    pub async fn transform(
        self: &Arc<Self>,
        transform: &Transform,
        admit: impl FnOnce() -> bool,
    ) -> Result<GetObject, RenderError> {
        let Some((_, plugin)) = &self.transforms else { return Err(RenderError::NoTransforms) };
        let key = transform.key.as_str();
        let own = key_format(key).ok_or_else(|| RenderError::NotFound(key.into()))?;
        let format = transform.format.unwrap_or(own);
        let params = transform
            .options
            .iter()
            .filter(|(name, _)| name != "format")
            .map(|(name, value)| Param { name: name.clone(), value: value.clone() })
            .collect();
        let recipe = Arc::new(Recipe { plugin: plugin.clone(), params, format: PresetFormat::Fixed(format) });
        let stored = jobs::transform_key(key, &transform.id(), format);
        let wanted = Wanted { label: "transform".into(), recipe, key: key.into(), format, stored };
        self.variant(Arc::new(wanted), admit).await
    }

    /// The variant `wanted`: from the store, or made now (and stored).
    async fn variant(
        self: &Arc<Self>,
        wanted: Arc<Wanted>,
        admit: impl FnOnce() -> bool,
    ) -> Result<GetObject, RenderError> {
        if let Some(object) = jobs::found(self.store.get(Bucket::Permanent, &wanted.stored).await)? {
            crate::telemetry::variant(&wanted.label, results::HIT);
            return Ok(object);
        }
        if let Some(failure) = self.failure(&wanted.stored) {
            crate::telemetry::variant(&wanted.label, results::REMEMBERED);
            return Err(failure);
        }
        // Nothing to render from (unknown, pending, failed, or not an image's own key): answered
        // before it costs the caller a render or takes a slot.
        let info = self.source_info(&wanted.key).await?;
        self.flight(&wanted, info, admit).await?;
        // Made now, by this process or another: the stored object is what every asker gets.
        jobs::found(self.store.get(Bucket::Permanent, &wanted.stored).await)?.ok_or_else(|| RenderError::Failed {
            code: codes::RESULT_NOT_CONFIRMED,
            message: "the render's result is not in the store".into(),
        })
    }

    /// The render of `wanted`: joins the one running, or starts it when a slot is free.
    /// `info`: what is stored about the image (its own result), as [`Renderer::source_info`] read it.
    async fn flight(
        self: &Arc<Self>,
        wanted: &Arc<Wanted>,
        info: ObjectInfo,
        admit: impl FnOnce() -> bool,
    ) -> Result<(), RenderError> {
        let label = wanted.label.as_str();
        let flight = {
            let mut flights = self.flights.lock().unwrap_or_else(PoisonError::into_inner);
            match flights.get(&wanted.stored) {
                Some(flight) => flight.clone(),
                None => {
                    // The slot first: a caller refused for want of one keeps its rate.
                    let Ok(slot) = self.slots.clone().try_acquire_owned() else {
                        crate::telemetry::variant(label, results::BUSY);
                        return Err(RenderError::Busy(self.settings.max_concurrent));
                    };
                    if !admit() {
                        crate::telemetry::variant(label, results::RATE_LIMITED);
                        return Err(RenderError::NotAdmitted);
                    }
                    let (this, running) = (self.clone(), wanted.clone());
                    // A task of its own: the render finishes (and is stored) even when every
                    // client that asked has gone.
                    let task = tokio::spawn(async move {
                        let result = this.render(&running, info).await;
                        let outcome = result.as_ref().map_or_else(RenderError::label, |_| codes::OK);
                        crate::telemetry::variant(&running.label, outcome);
                        if let Err(e @ RenderError::Failed { .. }) = &result {
                            this.remember(&running.stored, e.clone());
                        }
                        drop(slot);
                        if result.is_ok() {
                            let (this, running) = (this.clone(), running.clone());
                            tokio::spawn(async move {
                                tokio::time::sleep(FLIGHT_LINGER).await;
                                this.land(&running.stored);
                            });
                        } else {
                            this.land(&running.stored);
                        }
                        result
                    });
                    let (this, stored) = (self.clone(), wanted.stored.clone());
                    let flight: Flight = async move {
                        task.await.unwrap_or_else(|e| {
                            // The task panicked before it could take its flight down.
                            this.land(&stored);
                            Err(RenderError::Failed { code: codes::TRAP, message: format!("the render stopped: {e}") })
                        })
                    }
                    .boxed()
                    .shared();
                    flights.insert(wanted.stored.clone(), flight.clone());
                    flight
                }
            }
        };
        flight.await
    }

    /// Takes the flight of `stored` down: the next request reads the store, or renders anew.
    fn land(&self, stored: &str) {
        self.flights.lock().unwrap_or_else(PoisonError::into_inner).remove(stored);
    }

    /// Renders `wanted` and stores it.
    async fn render(&self, wanted: &Wanted, info: ObjectInfo) -> Result<(), RenderError> {
        let Wanted { label, recipe, key, format, stored } = wanted;
        let (key, format) = (key.as_str(), *format);
        let (source, from) = self.source(key, info).await?;
        let media_type = source.info.meta.content_type.clone();
        let focus = ImageMeta::of(&source.info.meta).focus;
        let limit = usize::try_from(self.settings.max_source_bytes).unwrap_or(usize::MAX);
        let input = source.bytes(limit).await.map_err(|e| match e {
            StoreError::TooLarge { limit } => RenderError::Failed {
                code: codes::IMAGE_TOO_LARGE,
                message: format!("the source is larger than renders.max_source_bytes ({limit} bytes)"),
            },
            e => e.into(),
        })?;
        let takes = |name: &str| recipe.plugin.info.params.iter().any(|p| p.name == name);
        let mut params = recipe.params.clone();
        if takes("format") {
            params.push(Param { name: "format".into(), value: format.extension().into() });
        }
        // The focal point given at upload (kept with the original), as the worker passes it.
        if let Some(focus) = focus.filter(|_| takes("gravity") && !params.iter().any(|p| p.name == "gravity")) {
            params.push(Param { name: "gravity".into(), value: focus });
        }
        let output = self.sandbox.transform(&recipe.plugin, &input, &media_type, &params).await.map_err(failed)?;
        if output.header.format != format {
            return Err(RenderError::Failed {
                code: codes::INVALID_OUTPUT,
                message: format!(
                    "{label} asked for {} and the plugin made {}",
                    format.extension(),
                    output.header.format.extension()
                ),
            });
        }
        let record = ImageMeta {
            width: Some(output.header.width),
            height: Some(output.header.height),
            plugin: Some(format!("{} {}", recipe.plugin.info.name, recipe.plugin.info.version)),
            rendition: Some(label.to_string()),
            ..Default::default()
        };
        let meta = record.object(format.media_type());
        // Write-once: another process's render of the same variant may have landed first; both
        // are the same transform of the same source, and the first one stays.
        self.store.put_if_absent(Bucket::Permanent, stored, Bytes::from(output.bytes), &meta).await?;
        // A delete of the image while it rendered listed what was below its key before this
        // write, or the deletion record is there now: the variant goes with the image.
        if !jobs::wanted(&*self.store, key).await? {
            self.store.delete(Bucket::Permanent, stored).await?;
            return Err(RenderError::NotFound(key.to_string()));
        }
        let ms = output.stats.elapsed.as_millis() as u64;
        tracing::info!(key, variant = label, from, ms, "rendered on request");
        Ok(())
    }

    /// What a render of `key` starts from, and its stored key: its kept original when the route
    /// keeps them, else its largest stored rendition (which the render's log line names).
    async fn source(&self, key: &str, info: ObjectInfo) -> Result<(GetObject, String), RenderError> {
        let original = jobs::original_key(key);
        if let Some(object) = jobs::found(self.store.get(Bucket::Permanent, &original).await)? {
            return Ok((object, original));
        }
        let record = ImageMeta::of(&info.meta);
        let pixels = |m: &ImageMeta| u64::from(m.width.unwrap_or(0)) * u64::from(m.height.unwrap_or(0));
        let mut largest = (key.to_string(), pixels(&record));
        let default = record.rendition.clone().unwrap_or_default();
        for name in record.renditions.unwrap_or_default().into_iter().filter(|n| *n != default) {
            let rendition = jobs::rendition_key(key, &name);
            if let Some(info) = jobs::found(self.store.head(Bucket::Permanent, &rendition).await)? {
                let size = pixels(&ImageMeta::of(&info.meta));
                if size > largest.1 {
                    largest = (rendition, size);
                }
            }
        }
        let object = jobs::found(self.store.get(Bucket::Permanent, &largest.0).await)?
            .ok_or_else(|| RenderError::NotFound(key.into()))?;
        Ok((object, largest.0))
    }

    /// What is stored about the done image `key`: an image's own result, not one of its other
    /// renditions or format variants (those carry a rendition name but not the job's list).
    async fn source_info(&self, key: &str) -> Result<ObjectInfo, RenderError> {
        match jobs::state(&*self.store, key).await? {
            State::Done(info) => {
                let record = ImageMeta::of(&info.meta);
                if record.rendition.is_some() && record.renditions.is_none() {
                    return Err(RenderError::NotFound(key.into()));
                }
                Ok(info)
            }
            State::Pending => Err(RenderError::Pending(key.into())),
            State::Failed(failure) => Err(RenderError::JobFailed { key: key.into(), code: failure.code }),
            State::Unknown => Err(RenderError::NotFound(key.into())),
        }
    }

    /// A failed render of `stored` still remembered.
    fn failure(&self, stored: &str) -> Option<RenderError> {
        let failures = self.failures.lock().unwrap_or_else(PoisonError::into_inner);
        failures.get(stored).filter(|(until, _)| *until > Instant::now()).map(|(_, e)| e.clone())
    }

    fn remember(&self, stored: &str, error: RenderError) {
        let mut failures = self.failures.lock().unwrap_or_else(PoisonError::into_inner);
        if failures.len() >= MAX_REMEMBERED_FAILURES {
            let now = Instant::now();
            failures.retain(|_, (until, _)| *until > now);
            if failures.len() >= MAX_REMEMBERED_FAILURES {
                failures.clear();
            }
        }
        let until = Instant::now() + Duration::from_secs(self.settings.failure_ttl_secs.min(MAX_FAILURE_TTL_SECS));
        failures.insert(stored.to_string(), (until, error));
    }
}

impl RenderError {
    /// The `result` label of `pixbox_renders_total`.
    fn label(&self) -> &'static str {
        match self {
            RenderError::Failed { code, .. } => code,
            RenderError::Busy(_) | RenderError::Unavailable(_) => results::BUSY,
            RenderError::NotAdmitted => results::RATE_LIMITED,
            RenderError::Store(_) => codes::STORE_UNAVAILABLE,
            RenderError::NoSuchPreset { .. }
            | RenderError::NotFound(_)
            | RenderError::NoTransforms
            | RenderError::Pending(_) => results::NO_SOURCE,
            RenderError::BadSignature | RenderError::InvalidTransform(_) => results::REFUSED,
            RenderError::JobFailed { .. } => codes::FAILED,
        }
    }
}

/// A plugin call's failure: remembered as the render's answer, unless the host could not run the
/// call now (no pool slot, the engine), which is answered as busy and tried again next time.
fn failed(e: TransformError) -> RenderError {
    match e {
        TransformError::PoolBusy { .. } | TransformError::Unavailable(_) => RenderError::Unavailable(e.public_reason()),
        e => RenderError::Failed { code: e.code(), message: e.public_reason() },
    }
}

/// The format of an image's stored result, from its key's extension.
fn key_format(key: &str) -> Option<Format> {
    let extension = key.rsplit_once('.')?.1;
    [Format::Jpeg, Format::Png, Format::Webp, Format::Avif, Format::Gif]
        .into_iter()
        .find(|f| f.extension() == extension)
}
