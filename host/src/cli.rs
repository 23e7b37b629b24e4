//! The command line: `pixbox serve`, `pixbox transform`, `pixbox plugin info`, `pixbox keys`.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};

use crate::config::{Config, Role};
use crate::imaging;
use crate::sandbox::{Param, Routes, Sandbox};

#[derive(Debug, Parser)]
#[command(name = "pixbox", version, about = "Image upload-and-resize service with sandboxed WebAssembly transforms")]
pub struct Cli {
    /// Configuration file (default: ./pixbox.toml when it exists).
    #[arg(long, global = true, env = "PIXBOX_CONFIG")]
    pub config: Option<PathBuf>,
    /// Directory for local data: the embedded store and queue, the plugin cache.
    #[arg(long, global = true)]
    pub data_dir: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the service (api and/or worker).
    Serve {
        /// Address to listen on, e.g. 127.0.0.1:3000.
        #[arg(long)]
        listen: Option<String>,
        /// Which parts to run.
        #[arg(long, value_enum)]
        role: Option<Role>,
    },
    /// Run one image through a plugin in the sandbox and report time, memory and size.
    Transform {
        /// A built-in plugin name or a path to a .wasm component. Default: the route for --key.
        #[arg(long)]
        plugin: Option<String>,
        /// A plugin option as name=value; repeatable. Overrides the route's options.
        #[arg(long = "option", value_name = "NAME=VALUE")]
        options: Vec<String>,
        /// Pick the route as if the image were stored under this key.
        #[arg(long, default_value = "")]
        key: String,
        /// Input image.
        input: PathBuf,
        /// Where to write the result.
        output: PathBuf,
    },
    /// Inspect plugins.
    Plugin {
        #[command(subcommand)]
        command: PluginCommand,
    },
    /// Make API keys and signing secrets.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Print a new random API key (for the client) and its entry for `[auth] keys` (for pixbox).
    New {
        /// What the key may do: any of upload, read, admin, comma-separated.
        #[arg(long, default_value = "upload,read")]
        scopes: String,
    },
    /// Print a new random signing secret for `[auth] signing_secret` (signed read URLs).
    Secret,
}

#[derive(Debug, Subcommand)]
pub enum PluginCommand {
    /// Check that a component implements the pixbox contract and print what it says about itself.
    Info {
        /// A built-in plugin name or a path to a .wasm component.
        plugin: String,
    },
}

impl Cli {
    /// Loads the configuration with this command line's flags as the top layer.
    pub fn config(&self) -> anyhow::Result<Config> {
        let mut flags = toml::Table::new();
        if let Some(dir) = &self.data_dir {
            flags.insert("data_dir".into(), dir.display().to_string().into());
        }
        if let Command::Serve { listen, role } = &self.command {
            if let Some(listen) = listen {
                flags.insert("listen".into(), listen.clone().into());
            }
            if let Some(role) = role {
                flags.insert("role".into(), toml::Value::try_from(role)?);
            }
        }
        Ok(Config::from_env(self.config.as_deref(), flags)?)
    }
}

/// Builds the sandbox described by the configuration, with its on-disk compile cache.
pub fn sandbox(config: &Config) -> anyhow::Result<Sandbox> {
    let mut settings = config.sandbox.clone();
    settings.cache_dir = Some(config.plugin_cache_dir());
    Ok(Sandbox::new(settings)?)
}

/// `pixbox transform`.
pub fn transform(
    config: &Config,
    plugin: Option<&str>,
    options: &[String],
    key: &str,
    input: &Path,
    output: &Path,
) -> anyhow::Result<()> {
    let bytes = std::fs::read(input).with_context(|| format!("cannot read {}", input.display()))?;
    // The header check runs before any plugin, exactly as for uploads.
    let header = imaging::probe(&bytes).with_context(|| format!("{} is not a usable image", input.display()))?;
    config
        .limits
        .pixels()
        .check(&header)
        .with_context(|| format!("{} is refused (see [limits] in pixbox.toml)", input.display()))?;

    let sandbox = sandbox(config)?;
    let runtime = tokio::runtime::Runtime::new()?;
    let (plugin, mut params) = match plugin {
        Some(spec) => (runtime.block_on(sandbox.load(spec))?, Vec::new()),
        None => {
            let routes = runtime.block_on(Routes::load(&sandbox, &config.routes))?;
            let route = routes.resolve(key);
            (route.plugin.clone(), route.options.clone())
        }
    };
    for option in options {
        let Some((name, value)) = option.split_once('=') else {
            bail!("--option {option:?} must look like name=value");
        };
        params.retain(|p| p.name != name);
        params.push(Param { name: name.into(), value: value.into() });
    }

    let started = Instant::now();
    let result = runtime
        .block_on(sandbox.transform(&plugin, &bytes, header.format.media_type(), &params))
        .with_context(|| format!("{} {} failed on {}", plugin.info.name, plugin.info.version, input.display()))?;
    std::fs::write(output, &result.bytes).with_context(|| format!("cannot write {}", output.display()))?;
    let out = result.header;
    println!(
        "{} {}: {}x{} {} ({} bytes) -> {}x{} {} ({} bytes)",
        plugin.info.name,
        plugin.info.version,
        header.width,
        header.height,
        header.format.media_type(),
        bytes.len(),
        out.width,
        out.height,
        out.format.media_type(),
        result.bytes.len(),
    );
    println!(
        "time in sandbox: {:.1} ms (whole command after loading: {:.1} ms); memory high-water: {:.1} MiB",
        result.stats.elapsed.as_secs_f64() * 1e3,
        started.elapsed().as_secs_f64() * 1e3,
        result.stats.memory_peak as f64 / (1 << 20) as f64,
    );
    Ok(())
}

/// `pixbox plugin info`.
pub fn plugin_info(config: &Config, spec: &str) -> anyhow::Result<()> {
    let sandbox = sandbox(config)?;
    let plugin = tokio::runtime::Runtime::new()?.block_on(sandbox.load(spec))?;
    let info = &plugin.info;
    println!("{} {} (pixbox:transform@0.1.0)", info.name, info.version);
    println!("{}", info.description);
    if info.params.is_empty() {
        println!("options: none");
    } else {
        println!("options:");
        for p in &info.params {
            let default = p.default.as_deref().map_or("no default".to_string(), |d| format!("default {d}"));
            println!("  {:<12} {} ({default})", p.name, p.description);
        }
    }
    Ok(())
}

/// Logs go to stderr; `log` in the configuration (or `RUST_LOG`) is an env-filter directive.
pub fn init_tracing(config: &Config) {
    // The scheduler crate logs its own start-up at info; that is noise for pixbox's users.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(format!("tokio_cron_scheduler=warn,{}", config.log)));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

/// `pixbox serve`: runs until SIGINT or SIGTERM, then shuts down gracefully.
pub fn serve(config: Config) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let running = crate::server::start(&config).await?;
        if let Some(addr) = running.addr {
            println!("pixbox listening on http://{addr} (role {:?})", config.role);
        }
        crate::server::shutdown_signal().await;
        tracing::info!("shutting down: finishing in-flight work");
        running.stop().await;
        Ok(())
    })
}

/// `pixbox keys new` / `pixbox keys secret`: needs no configuration.
pub fn keys(command: &KeysCommand) -> anyhow::Result<()> {
    match command {
        KeysCommand::New { scopes } => {
            let scopes = crate::auth::parse_scopes(scopes).map_err(anyhow::Error::msg)?;
            if scopes.is_empty() {
                bail!("--scopes needs at least one of upload, read, admin");
            }
            let (key, entry) = crate::auth::new_key(&scopes);
            println!("key (give it to the client; pixbox keeps only its hash):");
            println!("  {key}");
            println!("entry for [auth] keys in pixbox.toml, or PIXBOX_AUTH_KEYS (entries separated by spaces or ';'):");
            println!("  {entry}");
        }
        KeysCommand::Secret => println!("{}", crate::auth::new_secret()),
    }
    Ok(())
}
