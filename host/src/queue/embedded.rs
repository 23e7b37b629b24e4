//! The embedded queue: one SQLite file per queue (WAL, synchronous=FULL), so a message is on disk
//! before `send_batch` returns and survives a crash or restart. SQS semantics: visibility timeout,
//! receive count, receipts per delivery, dead-letter after `max_receives` receives.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, OptionalExtension, params};

use super::{Delivery, JobQueue, QueueDepth, QueueError, check_batch};

/// How often a waiting receive looks again when nothing was sent from this process.
const POLL: Duration = Duration::from_millis(100);

#[derive(Debug, Clone)]
pub struct EmbeddedQueue {
    db: Arc<Mutex<Connection>>,
    path: PathBuf,
    max_receives: u32,
    sent: Arc<tokio::sync::Notify>,
}

impl EmbeddedQueue {
    /// Opens (or creates) the queue stored at `path`.
    pub fn open(path: &Path, max_receives: u32) -> Result<Self, QueueError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| unavailable(format!("cannot create {}: {e}", dir.display())))?;
        }
        let db = Connection::open(path).map_err(sql)?;
        db.busy_timeout(Duration::from_secs(10)).map_err(sql)?;
        db.execute_batch(
            "PRAGMA journal_mode = WAL;
             PRAGMA synchronous = FULL;
             CREATE TABLE IF NOT EXISTS messages (
                 id TEXT PRIMARY KEY,
                 body TEXT NOT NULL,
                 seq INTEGER NOT NULL,
                 visible_at INTEGER NOT NULL,
                 receive_count INTEGER NOT NULL DEFAULT 0,
                 receipt TEXT,
                 sent_at INTEGER
             );
             CREATE INDEX IF NOT EXISTS messages_visible ON messages (visible_at, seq);
             CREATE TABLE IF NOT EXISTS dead_letters (
                 id TEXT PRIMARY KEY,
                 body TEXT NOT NULL,
                 receive_count INTEGER NOT NULL,
                 dead_at INTEGER NOT NULL,
                 visible_at INTEGER NOT NULL DEFAULT 0,
                 receipt TEXT
             );",
        )
        .map_err(sql)?;
        // Queues made before `sent_at` existed get the column (their rows have no age).
        let has_sent_at = db
            .prepare("SELECT 1 FROM pragma_table_info('messages') WHERE name = 'sent_at'")
            .and_then(|mut stmt| stmt.exists([]))
            .map_err(sql)?;
        if !has_sent_at {
            db.execute_batch("ALTER TABLE messages ADD COLUMN sent_at INTEGER").map_err(sql)?;
        }
        Ok(EmbeddedQueue {
            db: Arc::new(Mutex::new(db)),
            path: path.to_path_buf(),
            max_receives,
            sent: Arc::new(tokio::sync::Notify::new()),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    async fn with_db<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, QueueError> + Send + 'static,
    ) -> Result<T, QueueError> {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || f(&mut db.lock().unwrap_or_else(|p| p.into_inner())))
            .await
            .map_err(|e| unavailable(format!("queue task: {e}")))?
    }

    fn receive_now(
        db: &mut Connection,
        max: usize,
        visibility: Duration,
        max_receives: u32,
    ) -> Result<Vec<Delivery>, QueueError> {
        let now = now_ms();
        let tx = db.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate).map_err(sql)?;
        move_dead_letters(&tx, now, max_receives)?;
        let rows = visible_rows(
            &tx,
            "SELECT id, body, receive_count FROM messages WHERE visible_at <= ?1 ORDER BY seq LIMIT ?2",
            now,
            max,
        )?;
        let hidden_until = now + visibility.as_millis() as i64;
        let mut deliveries = Vec::with_capacity(rows.len());
        for (id, body, count) in rows {
            let token = uuid::Uuid::new_v4().to_string();
            tx.execute(
                "UPDATE messages SET visible_at = ?1, receive_count = receive_count + 1, receipt = ?2 WHERE id = ?3",
                params![hidden_until, token, id],
            )
            .map_err(sql)?;
            deliveries.push(Delivery {
                receipt: format!("{id}:{token}"),
                message_id: id,
                body,
                receive_count: count + 1,
            });
        }
        tx.commit().map_err(sql)?;
        Ok(deliveries)
    }
}

/// (id, body, receive count) of up to `max` rows that `query` (taking `now` and `max`) selects.
fn visible_rows(db: &Connection, query: &str, now: i64, max: usize) -> Result<Vec<(String, String, u32)>, QueueError> {
    let mut stmt = db.prepare(query).map_err(sql)?;
    stmt.query_map(params![now, max as i64], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .map_err(sql)?
        .collect::<Result<_, _>>()
        .map_err(sql)
}

/// Messages received `max_receives` times whose visibility ran out again go to the dead letters
/// (SQS does the same when such a message would be received).
fn move_dead_letters(db: &Connection, now: i64, max_receives: u32) -> Result<(), QueueError> {
    db.execute(
        "INSERT OR REPLACE INTO dead_letters (id, body, receive_count, dead_at)
         SELECT id, body, receive_count, ?1 FROM messages WHERE visible_at <= ?1 AND receive_count >= ?2",
        params![now, max_receives],
    )
    .map_err(sql)?;
    db.execute("DELETE FROM messages WHERE visible_at <= ?1 AND receive_count >= ?2", params![now, max_receives])
        .map_err(sql)?;
    Ok(())
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

fn sql(e: rusqlite::Error) -> QueueError {
    unavailable(format!("embedded queue: {e}"))
}

fn unavailable(message: String) -> QueueError {
    QueueError::Unavailable(message)
}

fn split_receipt(receipt: &str) -> Result<(String, String), QueueError> {
    receipt.split_once(':').map(|(id, token)| (id.to_string(), token.to_string())).ok_or(QueueError::ReceiptExpired)
}

#[async_trait::async_trait]
impl JobQueue for EmbeddedQueue {
    async fn send_batch(&self, bodies: &[String]) -> Result<(), QueueError> {
        check_batch(bodies.len())?;
        let bodies = bodies.to_vec();
        self.with_db(move |db| {
            let tx = db.transaction().map_err(sql)?;
            let seq: i64 = tx.query_row("SELECT COALESCE(MAX(seq), 0) FROM messages", [], |r| r.get(0)).map_err(sql)?;
            let now = now_ms();
            for (i, body) in bodies.iter().enumerate() {
                tx.execute(
                    "INSERT INTO messages (id, body, seq, visible_at, sent_at) VALUES (?1, ?2, ?3, ?4, ?4)",
                    params![uuid::Uuid::new_v4().to_string(), body, seq + 1 + i as i64, now],
                )
                .map_err(sql)?;
            }
            tx.commit().map_err(sql)
        })
        .await?;
        self.sent.notify_waiters();
        Ok(())
    }

    async fn receive(&self, max: usize, wait: Duration, visibility: Duration) -> Result<Vec<Delivery>, QueueError> {
        check_batch(max)?;
        let deadline = Instant::now() + wait;
        loop {
            let notified = self.sent.notified();
            let max_receives = self.max_receives;
            let got = self.with_db(move |db| Self::receive_now(db, max, visibility, max_receives)).await?;
            let left = deadline.saturating_duration_since(Instant::now());
            if !got.is_empty() || left.is_zero() {
                return Ok(got);
            }
            let _ = tokio::time::timeout(left.min(POLL), notified).await;
        }
    }

    async fn delete(&self, receipt: &str) -> Result<(), QueueError> {
        let (id, token) = split_receipt(receipt)?;
        self.with_db(move |db| {
            db.execute("DELETE FROM messages WHERE id = ?1 AND receipt = ?2", params![id, token]).map_err(sql)?;
            db.execute("DELETE FROM dead_letters WHERE id = ?1 AND receipt = ?2", params![id, token]).map_err(sql)?;
            Ok(())
        })
        .await
    }

    async fn extend_visibility(&self, receipt: &str, visibility: Duration) -> Result<(), QueueError> {
        let (id, token) = split_receipt(receipt)?;
        let changed = self
            .with_db(move |db| {
                let until = now_ms() + visibility.as_millis() as i64;
                db.execute(
                    "UPDATE messages SET visible_at = ?1 WHERE id = ?2 AND receipt = ?3",
                    params![until, id, token],
                )
                .map_err(sql)
            })
            .await?;
        if changed == 1 { Ok(()) } else { Err(QueueError::ReceiptExpired) }
    }

    async fn receive_dead_letters(&self, max: usize, visibility: Duration) -> Result<Vec<Delivery>, QueueError> {
        check_batch(max)?;
        // Receiving also runs the move to the dead letters, as SQS does on receive.
        let max_receives = self.max_receives;
        self.with_db(move |db| {
            let now = now_ms();
            let tx = db.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate).map_err(sql)?;
            move_dead_letters(&tx, now, max_receives)?;
            let rows = visible_rows(
                &tx,
                "SELECT id, body, receive_count FROM dead_letters WHERE visible_at <= ?1 ORDER BY dead_at LIMIT ?2",
                now,
                max,
            )?;
            let mut out = Vec::new();
            for (id, body, count) in rows {
                let token = uuid::Uuid::new_v4().to_string();
                tx.execute(
                    "UPDATE dead_letters SET visible_at = ?1, receipt = ?2 WHERE id = ?3",
                    params![now + visibility.as_millis() as i64, token, id],
                )
                .map_err(sql)?;
                out.push(Delivery { receipt: format!("{id}:{token}"), message_id: id, body, receive_count: count });
            }
            tx.commit().map_err(sql)?;
            Ok(out)
        })
        .await
    }

    async fn delete_dead_letter(&self, receipt: &str) -> Result<(), QueueError> {
        // Receipts name their row; `delete` looks in both tables.
        self.delete(receipt).await
    }

    async fn depth(&self) -> Result<QueueDepth, QueueError> {
        let max_receives = self.max_receives;
        self.with_db(move |db| {
            let now = now_ms();
            // Messages past their last receive count as dead already: the next receive moves them.
            let (waiting, in_flight, dying, oldest): (i64, i64, i64, Option<i64>) = db
                .query_row(
                    "SELECT
                         COALESCE(SUM(visible_at <= ?1 AND receive_count < ?2), 0),
                         COALESCE(SUM(visible_at > ?1), 0),
                         COALESCE(SUM(visible_at <= ?1 AND receive_count >= ?2), 0),
                         MIN(CASE WHEN visible_at > ?1 OR receive_count < ?2 THEN sent_at END)
                     FROM messages",
                    params![now, max_receives],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
                )
                .map_err(sql)?;
            let dead: i64 = db.query_row("SELECT COUNT(*) FROM dead_letters", [], |r| r.get(0)).map_err(sql)?;
            let count = |n: i64| u64::try_from(n).unwrap_or(0);
            Ok(QueueDepth {
                waiting: count(waiting),
                in_flight: count(in_flight),
                dead: count(dead + dying),
                oldest_age: oldest.map(|sent| Duration::from_millis(count(now - sent))),
            })
        })
        .await
    }

    async fn holds_key(&self, key: &str) -> Result<Option<bool>, QueueError> {
        let key = key.to_string();
        self.with_db(move |db| {
            db.query_row(
                "SELECT EXISTS(SELECT 1 FROM messages WHERE json_extract(body, '$.key') = ?1)
                     OR EXISTS(SELECT 1 FROM dead_letters WHERE json_extract(body, '$.key') = ?1)",
                params![key],
                |r| r.get::<_, bool>(0),
            )
            .map(Some)
            .map_err(sql)
        })
        .await
    }

    async fn check(&self) -> Result<(), QueueError> {
        self.with_db(|db| db.query_row("SELECT 1", [], |_| Ok(())).optional().map(drop).map_err(sql)).await
    }
}
