//! The HTTP api: upload, download, status, health; and the operators' admin router (health,
//! readiness, metrics). Handlers see only the two ports.

mod auth;
mod direct;
mod download;
mod error;
mod guard;
mod health;
mod images;
mod img;
pub use health::Probes;
mod live;
pub mod observe;
pub mod openapi;
mod page;
mod part_headers;
mod status;
mod upload;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::Method;
use axum::routing::{MethodRouter, get, post};

pub use error::{ApiError, Code};
pub use guard::{CallerKey, Guards, PerKey, Slot, client_key};

use crate::auth::{Auth, Scope};
use crate::config::{CorsOrigins, UploadLimits};
use crate::imaging::FormatSettings;
pub use crate::jobs::key_path;
use crate::queue::JobQueue;
use crate::storage::BlobStore;

/// What the handlers share.
#[derive(Debug, Clone)]
pub struct ApiState {
    pub store: Arc<dyn BlobStore>,
    pub queue: Arc<dyn JobQueue>,
    pub limits: UploadLimits,
    /// The input formats read (`[formats]`).
    pub formats: FormatSettings,
    pub auth: Auth,
    pub guards: Guards,
    /// Browser access, when configured.
    pub cors: Option<tower_http::cors::CorsLayer>,
    /// The configured routes (for the names of a key's renditions; the api loads no plugin).
    pub routes: Arc<[crate::sandbox::RouteConfig]>,
    /// What `/ready` and `/metrics` last found, shared by their callers.
    pub probes: Probes,
    /// The presets, rendered on request (`None`: none is configured).
    pub renderer: Option<Arc<crate::render::Renderer>>,
    /// Whether uploads may name a webhook (`[webhooks]` has a secret and an allow list), and
    /// the hosts they may name.
    pub webhooks_enabled: bool,
    pub webhook_allow: Arc<crate::webhooks::Allow>,
}

/// The two ports, for handlers that need nothing else (readiness, metrics).
#[derive(Debug, Clone)]
pub struct Backends {
    pub store: Arc<dyn BlobStore>,
    pub queue: Arc<dyn JobQueue>,
    /// What `/ready` and `/metrics` last found, shared by their callers.
    pub probes: Probes,
}

impl Backends {
    pub fn new(store: Arc<dyn BlobStore>, queue: Arc<dyn JobQueue>) -> Backends {
        Backends { store, queue, probes: Probes::default() }
    }
}

impl axum::extract::FromRef<ApiState> for Backends {
    fn from_ref(state: &ApiState) -> Self {
        Backends { store: state.store.clone(), queue: state.queue.clone(), probes: state.probes.clone() }
    }
}

/// The admin address's routes (every role serves them): `/health`, `/ready`, `/metrics`.
pub fn admin_router(backends: Backends) -> Router {
    crate::telemetry::install();
    Router::new()
        .route("/health", get(health::health))
        .route("/ready", get(health::ready))
        .route("/metrics", get(health::metrics))
        .fallback(|| async { ApiError::new(Code::NoSuchRoute, "no such route") })
        .layer(axum::middleware::from_fn(observe::observe))
        .with_state(backends)
}

/// Browser access (CORS) for the configured origins; `None` when there are none.
pub fn cors(origins: &CorsOrigins) -> Option<tower_http::cors::CorsLayer> {
    use axum::http::header;
    use tower_http::cors::{AllowOrigin, CorsLayer};
    let allow = match origins {
        CorsOrigins::None => return None,
        CorsOrigins::Any => AllowOrigin::any(),
        CorsOrigins::List(list) => AllowOrigin::list(list.iter().cloned()),
    };
    Some(
        CorsLayer::new()
            .allow_origin(allow)
            .allow_methods([Method::GET, Method::POST, Method::PUT, Method::DELETE])
            .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE, observe::REQUEST_ID.clone()])
            .expose_headers([observe::REQUEST_ID.clone(), header::RETRY_AFTER, header::LOCATION])
            .max_age(Duration::from_secs(600)),
    )
}

/// Every route of the api, with its state.
pub fn router(state: ApiState) -> Router {
    let body_limit = usize::try_from(state.limits.max_request_bytes).unwrap_or(usize::MAX);
    let request_timeout = Duration::from_secs(state.limits.request_timeout_secs);
    let body_idle = Duration::from_secs(state.limits.body_idle_timeout_secs);
    routes(body_limit, state.auth.clone())
        .router
        .fallback(|| async { ApiError::new(Code::NoSuchRoute, "no such route") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(Code::MethodNotAllowed, "this route does not take that method")
        })
        .layer(axum::middleware::from_fn_with_state(state.clone(), guard::rate_limit))
        // A body that stalls fails the read that waits for it (408 `body-timeout` from the handler);
        // the whole request, however slow its pieces, ends at the request timeout.
        .layer(tower_http::timeout::RequestBodyTimeoutLayer::new(body_idle))
        .layer(
            tower::ServiceBuilder::new()
                .layer(axum::error_handling::HandleErrorLayer::new(move |_: tower::BoxError| async move {
                    ApiError::new(
                        Code::RequestTimeout,
                        format!("the request took longer than {} seconds", request_timeout.as_secs()),
                    )
                }))
                .timeout(request_timeout),
        )
        // Preflights are answered here, before the rate limit and the key check.
        .layer(tower::util::option_layer(state.cors.clone()))
        .layer(axum::middleware::from_fn(observe::observe))
        .with_state(state)
}

/// The routes the router serves, as (method, axum path), for checking the OpenAPI document.
pub fn served_routes() -> Vec<(Method, &'static str)> {
    routes(0, Auth::open()).served
}

/// A router that remembers what it serves.
struct RouteTable {
    router: Router<ApiState>,
    served: Vec<(Method, &'static str)>,
}

impl RouteTable {
    fn route(mut self, method: Method, path: &'static str, handler: MethodRouter<ApiState>) -> Self {
        self.served.push((method, path));
        self.router = self.router.route(path, handler);
        self
    }
}

fn routes(body_limit: usize, auth: Auth) -> RouteTable {
    RouteTable { router: Router::new(), served: Vec::new() }
        .route(
            Method::POST,
            "/upload",
            post(upload::upload)
                .layer(DefaultBodyLimit::max(body_limit))
                // A part's headers are refused at 8 KiB, before the parser buffers them.
                .layer(axum::middleware::map_request(part_headers::guard))
                // Checked before a byte of the body is read.
                .layer(axum::middleware::from_fn_with_state((auth.clone(), Scope::Upload), auth::require_scope)),
        )
        .route(
            Method::POST,
            "/uploads",
            post(direct::create)
                .layer(axum::middleware::from_fn_with_state((auth, Scope::Upload), auth::require_scope)),
        )
        // The token in the URL is the grant: no API key (a browser sends the image itself).
        .route(Method::PUT, "/uploads/{id}", axum::routing::put(direct::put))
        .route(Method::POST, "/uploads/{id}/complete", post(direct::complete))
        .route(Method::GET, "/download", get(download::download_by_query))
        .route(Method::GET, "/download/{*key}", get(download::download_by_path))
        .route(Method::GET, "/status", get(download::status_by_query))
        .route(Method::GET, "/status/{*key}", get(download::status_by_path))
        .route(Method::GET, "/events", get(live::events))
        .route(Method::DELETE, "/images/{*key}", axum::routing::delete(images::delete_image))
        .route(Method::GET, "/img/{preset}/{*key}", get(img::preset))
        .route(Method::GET, "/t/{signature}/{*path}", get(img::transform))
        .route(Method::GET, "/health", get(health::health))
        .route(Method::GET, "/ready", get(health::ready))
        .route(Method::GET, "/openapi.json", get(openapi::openapi_json))
        .route(Method::GET, "/", get(page::page))
}

/// The download URL of every rendition of `key`, by name: the default one at `/download/{key}`,
/// the others at `/download/{key}/{name}`, signed when reads are.
pub fn rendition_urls(state: &ApiState, key: &str) -> std::collections::BTreeMap<String, String> {
    let names = crate::sandbox::rendition_names(&state.routes, key);
    names
        .names
        .iter()
        .map(|name| {
            let object = if *name == names.default { key.to_string() } else { crate::jobs::rendition_key(key, name) };
            (name.clone(), read_url(&state.auth, "download", &object))
        })
        .collect()
}

/// The URL of a key under `/download/` or `/status/`, signed when reads are.
pub fn read_url(auth: &Auth, route: &str, key: &str) -> String {
    let path = key_path(route, key);
    match auth.sign(route, key) {
        Some(query) => format!("{path}?{query}"),
        None => path,
    }
}
