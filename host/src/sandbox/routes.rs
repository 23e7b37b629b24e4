//! Routes: which plugin (and which options) handles a key, chosen by the longest matching prefix.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::{LoadError, LoadedPlugin, Param, Sandbox};

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
    pub options: Vec<Param>,
}

/// All routes, longest prefix first. There is always a default (`""`) route: the built-in
/// `resize` with its defaults unless the configuration names another.
#[derive(Debug)]
pub struct Routes {
    routes: Vec<Route>,
}

impl Routes {
    /// Loads every plugin the routes name (each once) and checks each route's options.
    pub async fn load(sandbox: &Sandbox, configs: &[RouteConfig]) -> Result<Self, LoadError> {
        let mut configs = configs.to_vec();
        if !configs.iter().any(|r| r.prefix.is_empty()) {
            configs.push(RouteConfig { prefix: String::new(), plugin: "resize".into(), options: BTreeMap::new() });
        }
        let mut loaded: HashMap<String, Arc<LoadedPlugin>> = HashMap::new();
        let mut routes = Vec::with_capacity(configs.len());
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
            for name in config.options.keys() {
                if !plugin.info.params.iter().any(|p| &p.name == name) {
                    return Err(LoadError::Route {
                        prefix: config.prefix,
                        reason: format!("plugin {} has no option {name:?}", plugin.info.name),
                    });
                }
            }
            let options = config
                .options
                .iter()
                .map(|(name, value)| Param { name: name.clone(), value: value.to_string() })
                .collect();
            routes.push(Route { prefix: config.prefix, plugin, options });
        }
        routes.sort_by_key(|r| std::cmp::Reverse(r.prefix.len()));
        Ok(Routes { routes })
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
