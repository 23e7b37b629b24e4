//! `GET /download/{key}` (and `?key=`): the result with its real type, or where the job stands;
//! `GET /status/{key}` (and `?key=`): the job's state as JSON.

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use super::{ApiError, ApiState, read_url};
use crate::auth::Signed;
use crate::jobs::{self, Failure, RESERVED_PREFIX, State as JobState};
use crate::storage::{Bucket, StoreError, validate_key};

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct KeyQuery {
    /// The image's key, as returned by `/upload`.
    key: Option<String>,
    /// Expiry of a signed URL (Unix seconds), as returned by `/upload` when reads are signed.
    expires: Option<u64>,
    /// Signature of a signed URL.
    sig: Option<String>,
}

/// `expires` and `sig` of a signed URL (path forms).
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SignedQuery {
    /// Expiry of a signed URL (Unix seconds), as returned by `/upload` when reads are signed.
    expires: Option<u64>,
    /// Signature of a signed URL.
    sig: Option<String>,
}

impl KeyQuery {
    fn split(self) -> (Option<String>, Signed) {
        (self.key, Signed { expires: self.expires, sig: self.sig })
    }
}

impl From<SignedQuery> for Signed {
    fn from(q: SignedQuery) -> Self {
        Signed { expires: q.expires, sig: q.sig }
    }
}

/// The JSON of `/status` (and of `/download` while not done).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Status {
    pub key: String,
    /// `pending`, `done` or `failed`.
    #[schema(value_type = String, example = "done")]
    pub state: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<Failure>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    pub status_url: String,
    pub download_url: String,
}

/// The body of a 422 from `/download`: why processing failed.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct FailedDownload {
    /// Always `processing-failed`.
    pub code: String,
    pub message: String,
    pub status: Status,
}

#[utoipa::path(
    get,
    path = "/download/{key}",
    tag = "images",
    security((), ("apiKey" = [])),
    params(("key" = String, Path, description = "The image's key; may contain `/`"), SignedQuery),
    responses(
        (status = 200, description = "The result, with its real Content-Type, ETag, Cache-Control and X-Content-Type-Options: nosniff", content_type = "image/*", body = Vec<u8>),
        (status = 202, description = "Still pending", body = Status),
        (status = 304, description = "Not modified (If-None-Match matched the ETag)"),
        (status = 400, description = "`invalid-key`", body = ApiError),
        (status = 401, description = "`unauthorized`: reads need a key with the `read` scope (or a signed URL)", body = ApiError),
        (status = 403, description = "`forbidden`, `invalid-signature`, `signature-expired`", body = ApiError),
        (status = 404, description = "`not-found`", body = ApiError),
        (status = 422, description = "Processing failed for good", body = FailedDownload),
        (status = 503, description = "`unavailable`", body = ApiError),
    )
)]
pub async fn download_by_path(
    State(state): State<ApiState>,
    Path(key): Path<String>,
    Query(signed): Query<SignedQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    download(&state, &key, &headers, &signed.into()).await
}

#[utoipa::path(
    get,
    path = "/download",
    tag = "images",
    security((), ("apiKey" = [])),
    params(KeyQuery),
    responses(
        (status = 200, description = "The result (as `/download/{key}`)", content_type = "image/*", body = Vec<u8>),
        (status = 202, description = "Still pending", body = Status),
        (status = 304, description = "Not modified"),
        (status = 400, description = "`missing-key`, `invalid-key`", body = ApiError),
        (status = 401, description = "`unauthorized`: reads need a key with the `read` scope (or a signed URL)", body = ApiError),
        (status = 403, description = "`forbidden`, `invalid-signature`, `signature-expired`", body = ApiError),
        (status = 404, description = "`not-found`", body = ApiError),
        (status = 422, description = "Processing failed for good", body = FailedDownload),
        (status = 503, description = "`unavailable`", body = ApiError),
    )
)]
pub async fn download_by_query(
    State(state): State<ApiState>,
    Query(query): Query<KeyQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let (key, signed) = query.split();
    download(&state, &required(key)?, &headers, &signed).await
}

#[utoipa::path(
    get,
    path = "/status/{key}",
    tag = "images",
    security((), ("apiKey" = [])),
    params(("key" = String, Path, description = "The image's key; may contain `/`"), SignedQuery),
    responses(
        (status = 200, description = "Where the job stands", body = Status),
        (status = 400, description = "`invalid-key`", body = ApiError),
        (status = 401, description = "`unauthorized`: reads need a key with the `read` scope (or a signed URL)", body = ApiError),
        (status = 403, description = "`forbidden`, `invalid-signature`, `signature-expired`", body = ApiError),
        (status = 404, description = "`not-found`", body = ApiError),
        (status = 503, description = "`unavailable`", body = ApiError),
    )
)]
pub async fn status_by_path(
    State(state): State<ApiState>,
    Path(key): Path<String>,
    Query(signed): Query<SignedQuery>,
    headers: HeaderMap,
) -> Result<Json<Status>, ApiError> {
    state.auth.authorize_read(&headers, "status", &key, &signed.into())?;
    status(&state, &key).await.map(Json)
}

#[utoipa::path(
    get,
    path = "/status",
    tag = "images",
    security((), ("apiKey" = [])),
    params(KeyQuery),
    responses(
        (status = 200, description = "Where the job stands", body = Status),
        (status = 400, description = "`missing-key`, `invalid-key`", body = ApiError),
        (status = 401, description = "`unauthorized`: reads need a key with the `read` scope (or a signed URL)", body = ApiError),
        (status = 403, description = "`forbidden`, `invalid-signature`, `signature-expired`", body = ApiError),
        (status = 404, description = "`not-found`", body = ApiError),
        (status = 503, description = "`unavailable`", body = ApiError),
    )
)]
pub async fn status_by_query(
    State(state): State<ApiState>,
    Query(query): Query<KeyQuery>,
    headers: HeaderMap,
) -> Result<Json<Status>, ApiError> {
    let (key, signed) = query.split();
    let key = required(key)?;
    state.auth.authorize_read(&headers, "status", &key, &signed)?;
    status(&state, &key).await.map(Json)
}

fn required(key: Option<String>) -> Result<String, ApiError> {
    key.filter(|k| !k.is_empty())
        .ok_or_else(|| ApiError::new(StatusCode::BAD_REQUEST, "missing-key", "the query parameter key is required"))
}

fn checked(key: &str) -> Result<(), ApiError> {
    validate_key(key)?;
    if key.starts_with(RESERVED_PREFIX) {
        return Err(not_found(key));
    }
    Ok(())
}

fn not_found(key: &str) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not-found", format!("no image with key {key:?}"))
}

async fn status(state: &ApiState, key: &str) -> Result<Status, ApiError> {
    checked(key)?;
    let mut status = Status {
        key: key.into(),
        state: "pending",
        error: None,
        media_type: None,
        size: None,
        status_url: read_url(&state.auth, "status", key),
        download_url: read_url(&state.auth, "download", key),
    };
    match jobs::state(&*state.store, key).await? {
        JobState::Done(info) => {
            status.state = "done";
            status.media_type = Some(info.meta.content_type);
            status.size = Some(info.size);
        }
        JobState::Pending => {}
        JobState::Failed(failure) => {
            status.state = "failed";
            status.error = Some(failure);
        }
        JobState::Unknown => return Err(not_found(key)),
    }
    Ok(status)
}

async fn download(state: &ApiState, key: &str, headers: &HeaderMap, signed: &Signed) -> Result<Response, ApiError> {
    state.auth.authorize_read(headers, "download", key, signed)?;
    checked(key)?;
    let object = match state.store.get(Bucket::Permanent, key).await {
        Ok(object) => object,
        Err(StoreError::NotFound { .. }) => {
            let status = status(state, key).await?;
            return Ok(match status.state {
                "failed" => {
                    let reason = status.error.as_ref().map_or("unknown", |f| f.message.as_str());
                    let body = serde_json::json!({
                        "code": "processing-failed",
                        "message": format!("{key} could not be processed: {reason}"),
                        "status": status,
                    });
                    (StatusCode::UNPROCESSABLE_ENTITY, Json(body)).into_response()
                }
                "pending" => (StatusCode::ACCEPTED, Json(status)).into_response(),
                // Finished between the two reads: the client may simply ask again.
                _ => (StatusCode::ACCEPTED, [(header::RETRY_AFTER, "1")], Json(status)).into_response(),
            });
        }
        Err(e) => return Err(e.into()),
    };
    let etag = format!("\"{}\"", object.info.etag);
    let mut response = if headers.get(header::IF_NONE_MATCH).and_then(|v| v.to_str().ok()) == Some(etag.as_str()) {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        let mut response = Body::from_stream(object.body).into_response();
        if let Ok(len) = HeaderValue::from_str(&object.info.size.to_string()) {
            response.headers_mut().insert(header::CONTENT_LENGTH, len);
        }
        response
    };
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
    Ok(response)
}
