//! The blob store conformance suite, run against the filesystem adapter and against the S3 adapter
//! on the S3/SQS emulator that scripts/test starts.

use crate::common;

use std::sync::Arc;

use pixbox::storage::{BlobStore, FsStore, S3Store, StoreError, conformance};

fn fs_store(dir: &tempfile::TempDir) -> Arc<dyn BlobStore> {
    Arc::new(FsStore::open(dir.path(), "temp", "permanent", true).unwrap())
}

async fn s3_store(test: &str) -> Option<Arc<dyn BlobStore>> {
    let endpoint = common::aws_endpoint(test)?;
    let sdk = pixbox::aws::sdk_config(Some(&endpoint)).await;
    let store = S3Store::connect(&sdk, &common::unique_name("tmp"), &common::unique_name("perm"), true).await.unwrap();
    Some(Arc::new(store))
}

common::conformance_tests!(
    fs: fs_store, s3: s3_store;
    round_trip,
    large_body,
    not_found,
    overwrite_and_create_once,
    delete_idempotent,
    list_by_prefix,
    unusual_keys,
    invalid_keys_refused,
    check_answers,
);

#[tokio::test]
async fn fs_store_without_create_names_the_missing_bucket() {
    let dir = tempfile::tempdir().unwrap();
    let err = FsStore::open(dir.path(), "temp", "permanent", false).unwrap_err();
    assert!(matches!(err, StoreError::MissingBucket { .. }), "{err:?}");
    assert!(err.to_string().contains("create_resources"), "{err}");
}

#[tokio::test]
async fn s3_store_without_create_names_the_missing_bucket() {
    let Some(endpoint) = common::aws_endpoint("s3_store_without_create_names_the_missing_bucket") else { return };
    let sdk = pixbox::aws::sdk_config(Some(&endpoint)).await;
    let missing = common::unique_name("missing");
    let err = S3Store::connect(&sdk, &missing, &missing, false).await.unwrap_err();
    assert!(matches!(&err, StoreError::MissingBucket { bucket } if bucket == &missing), "{err:?}");
}

#[tokio::test]
async fn fs_writes_leave_no_temporary_files_behind() {
    let dir = tempfile::tempdir().unwrap();
    let store = fs_store(&dir);
    conformance::round_trip(&*store).await;
    conformance::overwrite_and_create_once(&*store).await;
    assert_eq!(std::fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
}
