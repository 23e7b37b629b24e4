//! The command line: `pixbox serve`, `pixbox transform`, `pixbox plugin info|new|watch`,
//! `pixbox wit`, `pixbox keys`, `pixbox jobs`, `pixbox images`, `pixbox webhooks`, `pixbox health`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};

use crate::config::{Config, Role};
use crate::sandbox::{AUTO_FORMAT, DEFAULT_RENDITION, OptionValue, Param, Routes, Sandbox};

#[derive(Debug, Parser)]
#[command(name = "pixbox", version, about = "Image upload-and-resize service with sandboxed WebAssembly transforms")]
pub struct Cli {
    /// Configuration file (default: pixbox.toml in the data directory, when it exists).
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
        /// Admin address (health, readiness, metrics), e.g. 127.0.0.1:3001; "" for none.
        #[arg(long)]
        admin_listen: Option<String>,
        /// Which parts to run.
        #[arg(long, value_enum)]
        role: Option<Role>,
    },
    /// Run images through a plugin in the sandbox: time, memory and size per image, and the
    /// plugin's log messages.
    Transform {
        /// A built-in plugin name or a path to a .wasm component. Default: the route for --key,
        /// every rendition of it (a file each, `out.{name}.{ext}`), as the worker makes them.
        #[arg(long)]
        plugin: Option<String>,
        /// Run a preset of pixbox.toml (`[presets.NAME]`), as `/img/{NAME}/...` renders it (a
        /// `format = "auto"` preset writes the input's format, as for a client that names none).
        #[arg(long, conflicts_with = "plugin")]
        preset: Option<String>,
        /// A plugin option as name=value; repeatable. Overrides the route's options.
        #[arg(long = "option", value_name = "NAME=VALUE")]
        options: Vec<String>,
        /// Pick the route as if the image were stored under this key.
        #[arg(long, default_value = "")]
        key: String,
        /// Input image, or a folder of them.
        input: PathBuf,
        /// Where to write the result (a folder for a folder of inputs); the extension follows
        /// the format the plugin wrote.
        output: PathBuf,
    },
    /// Print the WIT contract plugins are built against (pixbox:transform).
    Wit {
        /// Alone: list the contract versions this pixbox loads. With a version: print that one.
        #[arg(long, num_args = 0..=1, default_missing_value = "", value_name = "VERSION")]
        version: Option<String>,
    },
    /// Inspect plugins.
    Plugin {
        #[command(subcommand)]
        command: PluginCommand,
    },
    /// Delete images (uses the configured store; a server may be running).
    Images {
        #[command(subcommand)]
        command: ImagesCommand,
    },
    /// Webhook deliveries waiting or failed, and sending failed ones again.
    Webhooks {
        #[command(subcommand)]
        command: WebhooksCommand,
    },
    /// Make API keys and signing secrets.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// List, count and retry jobs (uses the configured store and queue; a server may be running).
    Jobs {
        #[command(subcommand)]
        command: JobsCommand,
    },
    /// Ask a running pixbox (any role) on its admin address whether it is up; exit status 0 if so.
    /// The container health check.
    Health {
        /// Ask whether it is ready (store and queue answer) instead.
        #[arg(long)]
        ready: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum JobsCommand {
    /// Originals waiting to be processed, or with --failed the jobs that failed for good.
    List {
        /// List failed jobs (with their code, reason and attempts) instead.
        #[arg(long)]
        failed: bool,
        /// One JSON array instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Queue a failed or dead-lettered job again (after fixing its cause).
    Retry {
        /// The key of the job.
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        key: Option<String>,
        /// Every failed job and every dead-lettered message.
        #[arg(long)]
        all: bool,
    },
    /// Queue depths (waiting, in flight, dead-lettered), oldest age, failed and waiting counts.
    Stats {
        /// One JSON object instead of lines.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum ImagesCommand {
    /// Delete images with everything derived from them (renditions, kept originals, presets,
    /// transforms, job records), as `DELETE /images/{key}` does.
    Delete {
        /// The key of the image.
        #[arg(required_unless_present = "prefix", conflicts_with = "prefix")]
        key: Option<String>,
        /// Every image whose key starts with this (e.g. `users/42/`).
        #[arg(long)]
        prefix: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum WebhooksCommand {
    /// Deliveries waiting (with their attempts and last error), or with --failed those given up on.
    List {
        #[arg(long)]
        failed: bool,
        /// One JSON array instead of lines.
        #[arg(long)]
        json: bool,
    },
    /// Send failed deliveries again (due now, with a fresh `give_up_after_secs`).
    Redeliver {
        /// Ids of failed deliveries (from `list --failed`).
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        ids: Vec<String>,
        /// Every failed delivery.
        #[arg(long)]
        all: bool,
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
    /// Write a new plugin crate that builds and passes its tests as it is.
    New {
        /// The plugin's (and crate's) name.
        name: String,
        /// The folder to create it in.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
    },
    /// Build the plugin crate in DIR and run it on sample images, again on every change.
    Watch {
        /// The plugin crate.
        #[arg(default_value = ".")]
        dir: PathBuf,
        /// Images to run on (default: DIR/samples).
        #[arg(long)]
        samples: Option<PathBuf>,
        /// A plugin option as name=value; repeatable.
        #[arg(long = "option", value_name = "NAME=VALUE")]
        options: Vec<String>,
    },
}

impl Cli {
    /// Loads the configuration with this command line's flags as the top layer.
    pub fn config(&self) -> anyhow::Result<Config> {
        let mut flags = toml::Table::new();
        if let Some(dir) = &self.data_dir {
            flags.insert("data_dir".into(), dir.display().to_string().into());
        }
        if let Command::Serve { listen, admin_listen, role } = &self.command {
            if let Some(listen) = listen {
                flags.insert("listen".into(), listen.clone().into());
            }
            if let Some(admin_listen) = admin_listen {
                flags.insert("admin_listen".into(), admin_listen.clone().into());
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

/// `name=value` options of the command line.
pub fn parse_options(options: &[String]) -> anyhow::Result<Vec<Param>> {
    options
        .iter()
        .map(|option| match option.split_once('=') {
            Some((name, value)) => Ok(Param { name: name.into(), value: value.into() }),
            None => bail!("--option {option:?} must look like name=value"),
        })
        .collect()
}

/// `pixbox transform`: one image or a folder, a table row per image; fails if any image did.
pub fn transform(
    config: &Config,
    plugin: Option<&str>,
    preset: Option<&str>,
    options: &[String],
    key: &str,
    input: &Path,
    output: &Path,
) -> anyhow::Result<()> {
    if !input.is_dir() {
        // One file refused by its header never waits for a plugin to load (a folder's files
        // are checked one by one, in their rows).
        let bytes = std::fs::read(input).with_context(|| format!("cannot read {}", input.display()))?;
        let header =
            crate::imaging::probe(&bytes).with_context(|| format!("{} is not a usable image", input.display()))?;
        config
            .limits
            .pixels()
            .check(&header)
            .with_context(|| format!("{} is refused (see [limits] in pixbox.toml)", input.display()))?;
    }
    let sandbox = crate::author::tool_sandbox(config)?;
    let runtime = tokio::runtime::Runtime::new()?;
    let (plugin, mut params, mut renditions) = match (plugin, preset) {
        (Some(spec), _) => (runtime.block_on(sandbox.load(spec))?, Vec::new(), None),
        (None, Some(name)) => {
            let Some(preset) = config.presets.get(name) else {
                let known: Vec<&str> = config.presets.keys().map(String::as_str).collect();
                bail!("no preset {name:?} in pixbox.toml (configured: {})", known.join(", "));
            };
            let plugin = runtime.block_on(sandbox.load(preset.plugin.as_deref().unwrap_or("resize")))?;
            // `auto` picks a format per request; here, as for a client that names none.
            let value = |v: &OptionValue| match v.to_string() {
                auto if auto.eq_ignore_ascii_case(AUTO_FORMAT) => "same".to_string(),
                v => v,
            };
            let params = preset.options.iter().map(|(k, v)| Param { name: k.clone(), value: value(v) }).collect();
            (plugin, params, None)
        }
        (None, None) => {
            let routes = runtime.block_on(Routes::load(&sandbox, &config.routes))?;
            let route = routes.resolve(key);
            // A route that names its renditions (even one) makes them, each with its own options.
            let named = route.renditions.len() > 1 || route.renditions[0].name != DEFAULT_RENDITION;
            let renditions = named.then(|| route.renditions.clone());
            (route.plugin.clone(), route.options.clone(), renditions)
        }
    };
    for param in parse_options(options)? {
        for options in std::iter::once(&mut params).chain(renditions.iter_mut().flatten().map(|r| &mut r.options)) {
            options.retain(|p| p.name != param.name);
            options.push(param.clone());
        }
    }
    let failed = runtime.block_on(crate::author::run_table(
        &sandbox,
        config,
        &plugin,
        &params,
        renditions.as_deref(),
        input,
        output,
    ))?;
    if failed > 0 {
        bail!("{failed} image(s) failed");
    }
    Ok(())
}

/// `pixbox plugin info`.
pub fn plugin_info(config: &Config, spec: &str) -> anyhow::Result<()> {
    let sandbox = crate::author::tool_sandbox(config)?;
    let plugin = tokio::runtime::Runtime::new()?.block_on(sandbox.load(spec))?;
    let info = &plugin.info;
    println!("{} {} (pixbox:transform@{})", info.name, info.version, plugin.contract.version());
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

/// `pixbox serve`: runs until SIGINT or SIGTERM, then shuts down gracefully: in-flight work gets
/// `worker.shutdown_grace_secs`, and the process exits at most [`STOP_MARGIN`] after that.
///
/// [`STOP_MARGIN`]: crate::server::STOP_MARGIN
pub fn serve(config: Config) -> anyhow::Result<()> {
    use crate::server::{RUNTIME_STOP, STOP_MARGIN};
    let runtime = tokio::runtime::Runtime::new()?;
    let stopping = runtime.block_on(async {
        let running = crate::server::start(&config).await?;
        if let Some(addr) = running.addr {
            println!("pixbox listening on http://{addr} (role {:?})", config.role);
        }
        if let Some(addr) = running.admin_addr {
            println!("pixbox admin on http://{addr} (health, ready, metrics)");
        }
        crate::server::shutdown_signal().await;
        let stopping = Instant::now();
        tracing::info!(grace_secs = config.worker.shutdown_grace_secs, "shutting down: finishing in-flight work");
        running.stop().await;
        anyhow::Ok(stopping)
    })?;
    // Dropping a runtime waits for its blocking tasks without end (a filesystem call stuck on a
    // dead mount, a DNS lookup); the rest of the margin is all they get.
    let deadline = stopping + Duration::from_secs(config.worker.shutdown_grace_secs) + STOP_MARGIN;
    let left = deadline.saturating_duration_since(Instant::now()).max(RUNTIME_STOP / 2);
    let dropping = Instant::now();
    runtime.shutdown_timeout(left);
    if dropping.elapsed() >= left {
        tracing::warn!(waited_ms = left.as_millis() as u64, "blocking tasks still running at exit are abandoned");
    }
    tracing::info!(took_ms = stopping.elapsed().as_millis() as u64, "shutdown complete");
    Ok(())
}

/// `pixbox jobs ...`: runs against the configured backends.
/// `pixbox images delete`.
pub fn images(config: &Config, command: &ImagesCommand) -> anyhow::Result<()> {
    use crate::lifecycle;
    let ImagesCommand::Delete { key, prefix } = command;
    tokio::runtime::Runtime::new()?.block_on(async {
        let (store, _) = crate::backends::connect(config).await?;
        let keys = match (key, prefix) {
            (Some(key), _) => vec![key.clone()],
            (None, Some(prefix)) => lifecycle::keys_under(&*store, prefix).await?,
            (None, None) => unreachable!("clap requires a key or --prefix"),
        };
        if keys.is_empty() {
            println!("no images under {:?}", prefix.as_deref().unwrap_or_default());
        }
        let mut incomplete = 0;
        for key in &keys {
            crate::storage::validate_key(key)?;
            let deleted = match lifecycle::find(&*store, key).await? {
                // Deleted before: what a delete cut short left is removed now.
                None if lifecycle::deleted_by(&*store, key).await?.is_some() => {
                    lifecycle::finish_delete(&*store, key).await
                }
                None => {
                    println!("{key}: no such image");
                    continue;
                }
                Some(found) => lifecycle::delete(&*store, key, &found).await,
            };
            match deleted {
                Ok(removed) => println!("{key}: deleted ({removed} objects)"),
                Err(e) => {
                    incomplete += 1;
                    println!("{key}: {e}");
                }
            }
        }
        if incomplete > 0 {
            bail!("{incomplete} delete(s) did not finish; run the command again");
        }
        Ok(())
    })
}

/// `pixbox webhooks list|redeliver`.
pub fn webhooks(config: &Config, command: &WebhooksCommand) -> anyhow::Result<()> {
    use crate::webhooks;
    tokio::runtime::Runtime::new()?.block_on(async {
        let (store, _) = crate::backends::connect(config).await?;
        match command {
            WebhooksCommand::List { failed, json } => {
                let list = webhooks::list(&*store, *failed).await?;
                if *json {
                    println!("{}", serde_json::to_string_pretty(&list)?);
                } else if list.is_empty() {
                    println!("{}", if *failed { "no failed deliveries" } else { "no deliveries waiting" });
                }
                for delivery in list.iter().filter(|_| !*json) {
                    let why = delivery.last_error.as_deref().unwrap_or("not tried yet");
                    println!("{}  {}  {} attempt(s): {why}", delivery.id, delivery.url, delivery.attempts);
                }
            }
            WebhooksCommand::Redeliver { ids, all: _ } => {
                let moved = webhooks::redeliver(&*store, ids).await?;
                println!("{moved} deliver{} queued again", if moved == 1 { "y" } else { "ies" });
            }
        }
        Ok(())
    })
}

pub fn jobs(config: &Config, command: &JobsCommand) -> anyhow::Result<()> {
    use crate::operations::{self, Retry};
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let (store, queue) = crate::backends::connect(config).await?;
        let (store, queue) = (&*store, &*queue);
        match command {
            JobsCommand::List { failed: true, json } => {
                let failed = operations::failed(store).await?;
                if *json {
                    println!("{}", serde_json::to_string_pretty(&failed)?);
                } else if failed.is_empty() {
                    println!("no failed jobs");
                } else {
                    for job in &failed {
                        let kept = if job.original_kept { "" } else { " (original gone)" };
                        let plugin = job.failure.plugin.as_deref().map(|p| format!(" [{p}]")).unwrap_or_default();
                        println!(
                            "{}  {}  after {} attempt(s){plugin}: {}{kept}",
                            job.key, job.failure.code, job.failure.attempts, job.failure.message
                        );
                    }
                }
            }
            JobsCommand::List { failed: false, json } => {
                let waiting = operations::waiting(store).await?;
                if *json {
                    println!("{}", serde_json::to_string_pretty(&waiting)?);
                } else if waiting.is_empty() {
                    println!("no originals waiting");
                } else {
                    for job in &waiting {
                        let age = job.age_secs.map_or("?".to_string(), |a| format!("{a:.0} s"));
                        println!("{}  waiting for {age}", job.key);
                    }
                }
            }
            JobsCommand::Retry { key, all } => {
                let retried = match (key, all) {
                    (Some(key), false) => vec![operations::retry(store, queue, key).await?],
                    _ => operations::retry_all(store, queue).await?,
                };
                if retried.is_empty() {
                    println!("nothing to retry");
                }
                for retry in &retried {
                    match retry {
                        Retry::Queued { key, dead_letters: 0 } => println!("{key}: queued again"),
                        Retry::Queued { key, dead_letters } => {
                            println!("{key}: queued again ({dead_letters} message(s) taken off the dead-letter queue)")
                        }
                        Retry::AlreadyDone { key } => println!("{key}: already done, nothing to retry"),
                        Retry::NotFailed { key } => {
                            println!("{key}: not failed (waiting or unknown), nothing to retry")
                        }
                    }
                }
            }
            JobsCommand::Stats { json } => {
                let stats = operations::stats(store, queue).await?;
                if *json {
                    println!("{}", serde_json::to_string_pretty(&stats)?);
                } else {
                    let q = &stats.queue;
                    let age = |a: Option<f64>| a.map_or("unknown".to_string(), |a| format!("{a:.0} s"));
                    println!("queue: {} waiting, {} in flight, {} dead-lettered", q.waiting, q.in_flight, q.dead);
                    println!("oldest queued message: {}", age(q.oldest_age.map(|a| a.as_secs_f64())));
                    println!("failed jobs: {}", stats.failed);
                    println!(
                        "originals waiting: {} (oldest {})",
                        stats.waiting_originals,
                        age(stats.oldest_original_age_secs)
                    );
                }
            }
        }
        Ok(())
    })
}

/// `pixbox health [--ready]`: GET /health (or /ready) on the admin address (or on `listen`
/// when there is none), with a short timeout. Plain HTTP/1.0 over a socket: the check must not
/// need curl in the image, nor start a runtime.
pub fn health(config: &Config, ready: bool) -> anyhow::Result<()> {
    use std::io::{Read, Write};
    use std::net::ToSocketAddrs;
    const TIMEOUT: Duration = Duration::from_secs(3);
    let listen = if config.admin_listen.is_empty() { &config.listen } else { &config.admin_listen };
    let mut addr = listen
        .to_socket_addrs()
        .with_context(|| format!("bad address {listen:?}"))?
        .next()
        .with_context(|| format!("{listen:?} names no address"))?;
    // A service listening on every interface is reached on loopback.
    if addr.ip().is_unspecified() {
        addr.set_ip(if addr.is_ipv4() { [127, 0, 0, 1].into() } else { std::net::Ipv6Addr::LOCALHOST.into() });
    }
    let path = if ready { "/ready" } else { "/health" };
    let mut stream =
        std::net::TcpStream::connect_timeout(&addr, TIMEOUT).with_context(|| format!("nothing answers on {addr}"))?;
    stream.set_read_timeout(Some(TIMEOUT))?;
    stream.set_write_timeout(Some(TIMEOUT))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut answer = Vec::new();
    stream.take(64 * 1024).read_to_end(&mut answer).with_context(|| format!("no answer from {addr}{path}"))?;
    let answer = String::from_utf8_lossy(&answer);
    let status = answer.lines().next().unwrap_or("");
    if status.split_whitespace().nth(1) != Some("200") {
        bail!("http://{addr}{path} answered {status:?}");
    }
    println!("{} on http://{addr}{path}", if ready { "ready" } else { "up" });
    Ok(())
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

/// `pixbox plugin new`: writes the crate and says what to run next.
pub fn plugin_new(name: &str, dir: &Path) -> anyhow::Result<()> {
    let created = crate::author::new_plugin(name, dir)?;
    let wasm = crate::author::wasm_path(name);
    println!("created {} (the plugin in src/lib.rs, pixbox-kit/ beside it, samples/ to try it on)", created.display());
    println!();
    println!("  cd {}", created.display());
    println!("  cargo build --release                 # -> {wasm}");
    println!("  cargo test-native                     # its tests, on this machine");
    println!("  pixbox transform --plugin {wasm} samples out");
    println!("  pixbox plugin watch .                 # rebuild and re-run on every change");
    Ok(())
}
