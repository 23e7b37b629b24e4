//! The api's one error type: an HTTP status, a stable kebab-case `code` and a human `message`,
//! rendered as JSON. Internal details are logged, never sent.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// Every `code` the api answers with, its HTTP status and what it means: the one list. The
/// README's table and the OpenAPI document are checked against it by tests.
macro_rules! codes {
    ($($variant:ident = $code:literal, $status:ident, $meaning:literal;)*) => {
        /// A stable kebab-case error code (see [`Code::ALL`]).
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum Code {
            $(#[doc = $meaning] $variant,)*
        }

        impl Code {
            /// Every code, in the order of the table.
            pub const ALL: &[Code] = &[$(Code::$variant,)*];

            /// The code as clients see it.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $(Code::$variant => $code,)*
                }
            }

            /// The HTTP status every answer with this code has.
            pub const fn status(self) -> StatusCode {
                match self {
                    $(Code::$variant => StatusCode::$status,)*
                }
            }

            /// What it means, for the README's table.
            pub const fn meaning(self) -> &'static str {
                match self {
                    $(Code::$variant => $meaning,)*
                }
            }
        }
    };
}

codes! {
    BadMultipart = "bad-multipart", BAD_REQUEST, "The upload body is not well-formed multipart.";
    InvalidFocus = "invalid-focus", BAD_REQUEST, "An image's `focus` field is not `x,y` with both in 0..=1.";
    InvalidKey = "invalid-key", BAD_REQUEST, "The key is empty, too long, or holds a character or segment keys may not have.";
    InvalidTransform = "invalid-transform", BAD_REQUEST, "A transform URL asks for an option or value pixbox does not serve.";
    InvalidPrefix = "invalid-prefix", BAD_REQUEST, "The upload's `prefix` field is not a valid key prefix.";
    InvalidWait = "invalid-wait", BAD_REQUEST, "`wait` is not whole seconds within the limit.";
    MissingKey = "missing-key", BAD_REQUEST, "The query parameter `key` is required.";
    NoImages = "no-images", BAD_REQUEST, "The upload holds no image part.";
    PartHeaderTooLarge = "part-header-too-large", BAD_REQUEST, "A multipart part's headers are over their size limit.";
    PrefixAfterImages = "prefix-after-images", BAD_REQUEST, "The `prefix` field must come before the images.";
    WebhookNotAllowed = "webhook-not-allowed", BAD_REQUEST, "The upload's webhook URL is not http(s), or names a host `[webhooks] allow` does not list.";
    TooManyKeys = "too-many-keys", BAD_REQUEST, "An event stream asks for more keys than one stream follows.";
    Unauthorized = "unauthorized", UNAUTHORIZED, "No API key, or one pixbox does not know.";
    Forbidden = "forbidden", FORBIDDEN, "The API key lacks the scope this route needs.";
    InvalidSignature = "invalid-signature", FORBIDDEN, "A signed URL that does not match its key.";
    SignatureExpired = "signature-expired", FORBIDDEN, "A signed URL past its expiry.";
    InvalidUploadToken = "invalid-upload-token", FORBIDDEN, "A direct upload URL whose token does not match, or that was used already.";
    NotFound = "not-found", NOT_FOUND, "No image with this key.";
    NoSuchRendition = "no-such-rendition", NOT_FOUND, "The key's route has no rendition of this name, or it was not made.";
    NoSuchPreset = "no-such-preset", NOT_FOUND, "No preset of this name is configured.";
    NoSuchRoute = "no-such-route", NOT_FOUND, "No such path.";
    NoSuchUpload = "no-such-upload", NOT_FOUND, "No direct upload with this id (or it expired and was swept).";
    MethodNotAllowed = "method-not-allowed", METHOD_NOT_ALLOWED, "The path does not take this method.";
    UploadNotReceived = "upload-not-received", CONFLICT, "The direct upload's object is not in the bucket (yet): send it, then complete.";
    BodyTimeout = "body-timeout", REQUEST_TIMEOUT, "The request body stopped arriving for longer than the idle limit.";
    RequestTimeout = "request-timeout", REQUEST_TIMEOUT, "The request took longer than its time limit.";
    BodyTooLarge = "body-too-large", PAYLOAD_TOO_LARGE, "The request body is over its size limit.";
    ImageTooLarge = "image-too-large", PAYLOAD_TOO_LARGE, "One image is over the per-image size limit.";
    TooManyImages = "too-many-images", PAYLOAD_TOO_LARGE, "The upload holds more images than one request may.";
    TooManyParts = "too-many-parts", PAYLOAD_TOO_LARGE, "The upload holds more multipart parts than one request may.";
    NotMultipart = "not-multipart", UNSUPPORTED_MEDIA_TYPE, "The upload is not `multipart/form-data`.";
    UnsupportedFormat = "unsupported-format", UNSUPPORTED_MEDIA_TYPE, "Not a JPEG, PNG, WebP, GIF, JPEG XL or HEIC (judged from the bytes), or a format turned off (`[formats]`).";
    ProcessingFailed = "processing-failed", UNPROCESSABLE_ENTITY, "The job failed for good; the body's `status` says why.";
    RenderFailed = "render-failed", UNPROCESSABLE_ENTITY, "A preset's render failed; the message says why (and is repeated for `renders.failure_ttl_secs`).";
    TooManyPixels = "too-many-pixels", UNPROCESSABLE_ENTITY, "The image's header claims more pixels than the limit.";
    TooManyFrames = "too-many-frames", UNPROCESSABLE_ENTITY, "The animation has more frames, or more pixels over all frames, than the limits.";
    TruncatedImage = "truncated-image", UNPROCESSABLE_ENTITY, "The image does not end as its format ends.";
    UnreadableImage = "unreadable-image", UNPROCESSABLE_ENTITY, "The image's header cannot be read.";
    RateLimited = "rate-limited", TOO_MANY_REQUESTS, "Over the caller's request rate; `Retry-After` says when to try again.";
    NotReady = "not-ready", SERVICE_UNAVAILABLE, "The store or the queue does not answer.";
    TooBusy = "too-busy", SERVICE_UNAVAILABLE, "Too many uploads or watchers at once; `Retry-After` says when to try again.";
    Unavailable = "unavailable", SERVICE_UNAVAILABLE, "A backend is not answering; try again later.";
    DeleteIncomplete = "delete-incomplete", SERVICE_UNAVAILABLE, "Some of the image's objects are still there; the message lists them, and the delete is safe to repeat.";
}

impl Serialize for Code {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl std::fmt::Display for Code {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The body of every error answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct ApiError {
    #[serde(skip)]
    #[schema(ignore)]
    pub status: StatusCode,
    /// A stable kebab-case code for programs (`unsupported-format`, `not-found`, ...).
    #[schema(value_type = String, example = "unsupported-format")]
    pub code: Code,
    /// What went wrong, for humans.
    pub message: String,
    /// Seconds to wait before trying again, sent as `Retry-After`.
    #[serde(skip)]
    #[schema(ignore)]
    pub retry_after: Option<u64>,
}

impl ApiError {
    /// An answer with `code`, at the code's own HTTP status.
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        ApiError { status: code.status(), code, message: message.into(), retry_after: None }
    }

    /// The same error, telling the client when to try again.
    pub fn retry_after(mut self, seconds: u64) -> Self {
        self.retry_after = Some(seconds);
        self
    }

    /// A backend failure: logged with its detail, reported without it.
    pub fn unavailable(context: &str, detail: impl std::fmt::Display) -> Self {
        tracing::error!("{context}: {detail}");
        ApiError::new(Code::Unavailable, format!("{context}: a backend is not answering; try again later"))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let retry_after = self.retry_after;
        let mut response = (self.status, Json(self)).into_response();
        if let Some(seconds) = retry_after {
            response.headers_mut().insert(axum::http::header::RETRY_AFTER, axum::http::HeaderValue::from(seconds));
        }
        response
    }
}

impl From<crate::storage::StoreError> for ApiError {
    fn from(e: crate::storage::StoreError) -> Self {
        match e {
            crate::storage::StoreError::InvalidKey { key, reason } => {
                ApiError::new(Code::InvalidKey, format!("invalid key {key:?}: {reason}"))
            }
            e => ApiError::unavailable("storage", e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Code;

    /// The table as the README shows it.
    fn markdown() -> String {
        let mut table = String::from("| code | status | meaning |\n|---|---|---|\n");
        for code in Code::ALL {
            table += &format!("| `{code}` | {} | {} |\n", code.status().as_u16(), code.meaning());
        }
        table
    }

    #[test]
    fn codes_are_unique_kebab_case_errors() {
        for (i, code) in Code::ALL.iter().enumerate() {
            let text = code.as_str();
            assert!(text.split('-').all(|w| !w.is_empty() && w.chars().all(|c| c.is_ascii_lowercase())), "{text}");
            assert!(code.status().is_client_error() || code.status().is_server_error(), "{text}");
            assert!(!Code::ALL[..i].iter().any(|other| other.as_str() == text), "{text} twice");
        }
    }

    #[test]
    fn the_readme_lists_every_code() {
        let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
        let table = markdown();
        assert!(
            readme.contains(&table),
            "README.md's error code table differs from Code::ALL; it should read:\n{table}"
        );
    }
}
