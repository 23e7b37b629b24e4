//! `GET /download/{key}` (and `?key=`): the result with its real type, or where the job stands;
//! a rendition other than the route's default at `/download/{key}/{name}` (or `?rendition=`),
//! in the format the client's `Accept` names when the rendition is made in several;
//! `GET /status/{key}` (and `?key=`): the job's state as JSON, with every rendition.

use axum::Json;
use axum::body::Body;
use axum::extract::{Extension, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use super::status::{JobStatus, Status, checked, status};
use super::{ApiError, ApiState, CallerKey, Code};
use crate::auth::Signed;
use crate::imaging::Format;
use crate::jobs;
use crate::sandbox::{configured_route, rendition_names, variant_name};
use crate::storage::{Bucket, GetObject, StoreError};

/// The refusals every read (`/download`, `/status`) documents alike: OpenAPI rows only.
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)] // never built: the OpenAPI document reads its variants
pub(super) enum ReadRefused {
    /// `unauthorized`: reads need a key with the `read` scope (or a signed URL)
    #[response(status = 401)]
    Unauthorized(ApiError),
    /// `forbidden`, `invalid-signature`, `signature-expired`
    #[response(status = 403)]
    Forbidden(ApiError),
    /// `not-found`
    #[response(status = 404)]
    NotFound(ApiError),
}

/// The answers to a `Range` request on every read of a stored image: OpenAPI rows only.
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)] // never built: the OpenAPI document reads its variants
pub(super) enum Ranges {
    /// One byte range (`Range: bytes=first-last`, `bytes=first-`, `bytes=-suffix`), with `Content-Range`
    #[response(status = 206)]
    Partial,
    /// The range starts past the end (`Content-Range: bytes */size`)
    #[response(status = 416)]
    NotSatisfiable,
}

/// `/download`'s 503: an OpenAPI row only.
#[derive(utoipa::IntoResponses)]
#[response(status = 503, description = "`unavailable`")]
#[allow(dead_code)] // never built: the OpenAPI document reads it
pub(super) struct Unavailable(ApiError);

/// `/status`'s 503 (it may wait): an OpenAPI row only.
#[derive(utoipa::IntoResponses)]
#[response(
    status = 503,
    description = "`unavailable`; `too-busy` when `limits.max_watchers` waits are open (or the caller's `max_watchers_per_caller`)"
)]
#[allow(dead_code)] // never built: the OpenAPI document reads it
struct UnavailableOrBusy(ApiError);

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct KeyQuery {
    /// The image's key, as returned by `/upload`.
    key: Option<String>,
    /// Expiry of a signed URL (Unix seconds), as returned by `/upload` when reads are signed.
    expires: Option<u64>,
    /// Signature of a signed URL.
    sig: Option<String>,
    /// Which rendition to download (`/download` only); default: the route's default rendition.
    rendition: Option<String>,
    /// `/status` only: seconds (0 to 30) to wait for the job to leave `pending` before answering.
    wait: Option<String>,
}

/// `expires` and `sig` of a signed URL (path forms).
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SignedQuery {
    /// Expiry of a signed URL (Unix seconds), as returned by `/upload` when reads are signed.
    expires: Option<u64>,
    /// Signature of a signed URL.
    sig: Option<String>,
    /// Which rendition to download (`/download` only); default: the route's default rendition.
    rendition: Option<String>,
    /// `/status` only: seconds (0 to 30) to wait for the job to leave `pending` before answering.
    wait: Option<String>,
}

impl KeyQuery {
    fn split(self) -> (Option<String>, Signed, Option<String>) {
        (self.key, Signed { expires: self.expires, sig: self.sig }, self.rendition)
    }
}

impl SignedQuery {
    pub(super) fn split(self) -> (Signed, Option<String>) {
        (Signed { expires: self.expires, sig: self.sig }, self.rendition)
    }
}

/// The body of a 422 from `/download`: why processing failed.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct FailedDownload {
    /// Always `processing-failed`.
    #[schema(value_type = String, example = "processing-failed")]
    pub code: Code,
    pub message: String,
    pub status: Status,
}

#[utoipa::path(
    get,
    path = "/download/{key}",
    tag = "images",
    security((), ("apiKey" = [])),
    params(
        ("key" = String, Path, description = "The image's key; may contain `/`"),
        ("Accept" = Option<String>, Header, description = "For a rendition made with `format = \"auto\"`: the first of the route's `formats` (e.g. `image/avif`, `image/webp`) named here is served; otherwise the fallback (the input's format). Wildcards do not count."),
        SignedQuery
    ),
    responses(
        (status = 200, description = "The result, with its real Content-Type, ETag, Cache-Control and X-Content-Type-Options: nosniff; `Vary: Accept` when the rendition comes in several formats", content_type = "image/*", body = Vec<u8>),
        (status = 202, description = "Still pending (with `Retry-After`)", body = Status),
        (status = 304, description = "Not modified (If-None-Match matched the ETag)"),
        Ranges,
        (status = 400, description = "`invalid-key`", body = ApiError),
        ReadRefused,
        (status = 422, description = "Processing failed for good", body = FailedDownload),
        Unavailable,
    )
)]
pub async fn download_by_path(
    State(state): State<ApiState>,
    Path(key): Path<String>,
    Query(query): Query<SignedQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let (signed, rendition) = query.split();
    download(&state, &key, rendition.as_deref(), &headers, &signed).await
}

#[utoipa::path(
    get,
    path = "/download",
    tag = "images",
    security((), ("apiKey" = [])),
    params(
        KeyQuery,
        ("Accept" = Option<String>, Header, description = "Picks the format of a `format = \"auto\"` rendition, as for `/download/{key}`"),
    ),
    responses(
        (status = 200, description = "The result (as `/download/{key}`, `Vary: Accept` included)", content_type = "image/*", body = Vec<u8>),
        (status = 202, description = "Still pending (with `Retry-After`)", body = Status),
        (status = 304, description = "Not modified"),
        Ranges,
        (status = 400, description = "`missing-key`, `invalid-key`", body = ApiError),
        ReadRefused,
        (status = 422, description = "Processing failed for good", body = FailedDownload),
        Unavailable,
    )
)]
pub async fn download_by_query(
    State(state): State<ApiState>,
    Query(query): Query<KeyQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let (key, signed, rendition) = query.split();
    download(&state, &required(key)?, rendition.as_deref(), &headers, &signed).await
}

#[utoipa::path(
    get,
    path = "/status/{key}",
    tag = "images",
    security((), ("apiKey" = [])),
    params(("key" = String, Path, description = "The image's key; may contain `/`"), SignedQuery),
    responses(
        (status = 200, description = "Where the job stands; with `?wait=`, as soon as it is no longer pending (or when the wait is over)", body = Status),
        (status = 400, description = "`invalid-key`, `invalid-wait`", body = ApiError),
        ReadRefused,
        UnavailableOrBusy,
    )
)]
pub async fn status_by_path(
    State(state): State<ApiState>,
    Extension(caller): Extension<CallerKey>,
    Path(key): Path<String>,
    Query(query): Query<SignedQuery>,
    headers: HeaderMap,
) -> Result<Json<Status>, ApiError> {
    let wait = super::live::wait_time(query.wait.as_deref())?;
    state.auth.authorize_read(&headers, "status", &key, &query.split().0)?;
    status_waiting(&state, &caller, &key, wait).await.map(Json)
}

#[utoipa::path(
    get,
    path = "/status",
    tag = "images",
    security((), ("apiKey" = [])),
    params(KeyQuery),
    responses(
        (status = 200, description = "Where the job stands (`?wait=` as for `/status/{key}`)", body = Status),
        (status = 400, description = "`missing-key`, `invalid-key`, `invalid-wait`", body = ApiError),
        ReadRefused,
        UnavailableOrBusy,
    )
)]
pub async fn status_by_query(
    State(state): State<ApiState>,
    Extension(caller): Extension<CallerKey>,
    Query(query): Query<KeyQuery>,
    headers: HeaderMap,
) -> Result<Json<Status>, ApiError> {
    let wait = super::live::wait_time(query.wait.as_deref())?;
    let (key, signed, _) = query.split();
    let key = required(key)?;
    state.auth.authorize_read(&headers, "status", &key, &signed)?;
    status_waiting(&state, &caller, &key, wait).await.map(Json)
}

/// The status now, or with `?wait=` once the job is settled (or the wait is over).
async fn status_waiting(
    state: &ApiState,
    caller: &CallerKey,
    key: &str,
    wait: Option<std::time::Duration>,
) -> Result<Status, ApiError> {
    match wait {
        Some(wait) => super::live::status_after(state, caller, key, wait).await,
        None => status(state, key).await,
    }
}

/// The one byte range `Range` asks for in an object of `size` bytes, first and last byte:
/// `None` for no range pixbox serves (several ranges, another unit: the whole object is sent),
/// `Err` when it starts past the end.
fn byte_range(range: &str, size: u64) -> Option<Result<(u64, u64), ()>> {
    let spec = range.trim().strip_prefix("bytes=")?;
    if spec.contains(',') {
        return None;
    }
    let (first, last) = spec.split_once('-')?;
    let (first, last) = match (first.trim(), last.trim()) {
        ("", suffix) => {
            let suffix: u64 = suffix.parse().ok()?;
            if suffix == 0 {
                return Some(Err(()));
            }
            (size.saturating_sub(suffix), size.checked_sub(1)?)
        }
        (first, "") => (first.parse().ok()?, u64::MAX),
        (first, last) => {
            let (first, last): (u64, u64) = (first.parse().ok()?, last.parse().ok()?);
            if first > last {
                // Not a valid range (RFC 9110, 14.1.1): the header is ignored.
                return None;
            }
            (first, last)
        }
    };
    if first >= size {
        return Some(Err(()));
    }
    Some(Ok((first, last.min(size - 1))))
}

/// Whether an `If-None-Match` list names `etag`: `*`, or any of its tags, weak or strong (the
/// weak comparison RFC 9110 asks for here).
fn matches_etag(tags: &str, etag: &str) -> bool {
    tags.trim() == "*" || tags.split(',').any(|tag| tag.trim().trim_start_matches("W/") == etag)
}

/// Bytes `first..=last` of a body, read in order; reading stops past `last`.
fn slice(
    body: crate::storage::ByteStream,
    first: u64,
    last: u64,
) -> impl futures::Stream<Item = std::io::Result<bytes::Bytes>> {
    use futures::StreamExt;
    body.scan(0u64, move |at, chunk| {
        let start = *at;
        if start > last {
            return futures::future::ready(None);
        }
        let chunk = chunk.map(|bytes| {
            *at = start + bytes.len() as u64;
            let from = first.max(start) - start;
            let to = (last + 1).min(*at).saturating_sub(start);
            if from < to { bytes.slice(from as usize..to as usize) } else { bytes::Bytes::new() }
        });
        futures::future::ready(Some(chunk))
    })
}

fn required(key: Option<String>) -> Result<String, ApiError> {
    key.filter(|k| !k.is_empty()).ok_or_else(|| ApiError::new(Code::MissingKey, "the query parameter key is required"))
}

/// What a download names: the key of the job, the stored object and the rendition.
struct Named {
    job_key: String,
    object_key: String,
    rendition: String,
}

/// Which stored object a download names, and the key of the job it belongs to: `?rendition=`
/// picks one of the key's renditions; a path `{key}/{name}` whose last segment is a rendition of
/// the route of `{key}` is that rendition; any other key is its default rendition.
fn resolve(state: &ApiState, key: &str, rendition: Option<&str>) -> Result<Named, ApiError> {
    if let Some(name) = rendition {
        let names = rendition_names(&state.routes, key);
        if !names.contains(name) {
            return Err(ApiError::new(
                Code::NoSuchRendition,
                format!("the route of {key:?} makes no rendition {name:?} (it makes {})", names.names.join(", ")),
            ));
        }
        let object = if name == names.default { key.to_string() } else { jobs::rendition_key(key, name) };
        return Ok(Named { job_key: key.to_string(), object_key: object, rendition: name.to_string() });
    }
    if let Some((base, name)) = key.rsplit_once('/') {
        let names = rendition_names(&state.routes, base);
        if names.contains(name) && name != names.default {
            return Ok(Named { job_key: base.to_string(), object_key: key.to_string(), rendition: name.to_string() });
        }
    }
    let rendition = rendition_names(&state.routes, key).default;
    Ok(Named { job_key: key.to_string(), object_key: key.to_string(), rendition })
}

/// The format variant of a rendition made with `format = "auto"` that the client takes, in the
/// route's order of preference. Only media types the client names count: a browser that sends
/// `*/*` or `image/*` may still not decode AVIF.
pub(super) fn negotiate(variants: &[Format], accept: Option<&str>) -> Option<Format> {
    let accept = accept?;
    variants.iter().copied().find(|format| {
        accept.split(',').any(|entry| {
            let mut parts = entry.split(';');
            let range = parts.next().unwrap_or("").trim();
            let q = parts
                .filter_map(|p| p.trim().strip_prefix("q=").or_else(|| p.trim().strip_prefix("Q=")))
                .find_map(|q| q.trim().parse::<f32>().ok())
                .unwrap_or(1.0);
            range.eq_ignore_ascii_case(format.media_type()) && q > 0.0
        })
    })
}

async fn download(
    state: &ApiState,
    key: &str,
    rendition: Option<&str>,
    headers: &HeaderMap,
    signed: &Signed,
) -> Result<Response, ApiError> {
    state.auth.authorize_read(headers, "download", key, signed)?;
    checked(key)?;
    let Named { job_key, object_key, rendition } = resolve(state, key, rendition)?;
    let key = job_key.as_str();
    // A duplicate upload's objects are those of the key it is an alias of.
    let stored = super::status::stored_key(state, key).await?;
    let object_key = format!("{stored}{}", &object_key[key.len()..]);
    // `format = "auto"`: the variant the client takes, else (or if it was not made: the route
    // changed since) the fallback.
    let variants = configured_route(&state.routes, key).map(|r| r.variant_formats(&rendition)).unwrap_or_default();
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    let mut variant = None;
    if let Some(format) = negotiate(&variants, accept) {
        let variant_key = jobs::rendition_key(&stored, &variant_name(&rendition, format));
        match state.store.get(Bucket::Permanent, &variant_key).await {
            Ok(object) => variant = Some(object),
            Err(StoreError::NotFound { .. }) => {}
            Err(e) => return Err(e.into()),
        }
    }
    let fetched = match variant {
        Some(object) => Ok(object),
        None => state.store.get(Bucket::Permanent, &object_key).await,
    };
    let object = match fetched {
        Ok(object) => object,
        Err(StoreError::NotFound { .. }) => {
            let status = status(state, key).await?;
            if status.state == JobStatus::Done && object_key != stored {
                // Done, but this rendition was not made (the route changed since).
                return Err(ApiError::new(
                    Code::NoSuchRendition,
                    format!("{key} has no rendition stored at {object_key:?}"),
                ));
            }
            return Ok(match status.state {
                JobStatus::Failed => {
                    let reason = status.error.as_ref().map_or("unknown", |f| f.message.as_str());
                    let code = Code::ProcessingFailed;
                    let message = format!("{key} could not be processed: {reason}");
                    (code.status(), Json(FailedDownload { code, message, status })).into_response()
                }
                // Finished between the two reads: the result is there now.
                JobStatus::Done => match state.store.get(Bucket::Permanent, &object_key).await {
                    Ok(object) => serve(state, object, headers, !variants.is_empty()),
                    Err(StoreError::NotFound { .. }) => {
                        (StatusCode::ACCEPTED, [(header::RETRY_AFTER, "1")], Json(status)).into_response()
                    }
                    Err(e) => return Err(e.into()),
                },
                JobStatus::Pending => {
                    (StatusCode::ACCEPTED, [(header::RETRY_AFTER, "1")], Json(status)).into_response()
                }
            });
        }
        Err(e) => return Err(e.into()),
    };
    Ok(serve(state, object, headers, !variants.is_empty()))
}

/// A stored result as every read answers it: its real type and length, `ETag` (and `304` when
/// `If-None-Match` names it), immutable `Cache-Control` (private when reads need a key),
/// `nosniff`, `Vary: Accept` when the same URL answers in several formats (`negotiated`), and
/// one byte range when asked (`206`; `416` when it starts past the end).
pub(super) fn serve(state: &ApiState, object: GetObject, headers: &HeaderMap, negotiated: bool) -> Response {
    let etag = format!("\"{}\"", object.info.etag);
    let size = object.info.size;
    let text = |name| headers.get(name).and_then(|v: &HeaderValue| v.to_str().ok());
    // `If-Range` with another validator: the representation changed, so the whole of it.
    let range = text(header::RANGE).filter(|_| text(header::IF_RANGE).is_none_or(|v| v == etag));
    let mut response = if text(header::IF_NONE_MATCH).is_some_and(|tags| matches_etag(tags, &etag)) {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        match range.and_then(|r| byte_range(r, size)) {
            None => {
                let mut response = Body::from_stream(object.body).into_response();
                response.headers_mut().insert(header::CONTENT_LENGTH, HeaderValue::from(size));
                response
            }
            Some(Err(())) => {
                // An error about the request, not the image: nothing to keep, no image type.
                let mut response = StatusCode::RANGE_NOT_SATISFIABLE.into_response();
                let h = response.headers_mut();
                if let Ok(v) = HeaderValue::from_str(&format!("bytes */{size}")) {
                    h.insert(header::CONTENT_RANGE, v);
                }
                h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
                return response;
            }
            Some(Ok((first, last))) => {
                let mut response =
                    (StatusCode::PARTIAL_CONTENT, Body::from_stream(slice(object.body, first, last))).into_response();
                let h = response.headers_mut();
                h.insert(header::CONTENT_LENGTH, HeaderValue::from(last - first + 1));
                if let Ok(v) = HeaderValue::from_str(&format!("bytes {first}-{last}/{size}")) {
                    h.insert(header::CONTENT_RANGE, v);
                }
                response
            }
        }
    };
    response.headers_mut().insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    let h = response.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&object.info.meta.content_type) {
        h.insert(header::CONTENT_TYPE, v);
    }
    if let Ok(v) = HeaderValue::from_str(&etag) {
        h.insert(header::ETAG, v);
    }
    // Keys are never reused, so a result never changes under its key.
    let cache = if state.auth.reads_are_public() {
        "public, max-age=31536000, immutable"
    } else {
        // Behind a key only the caller's own cache may keep it.
        "private, max-age=31536000, immutable"
    };
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    if negotiated {
        // Caches must keep one copy per Accept: the same URL answers in several formats.
        h.insert(header::VARY, HeaderValue::from_static("Accept"));
    }
    response
}

#[cfg(test)]
mod tests {
    use super::{byte_range, matches_etag};

    #[test]
    fn if_none_match_lists_weak_tags_and_star_match() {
        let etag = "\"abc\"";
        for tags in ["\"abc\"", "W/\"abc\"", "\"x\", \"abc\"", "*", " \"y\" ,W/\"abc\" "] {
            assert!(matches_etag(tags, etag), "{tags}");
        }
        for tags in ["\"abd\"", "abc", "\"x\", \"y\"", ""] {
            assert!(!matches_etag(tags, etag), "{tags}");
        }
    }

    #[test]
    fn byte_ranges_are_read_as_rfc_9110_says() {
        let size = 1000;
        assert_eq!(byte_range("bytes=0-9", size), Some(Ok((0, 9))));
        assert_eq!(byte_range("bytes=990-", size), Some(Ok((990, 999))));
        assert_eq!(byte_range("bytes=-10", size), Some(Ok((990, 999))));
        assert_eq!(byte_range("bytes=-5000", size), Some(Ok((0, 999))), "a suffix longer than the object");
        assert_eq!(byte_range("bytes=500-5000", size), Some(Ok((500, 999))), "the end is clamped");
        assert_eq!(byte_range("bytes=1000-", size), Some(Err(())), "starts past the end");
        assert_eq!(byte_range("bytes=9-0", size), None, "not a valid range: ignored");
        assert_eq!(byte_range("bytes=999-1000", size), Some(Ok((999, 999))));
        assert_eq!(byte_range("bytes=-0", size), Some(Err(())));
        for whole in ["bytes=0-1,5-6", "items=0-1", "bytes=a-b", "bytes=", "0-9"] {
            assert_eq!(byte_range(whole, size), None, "{whole}: the whole object");
        }
    }
}
