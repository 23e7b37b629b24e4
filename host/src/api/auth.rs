//! The middleware that checks a route's scope before its handler (and before any of the body is
//! looked at), and how an auth refusal answers over HTTP (the auth module itself knows no HTTP
//! errors).

use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{HeaderValue, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use futures::StreamExt;

use crate::api::{ApiError, Code};
use crate::auth::{Auth, AuthError, Scope};

/// How much of a refused request's body is read and dropped before the answer, and for how long
/// at most: a client still sending a small body then reads the 401/403 instead of a connection
/// reset (the server closes the connection after answering). Larger or slower bodies are cut.
const DRAIN_BYTES: usize = 1 << 20;
const DRAIN_TIME: Duration = Duration::from_secs(2);

/// Passes the request on with its [`crate::auth::Caller`] in the extensions, or answers 401/403.
pub async fn require_scope(State((auth, scope)): State<(Auth, Scope)>, mut request: Request, next: Next) -> Response {
    match auth.require(request.headers(), scope) {
        Ok(caller) => {
            request.extensions_mut().insert(caller);
            next.run(request).await
        }
        Err(e) => {
            tracing::info!(scope = scope.name(), "refused: {e:?}");
            let mut body = request.into_body().into_data_stream();
            let _ = tokio::time::timeout(DRAIN_TIME, async {
                let mut read = 0;
                while let Some(Ok(chunk)) = body.next().await {
                    read += chunk.len();
                    if read >= DRAIN_BYTES {
                        break;
                    }
                }
            })
            .await;
            let mut response = e.into_response();
            response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
            response
        }
    }
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> Self {
        match e {
            AuthError::Unauthorized(why) => ApiError::new(Code::Unauthorized, why),
            AuthError::Forbidden(scope) => {
                ApiError::new(Code::Forbidden, format!("this API key does not have the {} scope", scope.name()))
            }
            AuthError::BadSignature(why) => ApiError::new(Code::InvalidSignature, why),
            AuthError::NotOwner => {
                ApiError::new(Code::Forbidden, "this API key did not upload the image (an admin key may delete any)")
            }
            AuthError::Expired => {
                ApiError::new(Code::SignatureExpired, "this signed URL has expired: ask for a new one")
            }
        }
    }
}

impl IntoResponse for AuthError {
    fn into_response(self) -> Response {
        let unauthorized = matches!(self, AuthError::Unauthorized(_));
        let mut response = ApiError::from(self).into_response();
        if unauthorized {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}
