//! Routes: which plugin (and which options, and which renditions) handles a key, chosen by the
//! longest matching prefix.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::{LoadError, LoadedPlugin, MAX_RENDITIONS, Param, RenditionRequest, Sandbox};
use crate::imaging::Format;

/// The rendition of a route that declares none: one output, made with the route's options.
pub const DEFAULT_RENDITION: &str = "default";
/// Longest rendition name (names are part of stored keys and URLs).
const MAX_RENDITION_NAME: usize = 32;
/// Names a rendition may not have: `{key}/original`, `{key}/p/...` and `{key}/t/...` are taken
/// ([`crate::jobs::original_key`], [`crate::jobs::preset_key`], [`crate::jobs::transform_key`]).
const RESERVED_RENDITION_NAMES: [&str; 3] = ["original", "p", "t"];

/// One `[[routes]]` entry of pixbox.toml.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Keys starting with this go to this route; `""` is the default route.
    pub prefix: String,
    /// A built-in plugin name (`resize`, `thumbnail`) or a path to a `.wasm` component.
    pub plugin: String,
    /// Options passed to the plugin on every call, checked against its `info()` at startup.
    #[serde(default)]
    pub options: BTreeMap<String, OptionValue>,
    /// Named outputs, each with options on top of `options` (`[routes.renditions.thumb]`); none:
    /// one output, named `default`. All are made from one plugin call.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub renditions: BTreeMap<String, BTreeMap<String, OptionValue>>,
    /// The rendition stored under the key itself and served by `/download/{key}`; required when
    /// there are several.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_rendition: Option<String>,
    /// What `format = "auto"` makes besides the fallback (the input's format), in order of
    /// preference: `avif`, `webp`. `/download` serves the first one the client's `Accept` names.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub formats: Vec<String>,
    /// Keep the original in the permanent store (`{key}/original`, never served) once the
    /// renditions exist, so presets are rendered from it; off: the original is deleted, and
    /// presets are rendered from the largest rendition.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub keep_originals: bool,
    /// A second upload of the same bytes to this route gets a key of its own whose images are the
    /// first upload's (an alias): no second job, no second copy.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dedupe: bool,
    /// Told (POST, signed) when a job of this route settles; see `[webhooks]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook: Option<String>,
}

/// The option value that asks for one output per format of the route's `formats`, plus the
/// fallback, chosen at download by `Accept`.
pub const AUTO_FORMAT: &str = "auto";
/// The formats `formats` may list.
const VARIANT_FORMATS: [Format; 2] = [Format::Avif, Format::Webp];

/// The name under which rendition `name`'s output in `format` is made and stored (`{key}/{name}.avif`).
/// Rendition names have no dot, so these never clash with them.
pub fn variant_name(name: &str, format: Format) -> String {
    format!("{name}.{}", format.extension())
}

/// Whether a made output's name is a format variant of a rendition rather than a rendition.
pub fn is_variant(name: &str) -> bool {
    name.contains('.')
}

/// The renditions a key's route makes: their names (in order) and the default one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenditionNames {
    pub names: Vec<String>,
    pub default: String,
}

impl RenditionNames {
    pub fn contains(&self, name: &str) -> bool {
        self.names.iter().any(|n| n == name)
    }
}

impl RouteConfig {
    /// A route with one output and these options.
    pub fn new(prefix: &str, plugin: &str, options: BTreeMap<String, OptionValue>) -> Self {
        RouteConfig {
            prefix: prefix.into(),
            plugin: plugin.into(),
            options,
            renditions: BTreeMap::new(),
            default_rendition: None,
            formats: Vec::new(),
            keep_originals: false,
            dedupe: false,
            webhook: None,
        }
    }

    /// The options of rendition `name` (the route's, overridden by the rendition's own).
    fn merged_options(&self, name: &str) -> BTreeMap<String, OptionValue> {
        let mut merged = self.options.clone();
        if let Some(own) = self.renditions.get(name) {
            merged.extend(own.clone());
        }
        merged
    }

    /// Whether rendition `name`'s `format` is `auto`.
    fn is_auto(&self, name: &str) -> bool {
        matches!(self.merged_options(name).get("format"), Some(OptionValue::Text(f)) if f.eq_ignore_ascii_case(AUTO_FORMAT))
    }

    /// The formats rendition `name` is also made in (empty unless its `format` is `auto`).
    pub fn variant_formats(&self, name: &str) -> Vec<Format> {
        if !self.is_auto(name) {
            return Vec::new();
        }
        self.formats
            .iter()
            .filter_map(|f| VARIANT_FORMATS.into_iter().find(|v| v.extension() == f.to_ascii_lowercase()))
            .collect()
    }

    /// Checks what can be checked without loading the plugin: rendition names and the default.
    pub fn validate(&self) -> Result<(), String> {
        if self.renditions.len() > MAX_RENDITIONS {
            return Err(format!("at most {MAX_RENDITIONS} renditions per route"));
        }
        for name in self.renditions.keys() {
            let ok = (1..=MAX_RENDITION_NAME).contains(&name.len())
                && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
            if !ok {
                return Err(format!("rendition name {name:?} must be 1 to {MAX_RENDITION_NAME} of a-z, 0-9 and -"));
            }
            if RESERVED_RENDITION_NAMES.contains(&name.as_str()) {
                return Err(format!(
                    "rendition name {name:?} is reserved (kept originals and presets are stored there)"
                ));
            }
        }
        match (&self.default_rendition, self.renditions.len()) {
            (Some(name), 0) => Err(format!("default_rendition = {name:?} but the route declares no renditions")),
            (Some(name), _) if !self.renditions.contains_key(name) => {
                Err(format!("default_rendition = {name:?} is not one of the route's renditions"))
            }
            (None, n) if n > 1 => Err("a route with several renditions needs default_rendition".into()),
            _ => Ok(()),
        }?;
        let mut seen = Vec::new();
        for f in &self.formats {
            let known = VARIANT_FORMATS.iter().any(|v| v.extension() == f.to_ascii_lowercase());
            if !known || seen.contains(&f.to_ascii_lowercase()) {
                return Err(format!("formats lists {f:?}: each of \"avif\" and \"webp\" at most once"));
            }
            seen.push(f.to_ascii_lowercase());
        }
        let auto = self.rendition_names().names.iter().any(|n| self.is_auto(n));
        if auto && self.formats.is_empty() {
            return Err("format = \"auto\" needs the route to list formats, e.g. formats = [\"avif\", \"webp\"]".into());
        }
        Ok(())
    }

    /// The renditions this route makes.
    pub fn rendition_names(&self) -> RenditionNames {
        if self.renditions.is_empty() {
            return RenditionNames { names: vec![DEFAULT_RENDITION.into()], default: DEFAULT_RENDITION.into() };
        }
        let names: Vec<String> = self.renditions.keys().cloned().collect();
        let default = self.default_rendition.clone().unwrap_or_else(|| names[0].clone());
        RenditionNames { names, default }
    }
}

/// The renditions of the configured route for `key` (longest prefix), without loading any
/// plugin: what the api needs to name them.
pub fn rendition_names(configs: &[RouteConfig], key: &str) -> RenditionNames {
    configured_route(configs, key)
        .map(RouteConfig::rendition_names)
        .unwrap_or_else(|| RouteConfig::new("", "resize", BTreeMap::new()).rendition_names())
}

/// The configured route for `key` (longest prefix), if any (else the built-in default applies).
pub fn configured_route<'a>(configs: &'a [RouteConfig], key: &str) -> Option<&'a RouteConfig> {
    configs.iter().filter(|r| key.starts_with(&r.prefix)).max_by_key(|r| r.prefix.len())
}

/// The format of what is stored under an upload's key (its extension): the one the default
/// rendition's `format` option names, else the input's, a GIF becoming PNG (what `same` gives
/// with every plugin pixbox ships, and with pixbox-kit). `key` is the key without extension.
pub fn result_format(configs: &[RouteConfig], key: &str, input: Format) -> Format {
    let format = configured_route(configs, key).and_then(|route| {
        match route.merged_options(&route.rendition_names().default).get("format") {
            Some(OptionValue::Text(f)) => Some(f.to_ascii_lowercase()),
            _ => None,
        }
    });
    match format.as_deref() {
        Some("jpeg" | "jpg") => Format::Jpeg,
        Some("png") => Format::Png,
        Some("webp" | "webp-lossless") => Format::Webp,
        Some("avif") => Format::Avif,
        Some("gif") => Format::Gif,
        _ if input == Format::Gif => Format::Png,
        // Read, never written: photos in these formats are written as JPEG.
        _ if input == Format::Jxl || input == Format::Heic => Format::Jpeg,
        _ => input,
    }
}

/// An option value as written in TOML: text, number or boolean, handed to the plugin as text.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum OptionValue {
    Text(String),
    Integer(i64),
    Float(f64),
    Bool(bool),
}

impl std::fmt::Display for OptionValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OptionValue::Text(s) => f.write_str(s),
            OptionValue::Integer(n) => write!(f, "{n}"),
            OptionValue::Float(n) => write!(f, "{n}"),
            OptionValue::Bool(b) => write!(f, "{b}"),
        }
    }
}

/// A resolved route.
#[derive(Debug)]
pub struct Route {
    pub prefix: String,
    pub plugin: Arc<LoadedPlugin>,
    /// The route's own options (what a route without renditions makes its one output with).
    pub options: Vec<Param>,
    /// Every output, with its options (the route's, overridden by the rendition's).
    pub renditions: Vec<RenditionRequest>,
    /// Index in `renditions` of the one stored under the key itself.
    pub default_rendition: usize,
    /// Whether the original is kept once the renditions exist.
    pub keep_originals: bool,
    /// Whether duplicate uploads become aliases (their keys' references are looked at when a
    /// job settles).
    pub dedupe: bool,
    /// The route's own webhook.
    pub webhook: Option<String>,
}

impl Route {
    /// The names of the renditions the route makes (not their format variants), and the default.
    pub fn rendition_names(&self) -> RenditionNames {
        let names = self.renditions.iter().map(|r| r.name.clone()).filter(|n| !is_variant(n)).collect();
        RenditionNames { names, default: self.renditions[self.default_rendition].name.clone() }
    }
}

/// All routes, longest prefix first. There is always a default (`""`) route: the built-in
/// `resize` with its defaults unless the configuration names another.
#[derive(Debug)]
pub struct Routes {
    routes: Vec<Route>,
    /// The configuration they were loaded from (the default route included).
    configs: Vec<RouteConfig>,
}

impl Routes {
    /// Loads every plugin the routes name (each once) and checks each route's options.
    pub async fn load(sandbox: &Sandbox, configs: &[RouteConfig]) -> Result<Self, LoadError> {
        let mut configs = configs.to_vec();
        if !configs.iter().any(|r| r.prefix.is_empty()) {
            configs.push(RouteConfig::new("", "resize", BTreeMap::new()));
        }
        let mut loaded: HashMap<String, Arc<LoadedPlugin>> = HashMap::new();
        let mut routes = Vec::with_capacity(configs.len());
        let kept = configs.clone();
        for config in configs {
            if routes.iter().any(|r: &Route| r.prefix == config.prefix) {
                return Err(LoadError::Route { prefix: config.prefix, reason: "prefix listed twice".into() });
            }
            let plugin = match loaded.get(&config.plugin) {
                Some(plugin) => plugin.clone(),
                None => {
                    let plugin = sandbox.load(&config.plugin).await?;
                    loaded.insert(config.plugin.clone(), plugin.clone());
                    plugin
                }
            };
            config.validate().map_err(|reason| LoadError::Route { prefix: config.prefix.clone(), reason })?;
            let all_options = config.options.keys().chain(config.renditions.values().flat_map(|o| o.keys()));
            for name in all_options {
                if !plugin.info.params.iter().any(|p| &p.name == name) {
                    return Err(LoadError::Route {
                        prefix: config.prefix,
                        reason: format!(
                            "plugin {} has no option {name:?}; it takes: {}",
                            plugin.info.name,
                            plugin.info.params.iter().map(|p| p.name.as_str()).collect::<Vec<_>>().join(", ")
                        ),
                    });
                }
            }
            let params = |options: &BTreeMap<String, OptionValue>| -> Vec<Param> {
                options.iter().map(|(name, value)| Param { name: name.clone(), value: value.to_string() }).collect()
            };
            let names = config.rendition_names();
            // Every rendition; one whose format is `auto` becomes its fallback (the input's
            // format) and one request per listed format, all in the same call.
            let mut renditions = Vec::new();
            for name in &names.names {
                let mut merged = config.merged_options(name);
                let variants = config.variant_formats(name);
                if !variants.is_empty() {
                    merged.insert("format".into(), OptionValue::Text("same".into()));
                }
                renditions.push(RenditionRequest { name: name.clone(), options: params(&merged) });
                for format in variants {
                    merged.insert("format".into(), OptionValue::Text(format.extension().into()));
                    renditions.push(RenditionRequest { name: variant_name(name, format), options: params(&merged) });
                }
            }
            if renditions.len() > MAX_RENDITIONS {
                return Err(LoadError::Route {
                    prefix: config.prefix,
                    reason: format!(
                        "{} outputs (renditions and their formats), over {MAX_RENDITIONS}",
                        renditions.len()
                    ),
                });
            }
            let default_rendition =
                renditions.iter().position(|r| r.name == names.default).expect("validated: the default exists");
            routes.push(Route {
                prefix: config.prefix,
                plugin,
                options: params(&config.options),
                renditions,
                default_rendition,
                keep_originals: config.keep_originals,
                dedupe: config.dedupe,
                webhook: config.webhook.clone(),
            });
        }
        routes.sort_by_key(|r| std::cmp::Reverse(r.prefix.len()));
        Ok(Routes { routes, configs: kept })
    }

    /// The configuration of every route, the default one included.
    pub fn configs(&self) -> &[RouteConfig] {
        &self.configs
    }

    /// The route whose prefix is the longest one `key` starts with.
    pub fn resolve(&self, key: &str) -> &Route {
        self.routes.iter().find(|r| key.starts_with(&r.prefix)).expect("the default route matches every key")
    }

    /// Every route, longest prefix first.
    pub fn iter(&self) -> impl Iterator<Item = &Route> {
        self.routes.iter()
    }
}
