//! Test doubles that are real adapters: an in-memory blob store and job queue (both pass the
//! conformance suites), and a wrapper that injects faults into either: fail the Nth call of an
//! operation, or deliver a message twice at once.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;
use pixbox::queue::{Delivery, JobQueue, QueueDepth, QueueError};
use pixbox::storage::{BlobStore, Bucket, GetObject, ObjectInfo, ObjectMeta, StoreError, validate_key};

/// Both buckets in a map. ETags count writes, so an overwrite is visible to tests.
#[derive(Debug, Default)]
pub struct MemoryStore {
    objects: Mutex<HashMap<(bool, String), (Bytes, ObjectInfo)>>,
    writes: Mutex<u64>,
}

fn slot(bucket: Bucket, key: &str) -> (bool, String) {
    (bucket == Bucket::Permanent, key.to_string())
}

impl MemoryStore {
    /// Writes `body` under `key` unless `only_if_absent` and the key exists; says whether it wrote.
    fn write(&self, bucket: Bucket, key: &str, body: Bytes, meta: &ObjectMeta, only_if_absent: bool) -> bool {
        let mut objects = self.objects.lock().unwrap();
        if only_if_absent && objects.contains_key(&slot(bucket, key)) {
            return false;
        }
        let mut writes = self.writes.lock().unwrap();
        *writes += 1;
        let info = ObjectInfo {
            meta: meta.clone(),
            size: body.len() as u64,
            etag: format!("\"w{writes}\""),
            modified: Some(std::time::SystemTime::now()),
        };
        objects.insert(slot(bucket, key), (body, info));
        true
    }
}

#[async_trait::async_trait]
impl BlobStore for MemoryStore {
    async fn put(&self, bucket: Bucket, key: &str, body: Bytes, meta: &ObjectMeta) -> Result<(), StoreError> {
        validate_key(key)?;
        self.write(bucket, key, body, meta, false);
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
        Ok(self.write(bucket, key, body, meta, true))
    }

    async fn get(&self, bucket: Bucket, key: &str) -> Result<GetObject, StoreError> {
        validate_key(key)?;
        let (body, info) = self
            .objects
            .lock()
            .unwrap()
            .get(&slot(bucket, key))
            .cloned()
            .ok_or_else(|| StoreError::NotFound { key: key.into() })?;
        Ok(GetObject { info, body: Box::pin(futures::stream::iter([Ok(body)])) })
    }

    async fn head(&self, bucket: Bucket, key: &str) -> Result<ObjectInfo, StoreError> {
        validate_key(key)?;
        let objects = self.objects.lock().unwrap();
        objects.get(&slot(bucket, key)).map(|(_, info)| info.clone()).ok_or(StoreError::NotFound { key: key.into() })
    }

    async fn delete(&self, bucket: Bucket, key: &str) -> Result<(), StoreError> {
        validate_key(key)?;
        self.objects.lock().unwrap().remove(&slot(bucket, key));
        Ok(())
    }

    async fn list(&self, bucket: Bucket, prefix: &str) -> Result<Vec<String>, StoreError> {
        pixbox::storage::validate_prefix(prefix)?;
        let permanent = bucket == Bucket::Permanent;
        let objects = self.objects.lock().unwrap();
        let mut keys: Vec<String> =
            objects.keys().filter(|(p, k)| *p == permanent && k.starts_with(prefix)).map(|(_, k)| k.clone()).collect();
        keys.sort();
        Ok(keys)
    }

    async fn check(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

#[derive(Debug, Clone)]
struct Message {
    body: String,
    visible_at: Instant,
    receive_count: u32,
    receipt: Option<String>,
}

/// A queue with SQS semantics in memory: visibility timeouts, receive counts, dead letters.
#[derive(Debug)]
pub struct MemoryQueue {
    state: Mutex<QueueState>,
    max_receives: u32,
}

#[derive(Debug, Default)]
struct QueueState {
    next_id: u64,
    messages: BTreeMap<u64, Message>,
    dead: BTreeMap<u64, Message>,
}

impl MemoryQueue {
    pub fn new(max_receives: u32) -> Self {
        MemoryQueue { state: Mutex::new(QueueState::default()), max_receives }
    }

    /// Messages not yet deleted (visible or not).
    pub fn len(&self) -> usize {
        self.state.lock().unwrap().messages.len()
    }

    /// Makes every message visible now, as if all visibility timeouts had run out.
    pub fn release_all(&self) {
        let now = Instant::now();
        for message in self.state.lock().unwrap().messages.values_mut() {
            message.visible_at = now;
        }
    }

    fn receive_now(&self, max: usize, visibility: Duration) -> Vec<Delivery> {
        let now = Instant::now();
        let mut state = self.state.lock().unwrap();
        let expired: Vec<u64> = state
            .messages
            .iter()
            .filter(|(_, m)| m.visible_at <= now && m.receive_count >= self.max_receives)
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            let message = state.messages.remove(&id).unwrap();
            state.dead.insert(id, message);
        }
        let visible = state.messages.iter_mut().filter(|(_, m)| m.visible_at <= now).take(max);
        visible
            .map(|(id, message)| {
                message.receive_count += 1;
                deliver(*id, message, now + visibility)
            })
            .collect()
    }
}

/// Hides `message` until `until` under a new receipt and describes this delivery of it.
fn deliver(id: u64, message: &mut Message, until: Instant) -> Delivery {
    message.visible_at = until;
    let receipt = format!("{id}:{}", uuid::Uuid::new_v4());
    message.receipt = Some(receipt.clone());
    Delivery { message_id: id.to_string(), body: message.body.clone(), receipt, receive_count: message.receive_count }
}

fn check_batch(n: usize) -> Result<(), QueueError> {
    if (1..=pixbox::queue::MAX_BATCH).contains(&n) { Ok(()) } else { Err(QueueError::BadBatch(n)) }
}

#[async_trait::async_trait]
impl JobQueue for MemoryQueue {
    async fn send_batch(&self, bodies: &[String]) -> Result<(), QueueError> {
        check_batch(bodies.len())?;
        let mut state = self.state.lock().unwrap();
        for body in bodies {
            state.next_id += 1;
            let id = state.next_id;
            let message = Message { body: body.clone(), visible_at: Instant::now(), receive_count: 0, receipt: None };
            state.messages.insert(id, message);
        }
        Ok(())
    }

    async fn receive(&self, max: usize, wait: Duration, visibility: Duration) -> Result<Vec<Delivery>, QueueError> {
        check_batch(max)?;
        let deadline = Instant::now() + wait;
        loop {
            let got = self.receive_now(max, visibility);
            if !got.is_empty() || Instant::now() >= deadline {
                return Ok(got);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn delete(&self, receipt: &str) -> Result<(), QueueError> {
        let id: u64 = receipt.split(':').next().and_then(|id| id.parse().ok()).ok_or(QueueError::ReceiptExpired)?;
        let mut state = self.state.lock().unwrap();
        if state.messages.get(&id).is_some_and(|m| m.receipt.as_deref() == Some(receipt)) {
            state.messages.remove(&id);
        }
        if state.dead.get(&id).is_some_and(|m| m.receipt.as_deref() == Some(receipt)) {
            state.dead.remove(&id);
        }
        Ok(())
    }

    async fn extend_visibility(&self, receipt: &str, visibility: Duration) -> Result<(), QueueError> {
        let id: u64 = receipt.split(':').next().and_then(|id| id.parse().ok()).ok_or(QueueError::ReceiptExpired)?;
        let mut state = self.state.lock().unwrap();
        match state.messages.get_mut(&id) {
            Some(m) if m.receipt.as_deref() == Some(receipt) => {
                m.visible_at = Instant::now() + visibility;
                Ok(())
            }
            _ => Err(QueueError::ReceiptExpired),
        }
    }

    async fn receive_dead_letters(&self, max: usize, visibility: Duration) -> Result<Vec<Delivery>, QueueError> {
        check_batch(max)?;
        self.receive_now(0, Duration::ZERO); // runs the move to the dead letters, as SQS does
        let now = Instant::now();
        let mut state = self.state.lock().unwrap();
        let visible = state.dead.iter_mut().filter(|(_, m)| m.visible_at <= now).take(max);
        Ok(visible.map(|(id, message)| deliver(*id, message, now + visibility)).collect())
    }

    async fn delete_dead_letter(&self, receipt: &str) -> Result<(), QueueError> {
        self.delete(receipt).await
    }

    async fn depth(&self) -> Result<QueueDepth, QueueError> {
        let now = Instant::now();
        let state = self.state.lock().unwrap();
        let hidden = state.messages.values().filter(|m| m.visible_at > now).count() as u64;
        Ok(QueueDepth {
            waiting: state.messages.len() as u64 - hidden,
            in_flight: hidden,
            dead: state.dead.len() as u64,
            oldest_age: None,
        })
    }

    async fn check(&self) -> Result<(), QueueError> {
        Ok(())
    }
}

/// Which call to break.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    Put,
    PutIfAbsent,
    /// A conditional put answered "exists" without writing: another writer's put was in
    /// progress (S3's 409) and then failed.
    PutIfAbsentRefused,
    Delete,
    Send,
    QueueDelete,
    /// A readiness check (of the store or of the queue).
    Check,
}

/// Something run just before a call, once (see [`Faulty::before`]).
pub type Hook = Box<dyn FnOnce() -> futures::future::BoxFuture<'static, ()> + Send>;

/// Wraps a store and a queue; `fail(op, n)` makes the `n`th call (1-based, counted from now) of
/// `op` fail with an "unavailable" error. `duplicate_next_receive` delivers the next received
/// message twice (two deliveries, two receipts), as SQS may. `before(op, hook)` runs `hook` just
/// before the next call of `op` (a race made to happen at that moment). `calls(op)` counts
/// every call of `op` so far.
pub struct Faulty<T> {
    pub inner: T,
    plan: Mutex<HashMap<Op, (u32, u32)>>,
    calls: Mutex<HashMap<Op, u32>>,
    duplicate: Mutex<bool>,
    hooks: Mutex<HashMap<Op, Hook>>,
}

impl<T: std::fmt::Debug> std::fmt::Debug for Faulty<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Faulty").field("inner", &self.inner).finish_non_exhaustive()
    }
}

impl<T> Faulty<T> {
    pub fn new(inner: T) -> Self {
        Faulty {
            inner,
            plan: Mutex::new(HashMap::new()),
            calls: Mutex::new(HashMap::new()),
            duplicate: Mutex::new(false),
            hooks: Mutex::new(HashMap::new()),
        }
    }

    pub fn before(&self, op: Op, hook: Hook) {
        self.hooks.lock().unwrap().insert(op, hook);
    }

    async fn run_hook(&self, op: Op) {
        let hook = self.hooks.lock().unwrap().remove(&op);
        if let Some(hook) = hook {
            hook().await;
        }
    }

    pub fn calls(&self, op: Op) -> u32 {
        self.calls.lock().unwrap().get(&op).copied().unwrap_or(0)
    }

    pub fn fail(&self, op: Op, nth: u32) {
        self.plan.lock().unwrap().insert(op, (0, nth));
    }

    pub fn duplicate_next_receive(&self) {
        *self.duplicate.lock().unwrap() = true;
    }

    /// True when this call of `op` is the one to fail.
    fn trips(&self, op: Op) -> bool {
        *self.calls.lock().unwrap().entry(op).or_insert(0) += 1;
        let mut plan = self.plan.lock().unwrap();
        let Some((seen, nth)) = plan.get_mut(&op) else { return false };
        *seen += 1;
        if *seen == *nth {
            plan.remove(&op);
            return true;
        }
        false
    }
}

fn store_fault(op: Op) -> StoreError {
    StoreError::Unavailable(format!("injected fault on {op:?}"))
}

#[async_trait::async_trait]
impl<S: BlobStore> BlobStore for Faulty<S> {
    async fn put(&self, bucket: Bucket, key: &str, body: Bytes, meta: &ObjectMeta) -> Result<(), StoreError> {
        if self.trips(Op::Put) {
            return Err(store_fault(Op::Put));
        }
        self.inner.put(bucket, key, body, meta).await
    }
    async fn put_if_absent(
        &self,
        bucket: Bucket,
        key: &str,
        body: Bytes,
        meta: &ObjectMeta,
    ) -> Result<bool, StoreError> {
        if self.trips(Op::PutIfAbsent) {
            return Err(store_fault(Op::PutIfAbsent));
        }
        if self.trips(Op::PutIfAbsentRefused) {
            return Ok(false);
        }
        self.inner.put_if_absent(bucket, key, body, meta).await
    }
    async fn get(&self, bucket: Bucket, key: &str) -> Result<GetObject, StoreError> {
        self.inner.get(bucket, key).await
    }
    async fn head(&self, bucket: Bucket, key: &str) -> Result<ObjectInfo, StoreError> {
        self.inner.head(bucket, key).await
    }
    async fn delete(&self, bucket: Bucket, key: &str) -> Result<(), StoreError> {
        self.run_hook(Op::Delete).await;
        if self.trips(Op::Delete) {
            return Err(store_fault(Op::Delete));
        }
        self.inner.delete(bucket, key).await
    }
    async fn list(&self, bucket: Bucket, prefix: &str) -> Result<Vec<String>, StoreError> {
        self.inner.list(bucket, prefix).await
    }
    async fn check(&self) -> Result<(), StoreError> {
        if self.trips(Op::Check) {
            return Err(store_fault(Op::Check));
        }
        self.inner.check().await
    }
}

#[async_trait::async_trait]
impl<Q: JobQueue> JobQueue for Faulty<Q> {
    async fn send_batch(&self, bodies: &[String]) -> Result<(), QueueError> {
        self.run_hook(Op::Send).await;
        if self.trips(Op::Send) {
            return Err(QueueError::Unavailable("injected fault on Send".into()));
        }
        self.inner.send_batch(bodies).await
    }
    async fn receive(&self, max: usize, wait: Duration, visibility: Duration) -> Result<Vec<Delivery>, QueueError> {
        let mut got = self.inner.receive(max, wait, visibility).await?;
        let duplicate = std::mem::take(&mut *self.duplicate.lock().unwrap());
        if duplicate && let Some(first) = got.first().cloned() {
            // The same message again under a second receipt: what an at-least-once queue may do.
            got.push(Delivery { receipt: format!("{}-duplicate", first.receipt), ..first });
        }
        Ok(got)
    }
    async fn delete(&self, receipt: &str) -> Result<(), QueueError> {
        if self.trips(Op::QueueDelete) {
            return Err(QueueError::Unavailable("injected fault on QueueDelete".into()));
        }
        self.inner.delete(receipt.trim_end_matches("-duplicate")).await
    }
    async fn extend_visibility(&self, receipt: &str, visibility: Duration) -> Result<(), QueueError> {
        self.inner.extend_visibility(receipt.trim_end_matches("-duplicate"), visibility).await
    }
    async fn receive_dead_letters(&self, max: usize, visibility: Duration) -> Result<Vec<Delivery>, QueueError> {
        self.inner.receive_dead_letters(max, visibility).await
    }
    async fn delete_dead_letter(&self, receipt: &str) -> Result<(), QueueError> {
        self.inner.delete_dead_letter(receipt).await
    }
    async fn depth(&self) -> Result<QueueDepth, QueueError> {
        self.inner.depth().await
    }
    async fn holds_key(&self, key: &str) -> Result<Option<bool>, QueueError> {
        self.inner.holds_key(key).await
    }
    async fn check(&self) -> Result<(), QueueError> {
        if self.trips(Op::Check) {
            return Err(QueueError::Unavailable(format!("injected fault on {:?}", Op::Check)));
        }
        self.inner.check().await
    }
}
