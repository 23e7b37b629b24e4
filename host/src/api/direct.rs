//! Direct uploads: the bytes go to the bucket without passing through an api process.
//! `POST /uploads` hands out, on S3, a presigned POST to the temp bucket (its policy holds the
//! exact key, the size range and a short expiry); on the embedded backend, a one-time `PUT` URL on
//! pixbox itself (`PUT /uploads/{id}?token=`). `POST /uploads/{id}/complete` checks the object as
//! any upload (header probe, pixel limits) and queues its job; repeating it answers the same.

use std::time::Duration;

use axum::Json;
use axum::body::Body;
use axum::extract::{Extension, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use base64::Engine as _;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use sha2::Digest as _;
use subtle::ConstantTimeEq as _;

use super::upload::{UploadResponse, Uploaded, check_webhook, new_image_id, normalise_prefix, parse_focus, refusal};
use super::{ApiError, ApiState, CallerKey, Code};
use crate::auth::Caller;
use crate::lifecycle::{self, CompleteError, Direct};
use crate::storage::{Bucket, PresignedPost};

#[derive(Debug, Deserialize)]
pub struct CreateQuery {
    prefix: Option<String>,
    focus: Option<String>,
    webhook: Option<String>,
}

/// Where and how to send the image of a direct upload.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DirectUpload {
    /// The upload's id, for `POST /uploads/{id}/complete`.
    pub id: String,
    /// `POST` (S3: an HTML form upload to the bucket) or `PUT` (the embedded backend: the image as
    /// the request body).
    #[schema(example = "PUT")]
    pub method: &'static str,
    /// Where to send it: the bucket's URL, or a path on this api with a one-time token.
    pub url: String,
    /// For `POST`: the form fields to send before the image's part, which is named `file`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fields: Option<std::collections::BTreeMap<String, String>>,
    /// The largest image accepted, in bytes (`limits.max_image_bytes`).
    pub max_bytes: u64,
    /// When the URL stops working (Unix seconds).
    pub expires_at: u64,
    /// Where to confirm once the image is sent.
    pub complete_url: String,
}

#[utoipa::path(
    post,
    path = "/uploads",
    tag = "images",
    security(("apiKey" = [])),
    params(
        ("prefix" = Option<String>, Query, description = "Route prefix, as for `/upload`"),
        ("focus" = Option<String>, Query, description = "Focal point, as for `/upload`"),
        ("webhook" = Option<String>, Query, description = "Webhook URL, as for `/upload`"),
    ),
    responses(
        (status = 201, description = "Send the image as `method` says within `limits.direct_upload_ttl_secs`, then complete", body = DirectUpload),
        (status = 400, description = "`invalid-prefix`, `invalid-focus`, `webhook-not-allowed`", body = ApiError),
        (status = 401, description = "`unauthorized`", body = ApiError),
        (status = 403, description = "`forbidden`: the key lacks the `upload` scope", body = ApiError),
        (status = 503, description = "`unavailable`", body = ApiError),
    )
)]
pub async fn create(
    State(state): State<ApiState>,
    Extension(who): Extension<Caller>,
    Query(query): Query<CreateQuery>,
) -> Result<(StatusCode, Json<DirectUpload>), ApiError> {
    let prefix = query.prefix.as_deref().map(normalise_prefix).transpose()?.unwrap_or_default();
    let focus = query.focus.as_deref().map(parse_focus).transpose()?;
    let webhook = query.webhook.as_deref().map(|url| check_webhook(&state, url)).transpose()?;
    let id = new_image_id();
    let ttl = Duration::from_secs(state.limits.direct_upload_ttl_secs);
    let expires = std::time::SystemTime::now() + ttl;
    let expires_at = expires.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let max_bytes = state.limits.max_image_bytes;
    let post = state.store.presigned_post(Bucket::Temp, &lifecycle::incoming_key(&id), max_bytes, ttl).await?;
    let (method, url, fields, token_sha256) = match post {
        Some(PresignedPost { url, fields }) => ("POST", url, Some(fields), None),
        None => {
            let mut bits = [0u8; 32];
            getrandom::fill(&mut bits).expect("the operating system's random source");
            let token = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bits);
            let url = format!("/uploads/{id}?token={token}");
            ("PUT", url, None, Some(hex::encode(sha2::Sha256::digest(token.as_bytes()))))
        }
    };
    let owner = match who {
        Caller::Key(id) => Some(id),
        Caller::Anonymous => None,
    };
    let record = Direct {
        id: id.clone(),
        prefix,
        focus,
        webhook,
        owner,
        expires_ms: expires_at * 1000,
        sweep_after_ms: expires_at * 1000 + ttl.min(lifecycle::DIRECT_GRACE).as_millis() as u64,
        received_sweep_after_ms: expires_at * 1000 + ttl.min(lifecycle::DIRECT_RECEIVED_GRACE).as_millis() as u64,
        token_sha256,
        received: false,
        key: None,
        image: None,
        queued: false,
        deduplicated: false,
    };
    lifecycle::save_direct(&*state.store, &record).await?;
    let complete_url = format!("/uploads/{id}/complete");
    Ok((StatusCode::CREATED, Json(DirectUpload { id, method, url, fields, max_bytes, expires_at, complete_url })))
}

#[derive(Debug, Deserialize)]
pub struct TokenQuery {
    token: Option<String>,
}

/// What a `PUT` stored.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Received {
    pub bytes: u64,
    pub complete_url: String,
}

#[utoipa::path(
    put,
    path = "/uploads/{id}",
    tag = "images",
    params(
        ("id" = String, Path, description = "The direct upload's id"),
        ("token" = String, Query, description = "The one-time token of the URL `POST /uploads` returned"),
    ),
    request_body(content = Vec<u8>, content_type = "application/octet-stream", description = "The image, at most `limits.max_image_bytes`"),
    responses(
        (status = 200, description = "Stored; now complete the upload", body = Received),
        (status = 403, description = "`invalid-upload-token`: wrong, used or expired", body = ApiError),
        (status = 404, description = "`no-such-upload`", body = ApiError),
        (status = 408, description = "`body-timeout`", body = ApiError),
        (status = 413, description = "`image-too-large`: over `limits.max_image_bytes` (nothing is stored)", body = ApiError),
    )
)]
pub async fn put(
    State(state): State<ApiState>,
    Extension(caller): Extension<CallerKey>,
    Path(id): Path<String>,
    Query(query): Query<TokenQuery>,
    body: Body,
) -> Result<Json<Received>, ApiError> {
    let store = &*state.store;
    let no_such = || ApiError::new(Code::NoSuchUpload, format!("no direct upload {id:?}"));
    if !is_id(&id) {
        return Err(no_such());
    }
    let mut record = lifecycle::direct(store, &id).await?.ok_or_else(no_such)?;
    let presented = hex::encode(sha2::Sha256::digest(query.token.unwrap_or_default().as_bytes()));
    let expected = record.token_sha256.clone().unwrap_or_default();
    let matches = bool::from(presented.as_bytes().ct_eq(expected.as_bytes())) && !expected.is_empty();
    let now_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
    let refused = || {
        ApiError::new(
            Code::InvalidUploadToken,
            "this upload URL's token does not match, was used already, or expired: ask POST /uploads for a new one",
        )
    };
    if !matches || record.received || now_ms > record.expires_ms {
        return Err(refused());
    }
    // Held while the body is read, as for `/upload`.
    let _slot = state.guards.upload_slot(&caller)?;
    // Spent before the body is read, by a write-once marker: of two PUTs at once, one goes on.
    let spent = format!("{}.spent", lifecycle::direct_key(&id));
    if !crate::jobs::put_record_if_absent(store, Bucket::Temp, &spent, &now_ms).await? {
        return Err(refused());
    }
    // Read within the limit: the first byte past it refuses the upload, and nothing is stored.
    let limit = state.limits.max_image_bytes;
    let mut stream = body.into_data_stream();
    let mut chunks = Vec::new();
    let mut len = 0u64;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk
            .map_err(|e| ApiError::new(Code::BodyTimeout, format!("the image stopped arriving or broke off: {e}")))?;
        len += chunk.len() as u64;
        if len > limit {
            return Err(ApiError::new(
                Code::ImageTooLarge,
                format!("the image is larger than the limit of {limit} bytes (limits.max_image_bytes)"),
            ));
        }
        chunks.push(chunk);
    }
    let bytes: bytes::Bytes = chunks.concat().into();
    let meta =
        crate::storage::ObjectMeta { content_type: "application/octet-stream".into(), metadata: Default::default() };
    store.put(Bucket::Temp, &lifecycle::incoming_key(&id), bytes, &meta).await?;
    record.received = true;
    lifecycle::save_direct(store, &record).await?;
    Ok(Json(Received { bytes: len, complete_url: format!("/uploads/{id}/complete") }))
}

#[utoipa::path(
    post,
    path = "/uploads/{id}/complete",
    tag = "images",
    security(("apiKey" = [])),
    params(("id" = String, Path, description = "The direct upload's id")),
    responses(
        (status = 202, description = "Checked and queued, as an upload (repeating answers the same)", body = UploadResponse),
        (status = 401, description = "`unauthorized`", body = ApiError),
        (status = 403, description = "`forbidden`: another key created the upload", body = ApiError),
        (status = 404, description = "`no-such-upload`", body = ApiError),
        (status = 409, description = "`upload-not-received`: the image is not in the bucket yet", body = ApiError),
        (status = 413, description = "`image-too-large`", body = ApiError),
        (status = 415, description = "`unsupported-format`", body = ApiError),
        (status = 422, description = "`unreadable-image`, `too-many-pixels`, `too-many-frames`, `truncated-image`: the object is removed", body = ApiError),
        (status = 503, description = "`unavailable`", body = ApiError),
    )
)]
pub async fn complete(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<(StatusCode, [(axum::http::HeaderName, &'static str); 1], Json<UploadResponse>), ApiError> {
    let store = &*state.store;
    if !is_id(&id) {
        return Err(ApiError::new(Code::NoSuchUpload, format!("no direct upload {id:?}")));
    }
    let record = lifecycle::direct(store, &id).await?.ok_or_else(|| {
        ApiError::new(Code::NoSuchUpload, format!("no direct upload {id:?} (or it expired and was swept)"))
    })?;
    state.auth.require_owner(&headers, record.owner.as_deref())?;
    let pixels = state.limits.pixels();
    let completed = lifecycle::complete(
        store,
        &*state.queue,
        &state.routes,
        &pixels,
        &state.formats,
        state.limits.max_image_bytes,
        &id,
    )
    .await;
    let completed = completed.map_err(|e| match e {
        CompleteError::NotFound(_) => ApiError::new(Code::NoSuchUpload, e.to_string()),
        CompleteError::NotReceived(_) => ApiError::new(Code::UploadNotReceived, e.to_string()),
        CompleteError::Refused(refused) => refusal(refused),
        CompleteError::Store(e) => e.into(),
        CompleteError::Queue(e) => ApiError::unavailable("queue", e),
    })?;
    crate::telemetry::uploaded(completed.bytes);
    let image =
        Uploaded::new(&state, completed.key, completed.format, completed.width, completed.height, completed.bytes)
            .deduplicated(completed.deduplicated);
    Ok((StatusCode::ACCEPTED, [(axum::http::header::RETRY_AFTER, "1")], Json(UploadResponse { images: vec![image] })))
}

/// Whether `id` is shaped as the ids `POST /uploads` makes (32 hex digits).
fn is_id(id: &str) -> bool {
    id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit())
}
