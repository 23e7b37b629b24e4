//! `POST /upload`: multipart, one or more images. Each image is checked from its bytes (format
//! from magic bytes, size and completeness from the header and trailer; nothing is decoded), stored
//! in the temp bucket under a new key, and only when every image is stored is one job per image
//! queued. If anything fails, the images already stored are removed and nothing is queued.

use axum::Json;
use axum::extract::multipart::{Field, MultipartError, MultipartRejection};
use axum::extract::{Extension, Multipart, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::{Bytes, BytesMut};
use serde::{Deserialize, Serialize};

use super::part_headers::{MAX_PART_HEADER_BYTES, PartHeadersTooLong};
use super::{ApiError, ApiState, CallerKey, Code, read_url};
use crate::auth::Caller;
use crate::imaging::{Format, Header};
use crate::jobs::{self, Job, RESERVED_PREFIX, UploadRef};
use crate::lifecycle::{self, Claim};
use crate::queue::MAX_BATCH;
use crate::sandbox::configured_route;
use crate::storage::Bucket;
use crate::webhooks;

/// Longest prefix accepted.
const MAX_PREFIX_BYTES: usize = 200;
/// Longest focus field accepted (`0.333333,0.666667` is 17 bytes).
const MAX_FOCUS_BYTES: u64 = 64;
/// Parts of an upload that are not images (a prefix field, stray fields) allowed on top of
/// `max_images`.
const MAX_OTHER_PARTS: usize = 8;

#[derive(Debug, Deserialize)]
pub struct UploadQuery {
    prefix: Option<String>,
    /// The images' focal point, `x,y` fractions of width and height.
    focus: Option<String>,
    /// Where to be told when each image's job settles (a host `[webhooks] allow` lists).
    webhook: Option<String>,
}

/// The multipart form `POST /upload` takes (documentation only; parts are read as a stream).
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub struct UploadForm {
    /// One or more image files (JPEG, PNG, WebP, GIF, JPEG XL, HEIC); any field name works.
    #[schema(value_type = Vec<String>, format = Binary)]
    images: Vec<Vec<u8>>,
    /// Optional route prefix (e.g. `avatars/`); must come before the images.
    prefix: Option<String>,
    /// Optional focal point, `x,y` fractions of the width and height, for the images after it
    /// (it may be repeated, one before each image); the `focus` query parameter sets it for all.
    focus: Option<String>,
    /// Optional webhook URL for the images after it (the `webhook` query parameter sets it for all).
    webhook: Option<String>,
}

/// The answer to an accepted upload.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct UploadResponse {
    pub images: Vec<Uploaded>,
}

/// One stored and queued image.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Uploaded {
    /// The key the result will be stored under (prefix + unique id + extension of the format).
    pub key: String,
    /// Relative URL of `/status/{key}`.
    pub status_url: String,
    /// Relative URL of `/download/{key}` (the route's default rendition).
    pub download_url: String,
    /// Relative download URL of every rendition the key's route makes, by name.
    #[schema(example = json!({"thumb": "/download/01a2...c3.jpg/thumb", "large": "/download/01a2...c3.jpg"}))]
    pub renditions: std::collections::BTreeMap<String, String>,
    #[schema(value_type = String, example = "image/jpeg")]
    pub media_type: &'static str,
    pub width: u32,
    pub height: u32,
    pub bytes: usize,
    /// True when the route has `dedupe = true` and the same bytes were uploaded to it before:
    /// the key's images are the earlier upload's, and no job was queued for it.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub deduplicated: bool,
    /// The duplicate-upload claim (dedupe routes), undone if the upload fails.
    #[serde(skip)]
    #[schema(ignore)]
    claim: Option<Claim>,
    /// The webhook the upload named for this image.
    #[serde(skip)]
    #[schema(ignore)]
    webhook: Option<String>,
}

#[utoipa::path(
    post,
    path = "/upload",
    tag = "images",
    params(
        ("prefix" = Option<String>, Query, description = "Route prefix, e.g. `avatars/` (or the `prefix` form field)"),
        ("focus" = Option<String>, Query, description = "Focal point of the images, `x,y` as fractions 0..1 of the width and height (e.g. `0.3,0.25`): renditions that crop keep it (plugins with a `gravity` option). A `focus` form field sets it for the images after it"),
        ("webhook" = Option<String>, Query, description = "URL told (a signed POST) when each image's job settles; its host must be listed in `[webhooks] allow`. A `webhook` form field sets it for the images after it"),
    ),
    request_body(content = inline(UploadForm), content_type = "multipart/form-data"),
    security(("apiKey" = [])),
    responses(
        (status = 202, description = "Every image stored and queued (with `Retry-After`)", body = UploadResponse),
        (status = 400, description = "`no-images`, `invalid-prefix`, `prefix-after-images`, `bad-multipart`, `part-header-too-large`, `invalid-focus`, `webhook-not-allowed`", body = ApiError),
        (status = 401, description = "`unauthorized`: no API key, or an unknown one", body = ApiError),
        (status = 403, description = "`forbidden`: the key lacks the `upload` scope", body = ApiError),
        (status = 408, description = "`body-timeout`, `request-timeout`: the body stalled or the request took too long", body = ApiError),
        (status = 413, description = "`body-too-large`, `image-too-large`, `too-many-images`, `too-many-parts`", body = ApiError),
        (status = 429, description = "`rate-limited`, with `Retry-After`", body = ApiError),
        (status = 415, description = "`unsupported-format`, `not-multipart`", body = ApiError),
        (status = 422, description = "`unreadable-image`, `too-many-pixels`, `too-many-frames`, `truncated-image`", body = ApiError),
        (status = 503, description = "`unavailable`: the store or the queue is not answering; `too-busy` (with `Retry-After`): max_concurrent_uploads are being received, or the caller's max_uploads_per_caller", body = ApiError),
    )
)]
pub async fn upload(
    state: State<ApiState>,
    Extension(caller): Extension<CallerKey>,
    Extension(who): Extension<Caller>,
    query: Query<UploadQuery>,
    multipart: Result<Multipart, MultipartRejection>,
) -> Response {
    match receive(state, &caller, &who, query, multipart).await {
        // Accepted, not done: `Retry-After` says when asking `/status` is worth it (or use
        // `/status/{key}?wait=` or `/events`).
        Ok(accepted) => (StatusCode::ACCEPTED, [(axum::http::header::RETRY_AFTER, "1")], accepted).into_response(),
        Err(e) => {
            // The body may not have been read to its end: the connection is not reused, so a
            // client does not send its next request into the rest of this one.
            let mut response = e.into_response();
            response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
            response
        }
    }
}

async fn receive(
    State(state): State<ApiState>,
    caller: &CallerKey,
    who: &Caller,
    Query(query): Query<UploadQuery>,
    multipart: Result<Multipart, MultipartRejection>,
) -> Result<Json<UploadResponse>, ApiError> {
    let mut multipart = multipart.map_err(|e| {
        ApiError::new(Code::NotMultipart, format!("send the images as multipart/form-data: {}", e.body_text()))
    })?;
    // Held until the answer: the cap counts uploads being received and stored.
    let _slot = state.guards.upload_slot(caller)?;
    let mut stored: Vec<Uploaded> = Vec::new();
    let result = async {
        read_images(&state, who, &query, &mut multipart, &mut stored).await?;
        enqueue(&state, &stored).await
    }
    .await;

    match result {
        Ok(()) => {
            for image in &stored {
                crate::telemetry::uploaded(image.bytes);
                tracing::info!(key = image.key, bytes = image.bytes, deduplicated = image.deduplicated, "uploaded");
                if let Some(Claim::Alias(alias)) = &image.claim {
                    crate::telemetry::deduplicated();
                    // Announced now if the images' job settled already; else when it settles.
                    let route_hook = configured_route(&state.routes, &image.key).and_then(|r| r.webhook.as_ref());
                    for url in [image.webhook.as_ref(), route_hook].into_iter().flatten() {
                        if let Err(e) =
                            lifecycle::announce_if_settled(&*state.store, &state.routes, &image.key, &alias.of, url)
                                .await
                        {
                            tracing::warn!(key = image.key, "cannot queue the webhook of a duplicate upload: {e}");
                        }
                    }
                }
            }
            Ok(Json(UploadResponse { images: stored }))
        }
        Err(e) => {
            // Read the rest of the body (it is within the request limit) before answering: a client
            // still sending would otherwise see a broken connection instead of this error.
            if e.code != Code::BodyTooLarge {
                while let Ok(Some(mut field)) = multipart.next_field().await {
                    while let Ok(Some(_)) = field.chunk().await {}
                }
            }
            // Nothing of a failed request may be processed: remove what was stored.
            for image in &stored {
                if let Err(err) = state.store.delete(Bucket::Temp, &image.key).await {
                    tracing::warn!(key = image.key, "cannot remove the original of a failed upload: {err}");
                }
                if let Some(claim) = &image.claim
                    && let Err(err) = lifecycle::release(&*state.store, &image.key, claim).await
                {
                    tracing::warn!(key = image.key, "cannot undo the duplicate record of a failed upload: {err}");
                }
            }
            Err(e)
        }
    }
}

/// Reads the form: `prefix` and `focus` fields, and every image, each checked from its header and
/// stored in the temporary bucket as it arrives (added to `stored`, so that a later refusal can
/// remove it). Refuses a form with no image.
async fn read_images(
    state: &ApiState,
    who: &Caller,
    query: &UploadQuery,
    multipart: &mut Multipart,
    stored: &mut Vec<Uploaded>,
) -> Result<(), ApiError> {
    let mut prefix = query.prefix.as_deref().map(normalise_prefix).transpose()?;
    let mut focus = query.focus.as_deref().map(parse_focus).transpose()?;
    let mut webhook = query.webhook.as_deref().map(|url| check_webhook(state, url)).transpose()?;
    let owner = match who {
        Caller::Key(id) => Some(id.clone()),
        Caller::Anonymous => None,
    };
    let mut parts = 0usize;
    while let Some(field) = multipart.next_field().await.map_err(multipart_error)? {
        parts += 1;
        check_part(state, &field, parts)?;
        let text = |name: &str| field.name() == Some(name) && field.file_name().is_none();
        if text("prefix") {
            if !stored.is_empty() {
                return Err(ApiError::new(
                    Code::PrefixAfterImages,
                    "the prefix field must come before the images it applies to (with curl: -F prefix=... \
                     before -F images=@...), or be given as ?prefix= in the URL",
                ));
            }
            prefix = Some(read_prefix(field).await?);
        } else if text("focus") {
            // Applies to the images after it, so each image of an upload can have its own.
            focus = Some(read_focus(field).await?);
        } else if text("webhook") {
            let bytes = read_limited(field, webhooks::MAX_URL_BYTES as u64, "the webhook field")
                .await
                .map_err(|_| check_webhook(state, "(longer than 2048 bytes)").unwrap_err())?;
            webhook = Some(check_webhook(state, &String::from_utf8_lossy(&bytes))?);
        } else {
            let intent = Intent {
                prefix: prefix.as_deref(),
                focus: focus.as_deref(),
                webhook: webhook.as_deref(),
                owner: owner.as_deref(),
            };
            let image = store_image(state, field, stored.len() + 1, intent).await?;
            stored.push(image);
        }
    }
    if stored.is_empty() {
        return Err(ApiError::new(
            Code::NoImages,
            "the upload holds no images: send multipart/form-data with one or more file parts",
        ));
    }
    Ok(())
}

/// Bounds the parts of one form: their number, and each one's headers.
fn check_part(state: &ApiState, field: &Field<'_>, parts: usize) -> Result<(), ApiError> {
    // Images are counted when stored; this bounds the parts that are not images (prefixes, empty
    // or unnamed fields), which would otherwise cost a loop turn each up to the body limit.
    if parts > state.limits.max_images as usize + MAX_OTHER_PARTS {
        return Err(ApiError::new(
            Code::TooManyParts,
            format!("at most {} images and {MAX_OTHER_PARTS} other fields per upload", state.limits.max_images),
        ));
    }
    let header_bytes: usize = field.headers().iter().map(|(name, value)| name.as_str().len() + value.len() + 4).sum();
    if header_bytes > MAX_PART_HEADER_BYTES {
        return Err(ApiError::new(
            Code::PartHeaderTooLarge,
            format!("a part's headers take {header_bytes} bytes, over the limit of {MAX_PART_HEADER_BYTES}"),
        ));
    }
    Ok(())
}

/// The `prefix` field's value, checked.
async fn read_prefix(field: Field<'_>) -> Result<String, ApiError> {
    let bytes = read_limited(field, MAX_PREFIX_BYTES as u64, "the prefix field").await.map_err(|e| {
        if e.code == Code::ImageTooLarge {
            ApiError::new(Code::InvalidPrefix, "prefix: longer than 200 bytes")
        } else {
            e
        }
    })?;
    let text = std::str::from_utf8(&bytes).map_err(|_| ApiError::new(Code::InvalidPrefix, "prefix: not UTF-8 text"))?;
    normalise_prefix(text)
}

/// The `focus` field's value, checked.
async fn read_focus(field: Field<'_>) -> Result<String, ApiError> {
    let bytes = read_limited(field, MAX_FOCUS_BYTES, "the focus field")
        .await
        .map_err(|e| if e.code == Code::ImageTooLarge { parse_focus("(too long)").unwrap_err() } else { e })?;
    parse_focus(&String::from_utf8_lossy(&bytes))
}

/// What the form says about the images after it, and who sends them.
#[derive(Clone, Copy)]
struct Intent<'a> {
    prefix: Option<&'a str>,
    focus: Option<&'a str>,
    webhook: Option<&'a str>,
    owner: Option<&'a str>,
}

/// A webhook URL an upload names, checked against `[webhooks] allow`.
pub(super) fn check_webhook(state: &ApiState, url: &str) -> Result<String, ApiError> {
    if !state.webhooks_enabled {
        return Err(ApiError::new(
            Code::WebhookNotAllowed,
            "this service takes no webhook URLs from uploads ([webhooks] allow and signing_secret are not set)",
        ));
    }
    webhooks::check_url(url, &state.webhook_allow, webhooks::NamedBy::Upload)
        .map(|_| url.to_string())
        .map_err(|e| ApiError::new(Code::WebhookNotAllowed, e.to_string()))
}

/// Reads image number `index` (within the image size limit), checks it from its header and
/// stores it in the temporary bucket under a new key; on a `dedupe` route, a duplicate of an
/// image stored before becomes an alias of it instead, and nothing is stored.
async fn store_image(
    state: &ApiState,
    field: Field<'_>,
    index: usize,
    intent: Intent<'_>,
) -> Result<Uploaded, ApiError> {
    let Intent { prefix, focus, webhook, owner } = intent;
    if index > state.limits.max_images as usize {
        return Err(ApiError::new(
            Code::TooManyImages,
            format!("at most {} images per upload", state.limits.max_images),
        ));
    }
    let label = match field.file_name() {
        Some(name) => format!("image {index} ({name})"),
        None => format!("image {index}"),
    };
    let bytes = read_limited(field, state.limits.max_image_bytes, &label).await?;
    let header = check(&bytes, state, &label)?;
    // The extension names what will be served (a route may turn a JPEG into a PNG).
    let stem = format!("{}{}", prefix.unwrap_or(""), new_image_id());
    let key = format!("{stem}.{}", crate::sandbox::result_format(&state.routes, &stem, header.format).extension());
    let record = jobs::ImageMeta {
        width: Some(header.width),
        height: Some(header.height),
        focus: focus.map(|f| f.to_string()),
        owner: owner.map(str::to_string),
        ..Default::default()
    };
    let meta = record.object(header.format.media_type());
    let size = bytes.len();
    let claim = match configured_route(&state.routes, &key).filter(|route| route.dedupe) {
        Some(route) => {
            let sha256 = lifecycle::content_hash(&bytes, focus);
            let (owner, webhook) = (owner.map(str::to_string), webhook.map(str::to_string));
            Some(lifecycle::claim(&*state.store, &route.prefix, &sha256, &key, owner, webhook).await?)
        }
        None => None,
    };
    if !matches!(claim, Some(Claim::Alias(_)))
        && let Err(e) = state.store.put(Bucket::Temp, &key, bytes, &meta).await
    {
        // Not among the stored images yet, so the failure path would not undo the claim.
        if let Some(claim) = &claim
            && let Err(undo) = lifecycle::release(&*state.store, &key, claim).await
        {
            tracing::warn!(key, "cannot undo the duplicate record of a failed upload: {undo}");
        }
        return Err(e.into());
    }
    let mut image = Uploaded::new(state, key, header.format, header.width, header.height, size)
        .deduplicated(matches!(claim, Some(Claim::Alias(_))));
    image.claim = claim;
    image.webhook = webhook.map(str::to_string);
    Ok(image)
}

impl Uploaded {
    /// The answer for an image stored under `key`, with its URLs (signed when reads are).
    pub(super) fn new(state: &ApiState, key: String, format: Format, width: u32, height: u32, bytes: usize) -> Self {
        Uploaded {
            status_url: read_url(&state.auth, "status", &key),
            download_url: read_url(&state.auth, "download", &key),
            renditions: super::rendition_urls(state, &key),
            key,
            media_type: format.media_type(),
            width,
            height,
            bytes,
            deduplicated: false,
            claim: None,
            webhook: None,
        }
    }

    pub(super) fn deduplicated(mut self, deduplicated: bool) -> Self {
        self.deduplicated = deduplicated;
        self
    }
}

/// Queues one job per stored image. One image is one message: sent or not. Several go out in
/// more than one send, so their jobs wait for a commit record written after the last send: if a
/// send fails, the jobs already sent find no commit (and no original) and are dropped without a
/// trace.
async fn enqueue(state: &ApiState, stored: &[Uploaded]) -> Result<(), ApiError> {
    // A duplicate upload's images are another key's: it has no job of its own.
    let jobs: Vec<&Uploaded> = stored.iter().filter(|u| !u.deduplicated).collect();
    let upload = (jobs.len() > 1).then(UploadRef::new);
    for chunk in jobs.chunks(MAX_BATCH) {
        let bodies: Vec<String> = chunk
            .iter()
            .map(|u| {
                Job { key: u.key.clone(), upload: upload.clone(), retry: false, webhook: u.webhook.clone() }.to_body()
            })
            .collect();
        state.queue.send_batch(&bodies).await.map_err(|e| ApiError::unavailable("queue", e))?;
    }
    if let Some(upload) = &upload {
        let keys: Vec<String> = jobs.iter().map(|u| u.key.clone()).collect();
        jobs::commit_upload(&*state.store, &upload.id, &keys).await?;
    }
    Ok(())
}

/// `x,y` with both in 0..=1, returned in a canonical form (what the plugin's `gravity` takes).
pub(super) fn parse_focus(raw: &str) -> Result<String, ApiError> {
    let point =
        raw.split_once(',').and_then(|(x, y)| Some((x.trim().parse::<f64>().ok()?, y.trim().parse::<f64>().ok()?)));
    match point {
        Some((x, y)) if (0.0..=1.0).contains(&x) && (0.0..=1.0).contains(&y) => Ok(format!("{x},{y}")),
        _ => Err(ApiError::new(
            Code::InvalidFocus,
            format!("focus must be x,y with both from 0 to 1 (fractions of the width and height), got {raw:?}"),
        )),
    }
}

/// Prefixes select a route: `avatars`, `avatars/` and `avatars/large/` are fine. Letters, digits,
/// `.`, `_`, `-` and `/` only, so keys stay URL-safe; pixbox's own `.pixbox/` is refused.
pub(super) fn normalise_prefix(raw: &str) -> Result<String, ApiError> {
    let raw = raw.trim();
    if raw.is_empty() {
        return Ok(String::new());
    }
    let bad = |why: &str| ApiError::new(Code::InvalidPrefix, format!("prefix {raw:?}: {why}"));
    if raw.len() > MAX_PREFIX_BYTES {
        return Err(bad("longer than 200 bytes"));
    }
    if !raw.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'/')) {
        return Err(bad("use letters, digits, '.', '_', '-' and '/' only"));
    }
    let prefix = if raw.ends_with('/') { raw.to_string() } else { format!("{raw}/") };
    if prefix.starts_with(RESERVED_PREFIX) || prefix.starts_with('.') {
        return Err(bad("prefixes starting with '.' are reserved"));
    }
    crate::storage::validate_prefix(&prefix).map_err(|_| bad("empty, '.' or '..' segments are not allowed"))?;
    // An image's renditions, presets and transforms are stored below its key: no other image's
    // key may start with it (a delete removes what is below).
    if prefix.split('/').any(jobs::is_image_key) {
        return Err(bad("a segment named like an image (ending in .jpg, .png, .webp, .gif or .avif) is reserved"));
    }
    Ok(prefix)
}

/// Reads one part, refusing it as soon as it passes `limit` bytes (the rest is never buffered).
/// The chunks are kept as they arrive and copied once into a buffer of the exact size: growing a
/// buffer chunk by chunk copied each image about twice more and held up to twice its size (the
/// upload benchmark showed memmove as the server's top cost).
async fn read_limited(mut field: Field<'_>, limit: u64, label: &str) -> Result<Bytes, ApiError> {
    let mut chunks: Vec<Bytes> = Vec::new();
    let mut len = 0usize;
    while let Some(chunk) = field.chunk().await.map_err(multipart_error)? {
        len += chunk.len();
        if len as u64 > limit {
            return Err(ApiError::new(
                Code::ImageTooLarge,
                format!("{label} is larger than the limit of {limit} bytes"),
            ));
        }
        chunks.push(chunk);
    }
    if chunks.len() == 1 {
        return Ok(chunks.pop().expect("one chunk"));
    }
    let mut buf = BytesMut::with_capacity(len);
    for chunk in chunks {
        buf.extend_from_slice(&chunk);
    }
    Ok(buf.freeze())
}

/// The header-only checks every image passes before it is stored.
fn check(bytes: &[u8], state: &ApiState, label: &str) -> Result<Header, ApiError> {
    lifecycle::inspect(bytes, &state.limits.pixels(), &state.formats, label).map_err(refusal)
}

/// The api's answer to an image the checks refuse.
pub(super) fn refusal(refused: lifecycle::Refused) -> ApiError {
    use lifecycle::Refused;
    let code = match &refused {
        Refused::UnsupportedFormat(_) => Code::UnsupportedFormat,
        Refused::Unreadable(_) => Code::UnreadableImage,
        Refused::TooManyPixels(_) => Code::TooManyPixels,
        Refused::TooManyFrames(_) => Code::TooManyFrames,
        Refused::Truncated(_) => Code::TruncatedImage,
        Refused::TooLarge(_) => Code::ImageTooLarge,
    };
    ApiError::new(code, refused.to_string())
}

fn multipart_error(e: MultipartError) -> ApiError {
    if caused_by::<PartHeadersTooLong>(&e) {
        ApiError::new(
            Code::PartHeaderTooLarge,
            format!("a part's headers run past the limit of {MAX_PART_HEADER_BYTES} bytes"),
        )
    } else if caused_by::<tower_http::timeout::TimeoutError>(&e) {
        ApiError::new(Code::BodyTimeout, "the request body stopped arriving (see limits.body_idle_timeout_secs)")
    } else if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::new(Code::BodyTooLarge, format!("the request body is too large: {}", e.body_text()))
    } else {
        ApiError::new(Code::BadMultipart, format!("not a valid multipart/form-data body: {}", e.body_text()))
    }
}

/// Whether a multipart error comes from an `E` among its sources (the body-idle timeout, the
/// part-header guard) rather than from the body's bytes.
fn caused_by<E: std::error::Error + 'static>(e: &MultipartError) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = source {
        if err.is::<E>() {
            return true;
        }
        source = err.source();
    }
    false
}

/// A new image's name: 128 bits from the operating system's random source, as 32 hex digits. With
/// public reads the key is the only secret a reader needs, so it carries no time, counter or
/// anything else a neighbour's key would give away. (Keys stored before were UUIDv7s; any valid
/// key is served, whatever its shape.)
pub(super) fn new_image_id() -> String {
    let mut bits = [0u8; 16];
    getrandom::fill(&mut bits).expect("the operating system's random source");
    bits.iter().map(|b| format!("{b:02x}")).collect()
}
