//! The middleware that checks a route's scope before its handler (and before any body is read).

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::auth::{Auth, Scope};

/// Passes the request on with its [`crate::auth::Caller`] in the extensions, or answers 401/403.
pub async fn require_scope(State((auth, scope)): State<(Auth, Scope)>, mut request: Request, next: Next) -> Response {
    match auth.require(request.headers(), scope) {
        Ok(caller) => {
            request.extensions_mut().insert(caller);
            next.run(request).await
        }
        Err(e) => {
            tracing::info!(scope = scope.name(), "refused: {e:?}");
            e.into_response()
        }
    }
}
