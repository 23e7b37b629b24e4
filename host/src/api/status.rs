//! The job status the api reports (`GET /status`, `/download` while not done, the live
//! endpoints): read from the store, as any process could.

use serde::Serialize;

use super::{ApiError, ApiState, Code, read_url};
use crate::jobs::{self, Failure, RESERVED_PREFIX, State as JobState};
use crate::sandbox::rendition_names;
use crate::storage::{Bucket, validate_key};

/// Where a job stands, as `/status` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum JobStatus {
    /// Queued, or being processed (retries included).
    Pending,
    /// Processed: the renditions are stored.
    Done,
    /// Failed for good; `error` says why.
    Failed,
}

impl JobStatus {
    /// As the JSON and the event names spell it.
    pub const fn as_str(self) -> &'static str {
        match self {
            JobStatus::Pending => "pending",
            JobStatus::Done => "done",
            JobStatus::Failed => "failed",
        }
    }
}

/// The JSON of `/status` (and of `/download` while not done).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Status {
    pub key: String,
    pub state: JobStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<Failure>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    pub status_url: String,
    pub download_url: String,
    /// Every rendition of the key: while pending, what its route will make; when done, what
    /// was made, with sizes.
    pub renditions: Vec<RenditionStatus>,
    /// When done, and the plugin computed it: something to show while the image loads.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub placeholder: Option<PlaceholderStatus>,
}

/// The placeholder of a done image.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct PlaceholderStatus {
    /// The image's dominant colour.
    #[schema(example = "#7a8b9c")]
    pub dominant_color: String,
    /// A ThumbHash of the image (https://evanw.github.io/thumbhash/), standard base64.
    #[schema(example = "1QcSHQRnh493V4dIh4eXh1h4kJUI")]
    pub thumbhash: String,
}

/// One rendition in `/status`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct RenditionStatus {
    pub name: String,
    /// True for the one served at `/download/{key}`.
    pub default: bool,
    pub download_url: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub width: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub height: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
}

/// Refuses a key that is not valid, or names pixbox's own records (as if it did not exist).
pub(super) fn checked(key: &str) -> Result<(), ApiError> {
    validate_key(key)?;
    // Bookkeeping, kept originals and stored presets are no images of their own.
    if key.starts_with(RESERVED_PREFIX) || crate::jobs::is_derived(key) {
        return Err(not_found(key));
    }
    Ok(())
}

pub(super) fn not_found(key: &str) -> ApiError {
    ApiError::new(Code::NotFound, format!("no image with key {key:?}"))
}

/// The key whose images a read of `key` serves: itself, or for a duplicate upload to a route with
/// `dedupe = true` the key it is an alias of (`not-found` once it is deleted).
pub(super) async fn stored_key(state: &ApiState, key: &str) -> Result<String, ApiError> {
    let dedupe = crate::sandbox::configured_route(&state.routes, key).is_some_and(|r| r.dedupe);
    crate::lifecycle::stored_key(&*state.store, key, dedupe).await?.ok_or_else(|| not_found(key))
}

/// Where the job for `key` stands, with every rendition and its URL.
pub async fn status(state: &ApiState, key: &str) -> Result<Status, ApiError> {
    checked(key)?;
    let stored = stored_key(state, key).await?;
    let mut status = Status {
        key: key.into(),
        state: JobStatus::Pending,
        error: None,
        media_type: None,
        size: None,
        status_url: read_url(&state.auth, "status", key),
        download_url: read_url(&state.auth, "download", key),
        renditions: Vec::new(),
        placeholder: None,
    };
    let urls = super::rendition_urls(state, key);
    let configured = rendition_names(&state.routes, key);
    match jobs::state(&*state.store, &stored).await? {
        JobState::Done(info) => {
            status.state = JobStatus::Done;
            // What the job made (the configuration may have changed since).
            let record = jobs::ImageMeta::of(&info.meta);
            let default = record.rendition.clone().unwrap_or(configured.default.clone());
            for name in record.renditions.clone().unwrap_or_else(|| vec![default.clone()]) {
                let info = if name == default {
                    Some(info.clone())
                } else {
                    jobs::found(state.store.head(Bucket::Permanent, &jobs::rendition_key(&stored, &name)).await)?
                };
                let made = info.as_ref().map(|i| jobs::ImageMeta::of(&i.meta)).unwrap_or_default();
                status.renditions.push(RenditionStatus {
                    download_url: if name == default {
                        status.download_url.clone()
                    } else {
                        read_url(&state.auth, "download", &jobs::rendition_key(key, &name))
                    },
                    default: name == default,
                    width: made.width,
                    height: made.height,
                    media_type: info.as_ref().map(|i| i.meta.content_type.clone()),
                    size: info.as_ref().map(|i| i.size),
                    name,
                });
            }
            if let (Some(dominant_color), Some(thumbhash)) = (record.dominant_color, record.thumbhash) {
                status.placeholder = Some(PlaceholderStatus { dominant_color, thumbhash });
            }
            status.media_type = Some(info.meta.content_type);
            status.size = Some(info.size);
        }
        JobState::Pending => {}
        JobState::Failed(failure) => {
            status.state = JobStatus::Failed;
            status.error = Some(failure);
        }
        JobState::Unknown => return Err(not_found(key)),
    }
    if status.state != JobStatus::Done {
        status.renditions = urls
            .into_iter()
            .map(|(name, download_url)| RenditionStatus {
                default: name == configured.default,
                name,
                download_url,
                media_type: None,
                width: None,
                height: None,
                size: None,
            })
            .collect();
    }
    Ok(status)
}

#[cfg(test)]
mod tests {
    use super::JobStatus;

    #[test]
    fn the_json_and_the_event_names_spell_a_state_alike() {
        for state in [JobStatus::Pending, JobStatus::Done, JobStatus::Failed] {
            assert_eq!(serde_json::to_value(state).unwrap(), state.as_str());
        }
    }
}
