//! `DELETE /images/{key}`: removes an image with everything derived from it (renditions and
//! their format variants, a kept original, stored presets and transforms, the job's records), on
//! either backend. Idempotent: a key deleted before answers `204` again. The `upload` key that
//! uploaded the image may delete it, and any `admin` key.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};

use super::status::{checked, not_found};
use super::{ApiError, ApiState, Code};
use crate::auth::Scope;
use crate::lifecycle::{self, DeleteError};

#[utoipa::path(
    delete,
    path = "/images/{key}",
    tag = "images",
    security(("apiKey" = [])),
    params(("key" = String, Path, description = "The image's key; may contain `/`")),
    responses(
        (status = 204, description = "The image and everything derived from it are gone (also when it was deleted before). A job still queued for it ends without writing anything"),
        (status = 400, description = "`invalid-key`", body = ApiError),
        (status = 401, description = "`unauthorized`: no API key, or an unknown one", body = ApiError),
        (status = 403, description = "`forbidden`: an `upload` key that did not upload the image, or a key with neither `upload` nor `admin`", body = ApiError),
        (status = 404, description = "`not-found`: no image with this key", body = ApiError),
        (status = 503, description = "`delete-incomplete`: the message lists what is still there, and the delete is safe to repeat; `unavailable`", body = ApiError),
    )
)]
pub async fn delete_image(
    State(state): State<ApiState>,
    Path(key): Path<String>,
    headers: HeaderMap,
) -> Result<StatusCode, ApiError> {
    checked(&key)?;
    // A key below an image's key is one of its renditions, not an image: deleted with it only.
    let segments: Vec<&str> = key.split('/').collect();
    if segments[..segments.len() - 1].iter().any(|s| crate::jobs::is_image_key(s)) {
        return Err(not_found(&key));
    }
    let store = &*state.store;
    let Some(found) = lifecycle::find(store, &key).await? else {
        // Only callers who could delete learn whether a key was there.
        let auth = &state.auth;
        auth.require(&headers, Scope::Upload).or_else(|e| auth.require(&headers, Scope::Admin).map_err(|_| e))?;
        return match lifecycle::deleted_by(store, &key).await? {
            Some(owner) => {
                auth.require_owner(&headers, owner.as_deref())?;
                // A delete cut short before (503 delete-incomplete) is finished now.
                finish(lifecycle::finish_delete(store, &key).await)
            }
            None => Err(not_found(&key)),
        };
    };
    state.auth.require_owner(&headers, found.owner.as_deref()).map_err(ApiError::from)?;
    let deleted = lifecycle::delete(store, &key, &found).await;
    if let Ok(removed) = &deleted {
        tracing::info!(key, removed, "deleted");
    }
    finish(deleted)
}

/// The answer to a delete that removed objects, or did not finish.
fn finish(deleted: Result<usize, DeleteError>) -> Result<StatusCode, ApiError> {
    match deleted {
        Ok(_) => Ok(StatusCode::NO_CONTENT),
        Err(e @ DeleteError::Incomplete { .. }) => Err(ApiError::new(Code::DeleteIncomplete, e.to_string())),
        Err(DeleteError::NotFound(key)) => Err(not_found(&key)),
        Err(DeleteError::Store(e)) => Err(e.into()),
    }
}
