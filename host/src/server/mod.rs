//! Starts the service for a role: the api (axum on `listen`) and/or the worker (cron ticks), on the
//! configured backends, and stops it gracefully.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use crate::api::{self, ApiState};
use crate::auth::Auth;
use crate::config::{Config, QueueKind, Role};
use crate::render::Renderer;
use crate::render::urls::Signing;
use crate::sandbox::{Routes, Sandbox};
use crate::storage::BlobStore;
use crate::worker::Worker;
use crate::worker::runner::Runner;

mod connection;

pub use connection::ConnectionLimits;

/// How long a shutdown may take beyond `worker.shutdown_grace_secs`, whatever the backends and
/// the clients do: releasing the messages of cancelled jobs, closing connections, stopping the
/// runtime. What is still running then is abandoned (and logged): a message not released comes
/// back after its visibility timeout, a client still connected sees its connection close.
pub const STOP_MARGIN: Duration = Duration::from_secs(1);

/// The part of [`STOP_MARGIN`] kept for what follows [`Running::stop`]: dropping the runtime's
/// tasks and waiting for its blocking threads.
pub const RUNTIME_STOP: Duration = Duration::from_millis(250);

/// A started service.
pub struct Running {
    /// Where the api listens (None for the worker role).
    pub addr: Option<SocketAddr>,
    /// Where the admin routes (health, readiness, metrics) listen, when `admin_listen` is set.
    pub admin_addr: Option<SocketAddr>,
    shutdown: CancellationToken,
    api: Option<Listener>,
    admin: Option<Listener>,
    worker: Option<Runner>,
    /// `worker.shutdown_grace_secs`: what in-flight jobs and requests get to finish.
    grace: Duration,
}

/// A listener's accept loop and the connection slots its connections hold (a slot in use is an
/// open connection; at shutdown, the ones still open are those being drained).
struct Listener {
    name: &'static str,
    task: tokio::task::JoinHandle<()>,
    slots: Arc<tokio::sync::Semaphore>,
    max: usize,
}

impl Listener {
    fn start(
        name: &'static str,
        listener: tokio::net::TcpListener,
        app: axum::Router,
        limits: ConnectionLimits,
        stop: CancellationToken,
    ) -> Listener {
        let max = limits.max_connections.max(1);
        let slots = Arc::new(tokio::sync::Semaphore::new(max));
        let task = tokio::spawn(connection::serve(listener, app, limits, slots.clone(), stop));
        Listener { name, task, slots, max }
    }

    /// Waits for the accept loop to end and the open connections to drain (every slot back),
    /// until `deadline`; then abandons the connections still open, and says how many.
    async fn stop(self, deadline: Instant) {
        let started = Instant::now();
        let Listener { name, task, slots, max } = self;
        let drained = {
            let slots = slots.clone();
            async move {
                if let Err(e) = task.await {
                    tracing::warn!(listener = name, "listener task: {e}");
                }
                let _all = slots.acquire_many(max as u32).await;
            }
        };
        match tokio::time::timeout_at(deadline, drained).await {
            Ok(()) => {
                tracing::info!(listener = name, took_ms = started.elapsed().as_millis() as u64, "connections drained")
            }
            Err(_) => {
                let open = max - slots.available_permits();
                tracing::warn!(
                    listener = name,
                    open,
                    took_ms = started.elapsed().as_millis() as u64,
                    "connections still open at the shutdown deadline are abandoned"
                );
            }
        }
    }
}

/// Connects the backends and starts what the role asks for. Binds before returning, so `addr` is
/// ready for requests (port 0 picks a free port).
pub async fn start(config: &Config) -> anyhow::Result<Running> {
    // Before anything binds: a service that would be open to the network does not start at all.
    let auth = match config.role {
        Role::Api | Role::All => Some(Auth::from_settings(&config.auth, &config.listen)?),
        Role::Worker => None,
    };
    crate::telemetry::install();
    let (store, queue) = crate::backends::connect(config).await?;
    let shutdown = CancellationToken::new();
    let connection_limits = ConnectionLimits {
        header_read_timeout: Duration::from_secs(config.limits.header_read_timeout_secs),
        keep_alive_timeout: Duration::from_secs(config.limits.keep_alive_timeout_secs),
        max_connections: config.limits.max_connections as usize,
        max_connections_per_address: config.limits.max_connections_per_address as usize,
        http2: config.limits.http2,
    };

    // First, so that a worker has its health check from the start.
    let (admin_addr, admin) = if config.admin_listen.is_empty() {
        (None, None)
    } else {
        let listener = tokio::net::TcpListener::bind(&config.admin_listen)
            .await
            .with_context(|| format!("cannot listen on the admin address {}", config.admin_listen))?;
        let addr = listener.local_addr()?;
        let app = api::admin_router(api::Backends::new(store.clone(), queue.clone()));
        let admin = Listener::start("admin", listener, app, connection_limits, shutdown.clone());
        tracing::info!(%addr, "admin listening (health, ready, metrics)");
        (Some(addr), Some(admin))
    };

    let worker = if matches!(config.role, Role::Worker | Role::All) {
        let mut settings = config.sandbox.clone();
        settings.cache_dir = Some(config.plugin_cache_dir());
        let sandbox = Arc::new(Sandbox::new(settings)?);
        let routes = Arc::new(Routes::load(&sandbox, &config.routes).await?);
        for route in routes.iter() {
            tracing::info!(
                prefix = route.prefix,
                plugin = route.plugin.info.name,
                source = &*route.plugin.source,
                "route"
            );
        }
        let worker = Worker {
            store: store.clone(),
            queue: queue.clone(),
            sandbox,
            routes,
            settings: config.worker.clone(),
            limits: config.limits.pixels(),
            formats: config.formats,
            max_input_bytes: usize::try_from(config.limits.max_image_bytes).unwrap_or(usize::MAX),
        };
        // Only the embedded queue can be searched for a key; on SQS an S3 lifecycle rule does it.
        let orphan_age = (config.queue == QueueKind::Embedded && config.worker.orphan_age_secs > 0)
            .then(|| Duration::from_secs(config.worker.orphan_age_secs));
        let runner = Runner::start(worker, &config.worker.schedule, config.worker_concurrency(), orphan_age).await?;
        if config.any_webhooks() {
            let deliverer =
                crate::webhooks::Deliverer::new(store.clone(), &config.webhooks).map_err(anyhow::Error::msg)?;
            tokio::spawn(deliverer.run(shutdown.clone()));
            tracing::info!("webhooks delivered by this worker");
        }
        tracing::info!(schedule = config.worker.schedule, concurrency = config.worker_concurrency(), "worker started");
        Some(runner)
    } else {
        None
    };

    let (addr, api) = if let Some(auth) = auth {
        let listener = tokio::net::TcpListener::bind(&config.listen)
            .await
            .with_context(|| format!("cannot listen on {}", config.listen))?;
        let addr = listener.local_addr()?;
        let guards = api::Guards::new(&config.limits).with_render_rate(config.renders.rate_per_caller);
        let cors = api::cors(&config.cors().map_err(anyhow::Error::msg)?);
        let routes = config.routes.clone().into();
        let renderer = renderer(config, &store).await?;
        let app = api::router(ApiState {
            store,
            queue,
            limits: config.limits.clone(),
            formats: config.formats,
            auth,
            guards,
            cors,
            routes,
            probes: api::Probes::default(),
            renderer,
            webhooks_enabled: config.upload_webhooks(),
            webhook_allow: Arc::new(crate::webhooks::Allow::parse(&config.webhooks.allow).map_err(anyhow::Error::msg)?),
        });
        let api = Listener::start("api", listener, app, connection_limits, shutdown.clone());
        tracing::info!(%addr, "api listening");
        (Some(addr), Some(api))
    } else {
        (None, None)
    };
    let grace = Duration::from_secs(config.worker.shutdown_grace_secs);
    Ok(Running { addr, admin_addr, shutdown, api, admin, worker, grace })
}

/// The presets' renderer, when any is configured: a sandbox of the api's own for them.
async fn renderer(config: &Config, store: &Arc<dyn BlobStore>) -> anyhow::Result<Option<Arc<Renderer>>> {
    let signing = Signing::from_settings(&config.transform_urls).map_err(anyhow::Error::msg)?;
    if config.presets.is_empty() && signing.is_none() {
        return Ok(None);
    }
    let mut settings = config.sandbox.clone();
    settings.cache_dir = Some(config.plugin_cache_dir());
    let sandbox = Arc::new(Sandbox::new(settings)?);
    let renderer = Renderer::load(store.clone(), sandbox, &config.presets, signing, config.renders.clone()).await?;
    tracing::info!(presets = renderer.names().collect::<Vec<_>>().join(", "), "presets");
    Ok(Some(Arc::new(renderer)))
}

impl Running {
    /// Stops taking new work and lets in-flight requests and jobs finish, side by side, for the
    /// grace period; returns at most [`STOP_MARGIN`] minus [`RUNTIME_STOP`] after it, having
    /// logged what it abandoned then (a worker tick still at its backends, open connections).
    pub async fn stop(self) {
        let started = Instant::now();
        let deadline = started + self.grace + STOP_MARGIN - RUNTIME_STOP;
        self.shutdown.cancel();
        let worker = async {
            let Some(worker) = self.worker else { return };
            match tokio::time::timeout_at(deadline, worker.stop()).await {
                Ok(()) => tracing::info!(took_ms = started.elapsed().as_millis() as u64, "worker schedule ended"),
                Err(_) => tracing::warn!(
                    took_ms = started.elapsed().as_millis() as u64,
                    "the worker's tick was still running at the shutdown deadline and is abandoned \
                     (its messages come back after their visibility timeout)"
                ),
            }
        };
        let listeners =
            futures::future::join_all([self.api, self.admin].into_iter().flatten().map(|l| l.stop(deadline)));
        tokio::join!(worker, listeners);
    }
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = terminate => {}
    }
}
