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
use crate::sandbox::{Routes, Sandbox};
use crate::worker::Worker;
use crate::worker::runner::Runner;

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
    task: tokio::task::JoinHandle<std::io::Result<()>>,
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
        let task = tokio::spawn(serve(listener, app, limits, slots.clone(), stop));
        Listener { name, task, slots, max }
    }

    /// Waits for the accept loop to end and the open connections to drain, until `deadline`;
    /// then abandons the connections still open, and says how many.
    async fn stop(mut self, deadline: Instant) {
        let started = Instant::now();
        match tokio::time::timeout_at(deadline, &mut self.task).await {
            Ok(Ok(Ok(()))) => {
                tracing::info!(
                    listener = self.name,
                    took_ms = started.elapsed().as_millis() as u64,
                    "connections drained"
                )
            }
            Ok(Ok(Err(e))) => tracing::warn!(listener = self.name, "{e}"),
            Ok(Err(e)) => tracing::warn!(listener = self.name, "listener task: {e}"),
            Err(_) => {
                self.task.abort();
                let open = self.max - self.slots.available_permits();
                tracing::warn!(
                    listener = self.name,
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
        max_connections: config.limits.max_connections as usize,
    };

    // First, so that a worker has its health check from the start.
    let (admin_addr, admin) = if config.admin_listen.is_empty() {
        (None, None)
    } else {
        let listener = tokio::net::TcpListener::bind(&config.admin_listen)
            .await
            .with_context(|| format!("cannot listen on the admin address {}", config.admin_listen))?;
        let addr = listener.local_addr()?;
        let app = api::admin_router(api::Backends { store: store.clone(), queue: queue.clone() });
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
            max_input_bytes: usize::try_from(config.limits.max_image_bytes).unwrap_or(usize::MAX),
        };
        // Only the embedded queue can be searched for a key; on SQS an S3 lifecycle rule does it.
        let orphan_age = (config.queue == QueueKind::Embedded && config.worker.orphan_age_secs > 0)
            .then(|| Duration::from_secs(config.worker.orphan_age_secs));
        let runner = Runner::start(worker, &config.worker.schedule, config.worker_concurrency(), orphan_age).await?;
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
        let guards = api::Guards::new(&config.limits);
        let cors = api::cors(&config.cors_origins).map_err(anyhow::Error::msg)?;
        let routes = config.routes.clone().into();
        let app = api::router(ApiState { store, queue, limits: config.limits.clone(), auth, guards, cors, routes });
        let api = Listener::start("api", listener, app, connection_limits, shutdown.clone());
        tracing::info!(%addr, "api listening");
        (Some(addr), Some(api))
    } else {
        (None, None)
    };
    let grace = Duration::from_secs(config.worker.shutdown_grace_secs);
    Ok(Running { addr, admin_addr, shutdown, api, admin, worker, grace })
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

/// Connection-level limits of the api listener.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// Time a client has to send its request line and headers.
    pub header_read_timeout: Duration,
    /// Connections served at once; more wait in the listen backlog.
    pub max_connections: usize,
}

/// Serves `app` until `stop`: HTTP/1.1 and HTTP/2, with a header-read timeout (a client trickling
/// its headers is cut off), at most `max_connections` at once, each request told its peer address
/// (for per-address rate limits), and in-flight requests drained on stop. `axum::serve` has none
/// of these knobs; hyper-util's connection builder has them.
async fn serve(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    limits: ConnectionLimits,
    slots: Arc<tokio::sync::Semaphore>,
    stop: CancellationToken,
) -> std::io::Result<()> {
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    use tower::ServiceExt;

    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(limits.header_read_timeout);
    builder.http2().timer(TokioTimer::new());
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    loop {
        let permit = tokio::select! {
            () = stop.cancelled() => break,
            permit = slots.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
        };
        let (stream, peer) = tokio::select! {
            () = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors, or the peer gave up: keep serving the others.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let app = app.clone();
        let service = hyper::service::service_fn(move |mut request: axum::http::Request<hyper::body::Incoming>| {
            request.extensions_mut().insert(axum::extract::ConnectInfo(peer));
            app.clone().oneshot(request)
        });
        let (builder, watcher) = (builder.clone(), graceful.watcher());
        tokio::spawn(async move {
            // hyper's header timer starts with the first byte: a client that connects and stays
            // silent would hold its slot forever. It gets the same time to start as to finish.
            // (`peek` waits for a byte, or the end; `readable` may answer before either.)
            if tokio::time::timeout(limits.header_read_timeout, stream.peek(&mut [0u8; 1])).await.is_err() {
                tracing::debug!(%peer, "closed a connection that sent nothing");
                return;
            }
            let connection = watcher.watch(builder.serve_connection(TokioIo::new(stream), service).into_owned());
            if let Err(e) = connection.await {
                tracing::debug!(%peer, "connection ended: {e}");
            }
            drop(permit);
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
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
