//! One typed configuration tree, layered: defaults < pixbox.toml < `PIXBOX_*` environment < flags.
//!
//! Every key is documented with its default and environment variable in `pixbox.toml` at the
//! repository root. Environment names are `PIXBOX_` + the key in upper case, with the section
//! name in front for keys inside a section (`PIXBOX_WORKER_SCHEDULE` is `[worker] schedule`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::auth::AuthSettings;
use crate::imaging::{FormatSettings, PixelLimits};
use crate::render::urls::TransformUrlSettings;
use crate::render::{PresetConfig, RenderSettings};
use crate::sandbox::{RouteConfig, SandboxSettings};
pub use crate::telemetry::LogFormat;
use crate::webhooks::WebhookSettings;

/// Which parts of the service this process runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// HTTP api only.
    Api,
    /// Background worker only.
    Worker,
    /// Both in one process.
    All,
}

/// Where images are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StorageKind {
    /// Directories under `data_dir` (the embedded default).
    Fs,
    /// Amazon S3 or an S3-compatible endpoint.
    S3,
}

/// Where jobs are queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum QueueKind {
    /// A durable queue in `data_dir` (the embedded default).
    Embedded,
    /// Amazon SQS or an SQS-compatible endpoint.
    Sqs,
}

/// The whole configuration.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub listen: String,
    /// The operators' address (`/health`, `/ready`, `/metrics`) for every role; empty: none.
    pub admin_listen: String,
    pub data_dir: PathBuf,
    /// The configuration file that was read, if any (named at startup).
    #[serde(skip)]
    pub file: Option<PathBuf>,
    pub role: Role,
    pub log: String,
    pub log_format: LogFormat,
    /// Origins allowed to call the api from a browser (space-separated, or `*`); empty: no CORS.
    pub cors_origins: String,
    pub storage: StorageKind,
    pub queue: QueueKind,
    pub temp_bucket: String,
    pub permanent_bucket: String,
    pub queue_name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queue_url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dead_letter_queue_name: Option<String>,
    pub create_resources: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub endpoint_url: Option<String>,
    pub auth: AuthSettings,
    pub limits: UploadLimits,
    pub formats: FormatSettings,
    pub worker: WorkerSettings,
    pub sandbox: SandboxSettings,
    pub routes: Vec<RouteConfig>,
    /// Named transforms served at `/img/{preset}/{key}`, rendered on the first request.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub presets: BTreeMap<String, PresetConfig>,
    pub renders: RenderSettings,
    pub transform_urls: TransformUrlSettings,
    pub webhooks: WebhookSettings,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: "127.0.0.1:3000".into(),
            admin_listen: "127.0.0.1:3001".into(),
            data_dir: "./data".into(),
            file: None,
            role: Role::All,
            log: "info".into(),
            log_format: LogFormat::Text,
            cors_origins: String::new(),
            storage: StorageKind::Fs,
            queue: QueueKind::Embedded,
            temp_bucket: "pixbox-temp".into(),
            permanent_bucket: "pixbox-permanent".into(),
            queue_name: "pixbox-jobs".into(),
            queue_url: None,
            dead_letter_queue_name: None,
            create_resources: false,
            endpoint_url: None,
            auth: AuthSettings::default(),
            limits: UploadLimits::default(),
            formats: FormatSettings::default(),
            worker: WorkerSettings::default(),
            sandbox: SandboxSettings::default(),
            routes: Vec::new(),
            presets: BTreeMap::new(),
            renders: RenderSettings::default(),
            transform_urls: TransformUrlSettings::default(),
            webhooks: WebhookSettings::default(),
        }
    }
}

/// Limits on what an upload may contain (`[limits]`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UploadLimits {
    /// Largest request body, in bytes.
    pub max_request_bytes: u64,
    /// Largest single image, in bytes.
    pub max_image_bytes: u64,
    /// How long the URL of a direct upload (`POST /uploads`) works; one never completed is
    /// removed a minute after.
    pub direct_upload_ttl_secs: u64,
    /// Most images in one request.
    pub max_images: u32,
    /// Most pixels (width x height) one image may have.
    pub max_pixels: u64,
    /// Longest side one image may have, in pixels.
    pub max_side: u32,
    /// Most frames an animated GIF or WebP may have (counted from the file, nothing decoded).
    pub max_frames: u32,
    /// Most pixels an animation may have over all its frames (canvas x frames).
    pub max_animation_pixels: u64,
    /// Uploads received at once; more get 503 `too-busy`.
    pub max_concurrent_uploads: u32,
    /// Requests per second per API key (or per address without one); 0 turns the limit off.
    pub rate_per_second: u32,
    /// Requests a caller may make at once above the rate before it applies.
    pub rate_burst: u32,
    /// Seconds a client has to send its request line and headers.
    pub header_read_timeout_secs: u64,
    /// Seconds the body of a request may stall between two pieces.
    pub body_idle_timeout_secs: u64,
    /// Seconds a whole request (body included) may take.
    pub request_timeout_secs: u64,
    /// Seconds a connection may stay open with no request in flight after its first request.
    pub keep_alive_timeout_secs: u64,
    /// Connections served at once; more wait in the listen backlog.
    pub max_connections: u32,
    /// Connections one client address (an IPv6 /64) may hold at once; more are closed at accept.
    pub max_connections_per_address: u32,
    /// Serve HTTP/2 (prior knowledge, `h2c`) besides HTTP/1.1.
    pub http2: bool,
    /// `/status?wait=` long polls and `/events` streams open at once; more get 503 `too-busy`.
    pub max_watchers: u32,
    /// Long polls and event streams one caller (an API key, else a client address) may have open.
    pub max_watchers_per_caller: u32,
    /// Uploads one caller may have being received at once.
    pub max_uploads_per_caller: u32,
    /// Proxies (CIDRs, space- or comma-separated) whose `X-Forwarded-For` names the client.
    pub trusted_proxies: String,
}

impl UploadLimits {
    /// `trusted_proxies` parsed: CIDRs (or single addresses) separated by spaces or commas.
    pub fn trusted_proxy_nets(&self) -> Result<Vec<ipnet::IpNet>, String> {
        self.trusted_proxies
            .split(|c: char| c == ',' || c.is_whitespace())
            .filter(|s| !s.is_empty())
            .map(|entry| {
                entry
                    .parse::<ipnet::IpNet>()
                    .or_else(|_| entry.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                    .map_err(|_| format!("limits.trusted_proxies: {entry:?} is not a CIDR such as 10.0.0.0/8"))
            })
            .collect()
    }
}

/// The origins a browser may call the api from (`cors_origins`, parsed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CorsOrigins {
    /// No CORS headers at all (the default).
    None,
    /// `*`: any origin.
    Any,
    /// These origins, each `scheme://host[:port]`.
    List(Vec<axum::http::HeaderValue>),
}

impl Default for UploadLimits {
    fn default() -> Self {
        let pixels = PixelLimits::default();
        UploadLimits {
            max_request_bytes: 100 << 20,
            max_image_bytes: 40 << 20,
            direct_upload_ttl_secs: 900,
            max_images: 20,
            max_pixels: pixels.max_pixels,
            max_side: pixels.max_side,
            max_frames: pixels.max_frames,
            max_animation_pixels: pixels.max_animation_pixels,
            max_concurrent_uploads: 16,
            rate_per_second: 20,
            rate_burst: 100,
            header_read_timeout_secs: 10,
            body_idle_timeout_secs: 20,
            request_timeout_secs: 300,
            keep_alive_timeout_secs: 75,
            max_connections: 1024,
            max_connections_per_address: 256,
            http2: false,
            max_watchers: 256,
            max_watchers_per_caller: 16,
            max_uploads_per_caller: 4,
            trusted_proxies: String::new(),
        }
    }
}

impl UploadLimits {
    pub fn pixels(&self) -> PixelLimits {
        PixelLimits {
            max_pixels: self.max_pixels,
            max_side: self.max_side,
            max_frames: self.max_frames,
            max_animation_pixels: self.max_animation_pixels,
        }
    }
}

/// The background worker (`[worker]`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WorkerSettings {
    /// When a tick starts: a cron expression with seconds (6 fields).
    pub schedule: String,
    /// Plugin calls at once; 0 means one per CPU core. At most `sandbox.max_instances`; a route
    /// with nothing running may start a call beyond it (fair slots, see DEPLOY.md), up to the
    /// pool's size.
    pub concurrency: usize,
    /// Messages received per queue call (1..=10).
    pub batch_size: u32,
    /// How long a received job stays hidden from other workers, in seconds. Long jobs extend it.
    pub visibility_timeout_secs: u32,
    /// After this many receives a job is dead-lettered and reported failed.
    pub max_receives: u32,
    /// Longest time one tick keeps draining the queue, in seconds.
    pub tick_budget_secs: u64,
    /// On shutdown, how long jobs in flight may take to finish, in seconds; the rest are cancelled
    /// and their messages released for another worker.
    pub shutdown_grace_secs: u64,
    /// Originals and upload records in the temp bucket with no job, no failure record and older
    /// than this many seconds are removed (embedded queue only: SQS cannot be searched; use an
    /// S3 lifecycle rule, see DEPLOY.md). 0: never. Must be above `limits.request_timeout_secs`
    /// + `visibility_timeout_secs` (the longest an original can be unreferenced while in use).
    pub orphan_age_secs: u64,
}

impl Default for WorkerSettings {
    fn default() -> Self {
        WorkerSettings {
            schedule: "*/10 * * * * *".into(),
            concurrency: 0,
            batch_size: 10,
            visibility_timeout_secs: 60,
            max_receives: 5,
            tick_budget_secs: 300,
            shutdown_grace_secs: 20,
            orphan_age_secs: 24 * 3600,
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("config file {path} is not valid TOML: {source}")]
    Parse { path: String, source: Box<toml::de::Error> },
    #[error("unknown environment variable {name}: no such setting (see pixbox.toml for every key)")]
    UnknownEnv { name: String },
    #[error("environment variable {name}={value:?}: {reason}")]
    BadEnv { name: String, value: String, reason: String },
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// A route's plugin given as a relative path (`plugins/blur.wasm`) means relative to the file
/// that names it, wherever pixbox is started from; built-in names and absolute paths stay.
fn resolve_plugin_paths(file: &mut toml::Table, dir: &Path) {
    let mut entries: Vec<&mut toml::Value> = Vec::new();
    for (name, value) in file.iter_mut() {
        match (name.as_str(), value) {
            ("routes", toml::Value::Array(routes)) => entries.extend(routes.iter_mut()),
            ("presets", toml::Value::Table(presets)) => entries.extend(presets.iter_mut().map(|(_, preset)| preset)),
            _ => {}
        }
    }
    for entry in entries {
        let Some(toml::Value::String(plugin)) = entry.get_mut("plugin") else { continue };
        let is_path = plugin.contains(['/', '\\']) || plugin.ends_with(".wasm");
        if is_path && Path::new(plugin.as_str()).is_relative() {
            *plugin = dir.join(plugin.as_str()).display().to_string();
        }
    }
}

/// Sections whose keys are reachable as `PIXBOX_<SECTION>_<KEY>`.
const SECTIONS: &[&str] = &["auth", "limits", "formats", "worker", "sandbox", "renders", "transform_urls", "webhooks"];
/// `PIXBOX_*` variables that are not settings.
const NOT_SETTINGS: &[&str] = &["PIXBOX_CONFIG"];

impl Config {
    /// `cors_origins` parsed: space-separated origins, or `*` alone; empty: none.
    pub fn cors(&self) -> Result<CorsOrigins, String> {
        let origins: Vec<&str> = self.cors_origins.split_whitespace().collect();
        match origins.as_slice() {
            [] => Ok(CorsOrigins::None),
            ["*"] => Ok(CorsOrigins::Any),
            list => list
                .iter()
                .map(|origin| {
                    let ok = (origin.starts_with("https://") || origin.starts_with("http://")) && !origin.ends_with('/');
                    axum::http::HeaderValue::from_str(origin).ok().filter(|_| ok).ok_or_else(|| {
                        format!(
                            "cors_origins: {origin:?} is not an origin like https://app.example.com (or use \"*\" alone)"
                        )
                    })
                })
                .collect::<Result<_, _>>()
                .map(CorsOrigins::List),
        }
    }

    /// Loads the layers. `file` is an explicit config path; without one, `pixbox.toml` in the data
    /// directory (from the flags, `PIXBOX_DATA_DIR` or the default `./data`) is used if it exists,
    /// and nothing else: a `pixbox.toml` lying in the working directory is never read by accident.
    /// `env` is the process environment (a parameter so tests can pass their own). `flags` are
    /// the command-line overrides, applied last.
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
        flags: toml::Table,
    ) -> Result<Config, ConfigError> {
        let mut table = toml::Table::try_from(Config::default()).expect("defaults serialize");
        let defaults = table.clone();
        let env: Vec<(String, String)> = env.into_iter().collect();

        let data_dir = flags
            .get("data_dir")
            .and_then(|v| v.as_str().map(PathBuf::from))
            .or_else(|| env.iter().find(|(k, _)| k == "PIXBOX_DATA_DIR").map(|(_, v)| PathBuf::from(v)))
            .unwrap_or_else(|| Config::default().data_dir);
        let implicit = data_dir.join("pixbox.toml");
        let file = file.map(Path::to_path_buf).or(implicit.exists().then_some(implicit));
        if let Some(path) = &file {
            let text = std::fs::read_to_string(path)
                .map_err(|source| ConfigError::Read { path: path.display().to_string(), source })?;
            let mut from_file: toml::Table = text
                .parse()
                .map_err(|source| ConfigError::Parse { path: path.display().to_string(), source: Box::new(source) })?;
            resolve_plugin_paths(&mut from_file, path.parent().unwrap_or(Path::new(".")));
            merge(&mut table, from_file);
        }

        for (name, value) in env {
            let Some(key) = name.strip_prefix("PIXBOX_") else { continue };
            if NOT_SETTINGS.contains(&name.as_str()) || key.starts_with("TEST_") {
                continue;
            }
            let key = key.to_ascii_lowercase();
            let path: Vec<&str> = match SECTIONS.iter().find(|s| key.starts_with(&format!("{s}_"))) {
                Some(section) => vec![section, &key[section.len() + 1..]],
                None => vec![&key],
            };
            let value = typed_env_value(&defaults, &path, &name, &value)?;
            set(&mut table, &path, value);
        }
        merge(&mut table, flags);

        let mut config: Config =
            toml::Value::Table(table).try_into().map_err(|e: toml::de::Error| ConfigError::Invalid(e.to_string()))?;
        config.file = file;
        config.validate()?;
        Ok(config)
    }

    /// Loads from the real process environment.
    pub fn from_env(file: Option<&Path>, flags: toml::Table) -> Result<Config, ConfigError> {
        Config::load(file, std::env::vars(), flags)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if !(1..=10).contains(&self.worker.batch_size) {
            return Err(ConfigError::Invalid("worker.batch_size must be between 1 and 10".into()));
        }
        if self.worker.max_receives == 0 {
            return Err(ConfigError::Invalid("worker.max_receives must be at least 1".into()));
        }
        let l = &self.limits;
        if l.header_read_timeout_secs == 0
            || l.body_idle_timeout_secs == 0
            || l.request_timeout_secs == 0
            || l.keep_alive_timeout_secs == 0
        {
            return Err(ConfigError::Invalid("limits.*_timeout_secs must be above zero".into()));
        }
        if [
            l.max_concurrent_uploads,
            l.max_connections,
            l.max_connections_per_address,
            l.max_watchers,
            l.max_watchers_per_caller,
            l.max_uploads_per_caller,
        ]
        .contains(&0)
        {
            return Err(ConfigError::Invalid(
                "limits.max_concurrent_uploads, max_connections, max_connections_per_address, max_watchers, \
                 max_watchers_per_caller and max_uploads_per_caller must be above zero"
                    .into(),
            ));
        }
        l.trusted_proxy_nets().map_err(ConfigError::Invalid)?;
        self.cors().map_err(ConfigError::Invalid)?;
        for route in &self.routes {
            route.validate().map_err(|e| ConfigError::Invalid(format!("route {:?}: {e}", route.prefix)))?;
        }
        self.validate_webhooks()?;
        if self.sandbox.time_budget_ms == 0 || self.sandbox.memory_limit_mib == 0 || self.sandbox.max_instances == 0 {
            return Err(ConfigError::Invalid("sandbox limits must be above zero".into()));
        }
        // An original is unreferenced while its upload is still being received, and a message in
        // flight may come back only after its visibility timeout: an orphan sweep younger than
        // both could remove an original a job is about to need.
        let floor = self.limits.request_timeout_secs + u64::from(self.worker.visibility_timeout_secs);
        if self.worker.orphan_age_secs != 0 && self.worker.orphan_age_secs <= floor {
            return Err(ConfigError::Invalid(format!(
                "worker.orphan_age_secs ({}) must be above limits.request_timeout_secs + \
                 worker.visibility_timeout_secs ({floor}), or 0 (never sweep)",
                self.worker.orphan_age_secs
            )));
        }
        // Each of the worker's plugin calls takes a slot of the sandbox's pool; more calls than
        // slots would only wait for one another.
        if self.worker.concurrency > self.sandbox.max_instances as usize {
            return Err(ConfigError::Invalid(format!(
                "worker.concurrency ({}) is above sandbox.max_instances ({}), the plugin calls the sandbox can run \
                 at once: lower the concurrency or raise max_instances",
                self.worker.concurrency, self.sandbox.max_instances
            )));
        }
        Ok(())
    }

    /// Webhooks: a usable allow list, a secret when any webhook can be named, and every route's
    /// URL allowed (a private address not listed is refused here, not at the first delivery).
    fn validate_webhooks(&self) -> Result<(), ConfigError> {
        use crate::webhooks::{Allow, NamedBy, UrlError, check_url};
        let allow = Allow::parse(&self.webhooks.allow).map_err(ConfigError::Invalid)?;
        let named = self.routes.iter().any(|r| r.webhook.is_some()) || !allow.is_empty();
        if named && self.webhooks.signing_secret.len() < 32 {
            return Err(ConfigError::Invalid(UrlError::NoSecret.to_string()));
        }
        for route in &self.routes {
            if let Some(url) = &route.webhook {
                check_url(url, &allow, NamedBy::Route)
                    .map_err(|e| ConfigError::Invalid(format!("route {:?}: {e}", route.prefix)))?;
            }
        }
        if self.webhooks.timeout_ms == 0 || self.webhooks.poll_ms == 0 {
            return Err(ConfigError::Invalid("webhooks.timeout_ms and poll_ms must be above zero".into()));
        }
        Ok(())
    }

    /// Whether uploads may name webhooks: a secret, and hosts to allow.
    pub fn upload_webhooks(&self) -> bool {
        self.webhooks.signing_secret.len() >= 32 && !self.webhooks.allow.trim().is_empty()
    }

    /// Whether anything may name a webhook (so the worker delivers them).
    pub fn any_webhooks(&self) -> bool {
        self.webhooks.signing_secret.len() >= 32
    }

    /// Where compiled plugins are cached.
    pub fn plugin_cache_dir(&self) -> PathBuf {
        self.sandbox.cache_dir.clone().unwrap_or_else(|| crate::sandbox::default_cache_dir(&self.data_dir))
    }

    /// The dead-letter queue's name.
    pub fn dead_letter_queue(&self) -> String {
        self.dead_letter_queue_name.clone().unwrap_or_else(|| format!("{}-dlq", self.queue_name))
    }

    /// Worker concurrency with 0 resolved to the number of cores (at most the sandbox's pool).
    pub fn worker_concurrency(&self) -> usize {
        match self.worker.concurrency {
            0 => std::thread::available_parallelism().map_or(2, |n| n.get()).min(self.sandbox.max_instances as usize),
            n => n,
        }
    }
}

/// Parses an environment value into the type the default has at `path` (text when unknown).
fn typed_env_value(defaults: &toml::Table, path: &[&str], name: &str, value: &str) -> Result<toml::Value, ConfigError> {
    let bad = |reason: &str| ConfigError::BadEnv { name: name.into(), value: value.into(), reason: reason.into() };
    let mut current = defaults;
    for (i, part) in path.iter().enumerate() {
        match current.get(*part) {
            Some(toml::Value::Table(t)) if i + 1 < path.len() => current = t,
            Some(toml::Value::Integer(_)) => {
                return value.trim().parse().map(toml::Value::Integer).map_err(|_| bad("expected a whole number"));
            }
            Some(toml::Value::Boolean(_)) => {
                return value.trim().parse().map(toml::Value::Boolean).map_err(|_| bad("expected true or false"));
            }
            Some(toml::Value::String(_)) => return Ok(toml::Value::String(value.into())),
            Some(_) => return Err(bad("this setting can only be set in pixbox.toml")),
            // Optional keys have no default in the table; they are all text.
            None if OPTIONAL_TEXT_KEYS.contains(&path.join(".").as_str()) => {
                return Ok(toml::Value::String(value.into()));
            }
            None => return Err(ConfigError::UnknownEnv { name: name.into() }),
        }
    }
    Err(ConfigError::UnknownEnv { name: name.into() })
}

/// Keys that default to "unset" and so are missing from the serialized defaults.
const OPTIONAL_TEXT_KEYS: &[&str] = &["queue_url", "dead_letter_queue_name", "endpoint_url", "sandbox.cache_dir"];

fn set(table: &mut toml::Table, path: &[&str], value: toml::Value) {
    let (last, parents) = path.split_last().expect("non-empty path");
    let mut current = table;
    for part in parents {
        current = current
            .entry(part.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()))
            .as_table_mut()
            .expect("sections are tables");
    }
    current.insert(last.to_string(), value);
}

/// Deep-merges `over` into `base`: tables merge key by key, anything else replaces.
fn merge(base: &mut toml::Table, over: toml::Table) {
    for (key, value) in over {
        match (base.get_mut(&key), value) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge(b, o),
            (_, value) => {
                base.insert(key, value);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn layers_apply_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pixbox.toml");
        std::fs::write(&file, "listen = \"127.0.0.1:1\"\n[worker]\nbatch_size = 3\nschedule = \"* * * * * *\"\n")
            .unwrap();
        let mut flags = toml::Table::new();
        flags.insert("listen".into(), "127.0.0.1:9".into());
        let config = Config::load(
            Some(&file),
            env(&[("PIXBOX_WORKER_BATCH_SIZE", "7"), ("PIXBOX_LISTEN", "127.0.0.1:2"), ("OTHER", "x")]),
            flags,
        )
        .unwrap();
        assert_eq!(config.listen, "127.0.0.1:9", "flags win over env and file");
        assert_eq!(config.worker.batch_size, 7, "env wins over file");
        assert_eq!(config.worker.schedule, "* * * * * *", "file wins over defaults");
        assert_eq!(config.worker.max_receives, 5, "defaults fill the rest");
    }

    /// Without `--config`, only the data directory's pixbox.toml is read; a route's relative
    /// plugin path is relative to the file that names it.
    #[test]
    fn the_file_is_found_in_the_data_dir_and_plugin_paths_follow_it() {
        let dir = tempfile::tempdir().unwrap();
        let routes = "[[routes]]\nprefix = \"a/\"\nplugin = \"plugins/a.wasm\"\n\
                      [[routes]]\nprefix = \"b/\"\nplugin = \"thumbnail\"\n\
                      [[routes]]\nprefix = \"c/\"\nplugin = \"/opt/c.wasm\"\n";
        std::fs::write(dir.path().join("pixbox.toml"), routes).unwrap();
        let data_dir = dir.path().display().to_string();
        let config = Config::load(None, env(&[("PIXBOX_DATA_DIR", &data_dir)]), toml::Table::new()).unwrap();
        assert_eq!(config.file.as_deref(), Some(dir.path().join("pixbox.toml").as_path()));
        let plugins: Vec<&str> = config.routes.iter().map(|r| r.plugin.as_str()).collect();
        let relative = dir.path().join("plugins/a.wasm").display().to_string();
        assert_eq!(plugins, [relative.as_str(), "thumbnail", "/opt/c.wasm"]);
        let mut flags = toml::Table::new();
        flags.insert("data_dir".into(), dir.path().join("elsewhere").display().to_string().into());
        let config = Config::load(None, env(&[("PIXBOX_DATA_DIR", &data_dir)]), flags).unwrap();
        assert!(config.file.is_none() && config.routes.is_empty(), "the flag's data dir has no file");
    }

    #[test]
    fn mistakes_are_named() {
        let err = Config::load(None, env(&[("PIXBOX_WORKER_BATCHSIZE", "7")]), toml::Table::new()).unwrap_err();
        assert!(err.to_string().contains("PIXBOX_WORKER_BATCHSIZE"), "{err}");
        let err =
            Config::load(None, env(&[("PIXBOX_SANDBOX_TIME_BUDGET_MS", "soon")]), toml::Table::new()).unwrap_err();
        assert!(err.to_string().contains("whole number"), "{err}");
        let err = Config::load(None, env(&[("PIXBOX_STORAGE", "floppy")]), toml::Table::new()).unwrap_err();
        assert!(err.to_string().contains("floppy"), "{err}");
        let config =
            Config::load(None, env(&[("PIXBOX_ENDPOINT_URL", "http://127.0.0.1:1")]), toml::Table::new()).unwrap();
        assert_eq!(config.endpoint_url.as_deref(), Some("http://127.0.0.1:1"));
    }

    /// Every `[section]` takes its `PIXBOX_<SECTION>_<KEY>` variables: a section missing from
    /// SECTIONS would make them unknown variables, and pixbox would refuse to start.
    #[test]
    fn every_section_is_settable_from_the_environment() {
        let defaults = toml::Table::try_from(Config::default()).unwrap();
        for (key, value) in &defaults {
            if value.is_table() {
                assert!(SECTIONS.contains(&key.as_str()), "[{key}] is not in SECTIONS");
            }
        }
        let config = Config::load(None, env(&[("PIXBOX_FORMATS_HEIC", "false")]), toml::Table::new()).unwrap();
        assert!(!config.formats.heic);
    }

    /// The annotated pixbox.toml at the repository root documents every key with its default: it
    /// must parse, and change nothing.
    #[test]
    fn documented_file_matches_the_defaults() {
        let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("../pixbox.toml");
        let config = Config::load(Some(&file), Vec::new(), toml::Table::new()).unwrap();
        assert_eq!(toml::Table::try_from(config).unwrap(), toml::Table::try_from(Config::default()).unwrap());
        let text = std::fs::read_to_string(&file).unwrap();
        let defaults = toml::Table::try_from(Config::default()).unwrap();
        for (key, value) in &defaults {
            let keys: Vec<String> = match value {
                toml::Value::Table(t) => t.keys().map(|k| format!("PIXBOX_{}_{}", key, k).to_uppercase()).collect(),
                toml::Value::Array(_) => continue,
                _ => vec![format!("PIXBOX_{key}").to_uppercase()],
            };
            for env in keys {
                assert!(text.contains(&env), "pixbox.toml does not document {env}");
            }
        }
        for key in OPTIONAL_TEXT_KEYS {
            let env = format!("PIXBOX_{}", key.replace('.', "_")).to_uppercase();
            assert!(text.contains(&env), "pixbox.toml does not document {env}");
        }
    }
}
