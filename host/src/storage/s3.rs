//! S3 adapter (`aws-sdk-s3`): any S3-compatible endpoint; path-style addressing when an endpoint
//! is overridden, which LocalStack, moto and MinIO need.

use aws_sdk_s3::Client;
use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream as SdkByteStream;
use bytes::Bytes;

use super::{BlobStore, Bucket, GetObject, ObjectInfo, ObjectMeta, StoreError, validate_key, validate_prefix};
use crate::aws::describe;

#[derive(Debug, Clone)]
pub struct S3Store {
    client: Client,
    temp: String,
    permanent: String,
    /// For presigned POSTs: the endpoint override (path-style URLs), the region and credentials.
    endpoint: Option<String>,
    region: String,
    credentials: Option<aws_sdk_s3::config::SharedCredentialsProvider>,
}

impl S3Store {
    /// Connects to the two buckets. With `create`, missing buckets are created; otherwise a missing
    /// bucket is an error naming it.
    pub async fn connect(
        sdk: &aws_config::SdkConfig,
        temp: &str,
        permanent: &str,
        create: bool,
    ) -> Result<Self, StoreError> {
        let mut config = aws_sdk_s3::config::Builder::from(sdk);
        if sdk.endpoint_url().is_some() {
            config = config.force_path_style(true);
        }
        let store = S3Store {
            client: Client::from_conf(config.build()),
            temp: temp.into(),
            permanent: permanent.into(),
            endpoint: sdk.endpoint_url().map(|u| u.trim_end_matches('/').to_string()),
            region: sdk.region().map_or("us-east-1".to_string(), |r| r.to_string()),
            credentials: sdk.credentials_provider(),
        };
        for bucket in [temp, permanent] {
            match store.client.head_bucket().bucket(bucket).send().await {
                Ok(_) => {}
                Err(e) if is_status(&e, 404) && create => {
                    store.client.create_bucket().bucket(bucket).send().await.map_err(|e| {
                        StoreError::Unavailable(format!("cannot create bucket {bucket}: {}", describe(&e)))
                    })?;
                    tracing::info!(bucket, "created bucket");
                }
                Err(e) if is_status(&e, 404) => return Err(StoreError::MissingBucket { bucket: bucket.into() }),
                Err(e) => return Err(unavailable(e)),
            }
        }
        Ok(store)
    }

    fn bucket(&self, bucket: Bucket) -> &str {
        match bucket {
            Bucket::Temp => &self.temp,
            Bucket::Permanent => &self.permanent,
        }
    }

    fn put_request(
        &self,
        bucket: Bucket,
        key: &str,
        body: Bytes,
        meta: &ObjectMeta,
    ) -> aws_sdk_s3::operation::put_object::builders::PutObjectFluentBuilder {
        self.client
            .put_object()
            .bucket(self.bucket(bucket))
            .key(key)
            .content_type(&meta.content_type)
            .set_metadata(Some(meta.metadata.clone().into_iter().collect()))
            .body(SdkByteStream::from(body))
    }
}

/// Tries of a conditional put that keeps meeting another writer's (409), and the first pause.
const CONFLICT_TRIES: u32 = 4;
const CONFLICT_BACKOFF: std::time::Duration = std::time::Duration::from_millis(100);

fn is_status<E>(err: &SdkError<E, HttpResponse>, status: u16) -> bool {
    err.raw_response().is_some_and(|r| r.status().as_u16() == status)
}

fn unavailable<E: std::error::Error + 'static>(e: E) -> StoreError {
    StoreError::Unavailable(format!("s3: {}", describe(&e)))
}

fn info(
    content_type: Option<String>,
    metadata: Option<std::collections::HashMap<String, String>>,
    size: Option<i64>,
    etag: Option<String>,
    modified: Option<aws_sdk_s3::primitives::DateTime>,
) -> ObjectInfo {
    ObjectInfo {
        meta: ObjectMeta {
            content_type: content_type.unwrap_or_default(),
            metadata: metadata.unwrap_or_default().into_iter().collect(),
        },
        size: size.and_then(|s| u64::try_from(s).ok()).unwrap_or(0),
        etag: etag.unwrap_or_default().trim_matches('"').to_string(),
        modified: modified.and_then(|t| std::time::SystemTime::try_from(t).ok()),
    }
}

#[async_trait::async_trait]
impl BlobStore for S3Store {
    async fn put(&self, bucket: Bucket, key: &str, body: Bytes, meta: &ObjectMeta) -> Result<(), StoreError> {
        validate_key(key)?;
        self.put_request(bucket, key, body, meta).send().await.map_err(unavailable)?;
        Ok(())
    }

    async fn put_if_absent(
        &self,
        bucket: Bucket,
        key: &str,
        body: Bytes,
        meta: &ObjectMeta,
    ) -> Result<bool, StoreError> {
        validate_key(key)?;
        // 412: the key exists. 409 (ConditionalRequestConflict): another conditional write of
        // the key is in progress, and it may yet fail, so 409 is not "exists": the put is tried
        // again, and after the last try it is an error (the job is retried, the original kept).
        let mut backoff = CONFLICT_BACKOFF;
        for _ in 0..CONFLICT_TRIES {
            match self.put_request(bucket, key, body.clone(), meta).if_none_match("*").send().await {
                Ok(_) => return Ok(true),
                Err(e) if e.code() == Some("PreconditionFailed") || is_status(&e, 412) => return Ok(false),
                Err(e) if is_status(&e, 409) => {
                    tracing::debug!(key, "conditional put conflicts with another writer; trying again");
                    tokio::time::sleep(backoff).await;
                    backoff *= 2;
                }
                Err(e) => return Err(unavailable(e)),
            }
        }
        Err(StoreError::Unavailable(format!(
            "s3: another conditional write of {key} was still in progress after {CONFLICT_TRIES} tries"
        )))
    }

    async fn get(&self, bucket: Bucket, key: &str) -> Result<GetObject, StoreError> {
        validate_key(key)?;
        let out = match self.client.get_object().bucket(self.bucket(bucket)).key(key).send().await {
            Ok(out) => out,
            Err(e) if e.as_service_error().is_some_and(|s| s.is_no_such_key()) || is_status(&e, 404) => {
                return Err(StoreError::NotFound { key: key.into() });
            }
            Err(e) => return Err(unavailable(e)),
        };
        let info = info(out.content_type, out.metadata, out.content_length, out.e_tag, out.last_modified);
        let body =
            tokio_util::io::ReaderStream::with_capacity(out.body.into_async_read(), super::read_chunk(info.size));
        Ok(GetObject { info, body: Box::pin(body) })
    }

    async fn head(&self, bucket: Bucket, key: &str) -> Result<ObjectInfo, StoreError> {
        validate_key(key)?;
        match self.client.head_object().bucket(self.bucket(bucket)).key(key).send().await {
            Ok(out) => Ok(info(out.content_type, out.metadata, out.content_length, out.e_tag, out.last_modified)),
            Err(e) if e.as_service_error().is_some_and(|s| s.is_not_found()) || is_status(&e, 404) => {
                Err(StoreError::NotFound { key: key.into() })
            }
            Err(e) => Err(unavailable(e)),
        }
    }

    async fn delete(&self, bucket: Bucket, key: &str) -> Result<(), StoreError> {
        validate_key(key)?;
        self.client.delete_object().bucket(self.bucket(bucket)).key(key).send().await.map_err(unavailable)?;
        Ok(())
    }

    async fn list(&self, bucket: Bucket, prefix: &str) -> Result<Vec<String>, StoreError> {
        validate_prefix(prefix)?;
        let mut keys = Vec::new();
        let mut pages =
            self.client.list_objects_v2().bucket(self.bucket(bucket)).prefix(prefix).into_paginator().send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(unavailable)?;
            keys.extend(page.contents().iter().filter_map(|o| o.key().map(str::to_string)));
        }
        keys.sort();
        Ok(keys)
    }

    async fn check(&self) -> Result<(), StoreError> {
        for bucket in [&self.temp, &self.permanent] {
            self.client.head_bucket().bucket(bucket).send().await.map_err(unavailable)?;
        }
        Ok(())
    }

    /// An S3 POST policy signed with Signature Version 4 (the SDK signs requests, not browser
    /// forms): the bucket, the exact key, 1 to `max_bytes` bytes, until `ttl` from now.
    async fn presigned_post(
        &self,
        bucket: Bucket,
        key: &str,
        max_bytes: u64,
        ttl: std::time::Duration,
    ) -> Result<Option<super::PresignedPost>, StoreError> {
        use aws_sdk_s3::config::ProvideCredentials as _;
        use aws_sdk_s3::primitives::{DateTime, DateTimeFormat};
        use base64::Engine as _;
        validate_key(key)?;
        let Some(provider) = &self.credentials else { return Ok(None) };
        let credentials = provider
            .provide_credentials()
            .await
            .map_err(|e| StoreError::Unavailable(format!("no credentials to sign an upload form: {e}")))?;
        // Whole seconds: the format writes fractions when there are any, and x-amz-date has none.
        let seconds = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let now = std::time::UNIX_EPOCH + std::time::Duration::from_secs(seconds);
        let ttl = std::time::Duration::from_secs(ttl.as_secs());
        let iso = |t: std::time::SystemTime| DateTime::from(t).fmt(DateTimeFormat::DateTime).unwrap_or_default();
        // 20260102T030405Z, and its date.
        let amz_date: String = iso(now).chars().filter(|c| *c != '-' && *c != ':').collect();
        let date = &amz_date[..8];
        let credential = format!("{}/{date}/{}/s3/aws4_request", credentials.access_key_id(), self.region);
        let bucket = self.bucket(bucket).to_string();
        let mut fields = std::collections::BTreeMap::from([
            ("key".to_string(), key.to_string()),
            ("x-amz-algorithm".to_string(), "AWS4-HMAC-SHA256".to_string()),
            ("x-amz-credential".to_string(), credential),
            ("x-amz-date".to_string(), amz_date.clone()),
        ]);
        if let Some(token) = credentials.session_token() {
            fields.insert("x-amz-security-token".into(), token.into());
        }
        let mut conditions =
            vec![serde_json::json!({ "bucket": bucket }), serde_json::json!(["content-length-range", 1, max_bytes])];
        conditions.extend(fields.iter().map(|(name, value)| serde_json::json!({ name: value })));
        let policy = serde_json::json!({ "expiration": iso(now + ttl), "conditions": conditions });
        let policy = base64::engine::general_purpose::STANDARD.encode(policy.to_string());
        let mac = |key: &[u8], data: &str| {
            use hmac::Mac as _;
            let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(key).expect("HMAC takes any key length");
            mac.update(data.as_bytes());
            mac.finalize().into_bytes().to_vec()
        };
        let signing = ["s3", "aws4_request"].iter().fold(
            mac(&mac(format!("AWS4{}", credentials.secret_access_key()).as_bytes(), date), &self.region),
            |key, part| mac(&key, part),
        );
        fields.insert("x-amz-signature".into(), hex::encode(mac(&signing, &policy)));
        fields.insert("policy".into(), policy);
        let url = match &self.endpoint {
            Some(endpoint) => format!("{endpoint}/{bucket}"),
            None => format!("https://{bucket}.s3.{}.amazonaws.com", self.region),
        };
        Ok(Some(super::PresignedPost { url, fields }))
    }
}
