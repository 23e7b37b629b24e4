//! `GET /img/{preset}/{key}`: a preset of a done image, and `GET /t/{signature}/...`: a signed
//! transform URL in imgproxy's format; each served from the store or rendered on this request by
//! `render::Renderer` (one render however many ask), answered as `/download` answers a stored
//! result.

use axum::extract::{Extension, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};

use super::download::{Ranges, ReadRefused, SignedQuery, negotiate, serve};
use super::status::{Status, checked, status};
use super::{ApiError, ApiState, CallerKey, Code};
use crate::render::RenderError;
use crate::storage::GetObject;

/// The answers `/img` and `/t` share besides the image: OpenAPI rows only.
#[derive(utoipa::IntoResponses)]
#[allow(dead_code, clippy::large_enum_variant)] // never built: the OpenAPI document reads its variants
enum VariantAnswers {
    /// The image is still being processed (with `Retry-After`)
    #[response(status = 202)]
    Pending(Status),
    /// Not modified (If-None-Match matched the ETag)
    #[response(status = 304)]
    NotModified,
    /// `rate-limited` (with `Retry-After`): the caller started `renders.rate_per_caller` renders this second
    #[response(status = 429)]
    RateLimited(ApiError),
    /// `too-busy` (with `Retry-After`): `renders.max_concurrent` renders are running; `unavailable`
    #[response(status = 503)]
    Busy(ApiError),
}

#[utoipa::path(
    get,
    path = "/img/{preset}/{key}",
    tag = "images",
    security((), ("apiKey" = [])),
    params(
        ("preset" = String, Path, description = "A preset of pixbox.toml's `[presets]`"),
        ("key" = String, Path, description = "The image's key; may contain `/`"),
        SignedQuery,
        ("Accept" = Option<String>, Header, description = "Picks the format of a `format = \"auto\"` preset: the first of AVIF, WebP it names, else the image's own"),
    ),
    responses(
        (status = 200, description = "The preset of the image, from the store or rendered now (and stored): its real Content-Type, ETag, immutable Cache-Control; `Vary: Accept` for an `auto` preset", content_type = "image/*", body = Vec<u8>),
        VariantAnswers,
        Ranges,
        (status = 400, description = "`invalid-key`", body = ApiError),
        ReadRefused,
        (status = 422, description = "`processing-failed`: the image's own job failed; `render-failed`: the preset's render failed (answered again for `renders.failure_ttl_secs`)", body = ApiError),
    )
)]
pub async fn preset(
    State(state): State<ApiState>,
    Extension(caller): Extension<CallerKey>,
    Path((preset, key)): Path<(String, String)>,
    Query(query): Query<SignedQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    state.auth.authorize_read(&headers, &format!("img/{preset}"), &key, &query.split().0)?;
    checked(&key)?;
    let Some(renderer) = &state.renderer else {
        return Err(ApiError::new(Code::NoSuchPreset, format!("no preset {preset:?}: none is configured")));
    };
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    let mut rate_refusal = None;
    let admit = || admitted(&state, &caller, &mut rate_refusal);
    let stored = super::status::stored_key(&state, &key).await?;
    let result = renderer.preset(&preset, &stored, |format| negotiate(&[format], accept).is_some(), admit).await;
    answer(&state, &key, &headers, renderer.negotiates(&preset), result, rate_refusal).await
}

#[utoipa::path(
    get,
    path = "/t/{signature}/{path}",
    tag = "images",
    params(
        ("signature" = String, Path, description = "imgproxy's URL signature: URL-safe base64 of HMAC-SHA256 (key `[transform_urls] key`) over `[transform_urls] salt` followed by the rest of the path"),
        ("path" = String, Path, description = "Processing options then the image's key, as imgproxy's: `rs:fit:300:200/g:sm/q:80/plain/{key}@webp` (options: rs/resize, s/size, rt, w, h, el, g, q, f/format; resizing types fit and fill)"),
    ),
    responses(
        (status = 200, description = "The variant, from the store or rendered now (and stored at `{key}/t/{id}.{ext}`), with the headers of `/download`", content_type = "image/*", body = Vec<u8>),
        VariantAnswers,
        Ranges,
        (status = 400, description = "`invalid-transform`, `invalid-key`", body = ApiError),
        (status = 403, description = "`invalid-signature`: nothing is rendered or stored", body = ApiError),
        (status = 404, description = "`not-found`; `no-such-route` when transform URLs are not configured", body = ApiError),
        (status = 422, description = "`processing-failed`, `render-failed`", body = ApiError),
    )
)]
pub async fn transform(
    State(state): State<ApiState>,
    Extension(caller): Extension<CallerKey>,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let Some(renderer) = &state.renderer else {
        return Err(ApiError::new(Code::NoSuchRoute, "transform URLs are not configured ([transform_urls])"));
    };
    // The path as sent (still percent-encoded): what the signature is over.
    let path = uri.path().strip_prefix("/t").unwrap_or_default();
    let mut transform = renderer.transform_url(path).map_err(refused)?;
    checked(&transform.key)?;
    let asked = transform.key.clone();
    transform.key = super::status::stored_key(&state, &asked).await?;
    let mut rate_refusal = None;
    let admit = || admitted(&state, &caller, &mut rate_refusal);
    let result = renderer.transform(&transform, admit).await;
    answer(&state, &asked, &headers, false, result, rate_refusal).await
}

/// The answer to a variant asked for: the stored image, `202` while the image's own job is
/// pending, or why not (`rate_refusal`: the caller's rate said no).
async fn answer(
    state: &ApiState,
    key: &str,
    headers: &HeaderMap,
    negotiated: bool,
    result: Result<GetObject, RenderError>,
    rate_refusal: Option<ApiError>,
) -> Result<Response, ApiError> {
    match result {
        Ok(object) => Ok(serve(state, object, headers, negotiated)),
        Err(RenderError::NotAdmitted) => Err(rate_refusal.expect("a refusal says why")),
        Err(RenderError::Pending(_)) => {
            let status = status(state, key).await?;
            Ok((StatusCode::ACCEPTED, [(header::RETRY_AFTER, "1")], axum::Json(status)).into_response())
        }
        Err(e) => Err(refused(e)),
    }
}

/// Whether `caller` may start a render now (`[renders] rate_per_caller`); if not, why in `refusal`.
fn admitted(state: &ApiState, caller: &CallerKey, refusal: &mut Option<ApiError>) -> bool {
    match state.guards.render_admitted(caller) {
        Ok(()) => true,
        Err(e) => {
            *refusal = Some(e);
            false
        }
    }
}

/// The api's answer to a variant that cannot be served.
fn refused(e: RenderError) -> ApiError {
    match e {
        RenderError::NoSuchPreset { .. } => ApiError::new(Code::NoSuchPreset, e.to_string()),
        RenderError::NotFound(_) => ApiError::new(Code::NotFound, e.to_string()),
        RenderError::JobFailed { .. } => ApiError::new(Code::ProcessingFailed, e.to_string()),
        // Answered 202 by the handler; kept here so every error has an answer.
        RenderError::Pending(_) => ApiError::new(Code::NotFound, e.to_string()),
        RenderError::Busy(_) | RenderError::Unavailable(_) => {
            ApiError::new(Code::TooBusy, e.to_string()).retry_after(1)
        }
        RenderError::NotAdmitted => ApiError::new(Code::RateLimited, "too many renders on request").retry_after(1),
        RenderError::Failed { .. } => ApiError::new(Code::RenderFailed, e.to_string()),
        RenderError::BadSignature => ApiError::new(Code::InvalidSignature, e.to_string()),
        RenderError::InvalidTransform(_) => ApiError::new(Code::InvalidTransform, e.to_string()),
        RenderError::NoTransforms => ApiError::new(Code::NoSuchRoute, e.to_string()),
        RenderError::Store(e) => ApiError::unavailable("storage", e),
    }
}
