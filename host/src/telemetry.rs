//! What pixbox tells its operators: the Prometheus metrics it records (names, labels, buckets)
//! and the log subscriber (text or JSON lines).
//!
//! Metrics go through the `metrics` facade into one Prometheus recorder per process, installed on
//! first use; `/metrics` on the admin address renders it. Label values are bounded sets (routes,
//! stable error codes, configured plugin names), never keys or client input.

use std::sync::OnceLock;
use std::time::Duration;

use metrics::{counter, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use serde::{Deserialize, Serialize};

use crate::queue::JobQueue;

/// Requests answered, by `route`, `method` and `status`.
pub const HTTP_REQUESTS: &str = "pixbox_http_requests_total";
/// Time to answer, by `route`, `method` and `status` (histogram).
pub const HTTP_DURATION: &str = "pixbox_http_request_duration_seconds";
/// Image bytes accepted by `/upload`.
pub const UPLOADED_BYTES: &str = "pixbox_uploaded_bytes_total";
/// Images accepted by `/upload`.
pub const UPLOADED_IMAGES: &str = "pixbox_uploaded_images_total";
/// Job deliveries processed, by `outcome`, `code` and `plugin`.
pub const JOBS: &str = "pixbox_jobs_total";
/// Time of one plugin call, by `plugin` and `result` (`ok` or an error code) (histogram).
pub const SANDBOX_DURATION: &str = "pixbox_sandbox_duration_seconds";
/// Linear-memory high-water mark of one successful plugin call, by `plugin` (histogram).
pub const SANDBOX_MEMORY: &str = "pixbox_sandbox_memory_peak_bytes";
/// How long a plugin call waited for a free slot of the sandbox's pool (histogram).
pub const SANDBOX_POOL_WAIT: &str = "pixbox_sandbox_pool_wait_seconds";
/// Time of one worker tick (histogram).
pub const TICK_DURATION: &str = "pixbox_worker_tick_duration_seconds";
/// Messages waiting in the job queue (sampled when `/metrics` is read).
pub const QUEUE_DEPTH: &str = "pixbox_queue_depth";
/// Messages received and not yet settled (sampled).
pub const QUEUE_IN_FLIGHT: &str = "pixbox_queue_in_flight";
/// Messages in the dead-letter queue (sampled).
pub const DEAD_LETTER_DEPTH: &str = "pixbox_dead_letter_depth";
/// Age of the oldest queued message, when the queue can tell (sampled; embedded queue only).
pub const QUEUE_OLDEST_AGE: &str = "pixbox_queue_oldest_age_seconds";
/// 1 when the last sample of the queue succeeded, 0 when the queue did not answer.
pub const QUEUE_UP: &str = "pixbox_queue_up";
/// Connections closed without a request, by `reason` (`per-address`: over the per-address limit
/// at accept; `header-timeout`: no complete request head in time).
pub const CONNECTIONS_REFUSED: &str = "pixbox_connections_refused_total";
/// Preset requests by `preset` and `result`: `hit` (served from the store), `ok` (rendered),
/// `busy` (no render slot), or the failed render's code.
pub const RENDERS: &str = "pixbox_renders_total";
/// Webhook attempts by `result`: `delivered`, `retry` (tried again later) or `failed` (given up).
pub const WEBHOOKS: &str = "pixbox_webhooks_total";
/// Images deleted (`DELETE /images/{key}`, `pixbox images delete`).
pub const DELETED_IMAGES: &str = "pixbox_deleted_images_total";
/// Uploads that were duplicates of an image already stored (`dedupe = true` routes): no job.
pub const DEDUPLICATED: &str = "pixbox_deduplicated_images_total";

/// Request and plugin times: 1 ms to 2 min.
const SECONDS_BUCKETS: &[f64] = &[0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 120.0];
/// Memory high-water: 1 MiB to 1 GiB.
const BYTES_BUCKETS: &[f64] = &[
    1_048_576.0,
    4_194_304.0,
    16_777_216.0,
    33_554_432.0,
    67_108_864.0,
    134_217_728.0,
    268_435_456.0,
    536_870_912.0,
    1_073_741_824.0,
];
/// How long a scrape waits for the queue's counts.
const SAMPLE_TIMEOUT: Duration = Duration::from_secs(3);

static RECORDER: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the process's Prometheus recorder (once; later calls return the same handle). Until
/// it is installed, the `metrics` macros record nothing, at no cost.
pub fn install() -> &'static PrometheusHandle {
    RECORDER.get_or_init(|| {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS_BUCKETS)
            .and_then(|b| b.set_buckets_for_metric(Matcher::Suffix("_bytes".into()), BYTES_BUCKETS))
            .expect("the bucket lists are not empty")
            .build_recorder();
        let handle = recorder.handle();
        if metrics::set_global_recorder(recorder).is_err() {
            // A program embedding pixbox installed its own: metrics go there, /metrics stays empty.
            tracing::warn!("another metrics recorder is installed; /metrics will be empty");
        }
        handle
    })
}

/// The Prometheus text for `/metrics` (the queue gauges as [`sample_queue`] last set them).
pub fn render() -> String {
    let handle = install();
    // Histograms are kept in per-thread buffers until an upkeep folds them in.
    handle.run_upkeep();
    handle.render()
}

/// Sets the queue gauges from the queue's counts now.
pub async fn sample_queue(queue: &dyn JobQueue) {
    match tokio::time::timeout(SAMPLE_TIMEOUT, queue.depth()).await {
        Ok(Ok(depth)) => {
            gauge!(QUEUE_DEPTH).set(depth.waiting as f64);
            gauge!(QUEUE_IN_FLIGHT).set(depth.in_flight as f64);
            gauge!(DEAD_LETTER_DEPTH).set(depth.dead as f64);
            if let Some(age) = depth.oldest_age {
                gauge!(QUEUE_OLDEST_AGE).set(age.as_secs_f64());
            } else {
                gauge!(QUEUE_OLDEST_AGE).set(0.0);
            }
            gauge!(QUEUE_UP).set(1.0);
        }
        Ok(Err(e)) => {
            tracing::warn!("metrics: cannot sample the queue: {e}");
            gauge!(QUEUE_UP).set(0.0);
        }
        Err(_) => {
            tracing::warn!("metrics: the queue did not answer within {SAMPLE_TIMEOUT:?}");
            gauge!(QUEUE_UP).set(0.0);
        }
    }
}

/// One answered request.
pub fn request(route: &'static str, method: &str, status: u16, elapsed: Duration) {
    let labels = [("route", route.to_string()), ("method", method.to_string()), ("status", status.to_string())];
    counter!(HTTP_REQUESTS, &labels).increment(1);
    histogram!(HTTP_DURATION, &labels).record(elapsed.as_secs_f64());
}

/// One image accepted by `/upload`.
pub fn uploaded(bytes: usize) {
    counter!(UPLOADED_IMAGES).increment(1);
    counter!(UPLOADED_BYTES).increment(bytes as u64);
}

/// One processed job delivery.
pub fn job(outcome: &'static str, code: &str, plugin: &str) {
    let labels = [("outcome", outcome.to_string()), ("code", code.to_string()), ("plugin", plugin.to_string())];
    counter!(JOBS, &labels).increment(1);
}

/// How long a plugin call waited for a pool slot.
pub fn pool_wait(waited: Duration) {
    histogram!(SANDBOX_POOL_WAIT).record(waited.as_secs_f64());
}

/// One plugin call: its time, and its memory high-water when it succeeded.
pub fn sandbox_call(plugin: &str, result: &'static str, elapsed: Duration, memory_peak: Option<usize>) {
    let labels = [("plugin", plugin.to_string()), ("result", result.to_string())];
    histogram!(SANDBOX_DURATION, &labels).record(elapsed.as_secs_f64());
    if let Some(peak) = memory_peak {
        histogram!(SANDBOX_MEMORY, "plugin" => plugin.to_string()).record(peak as f64);
    }
}

/// One preset request (see [`RENDERS`]).
pub fn variant(preset: &str, result: &'static str) {
    counter!(RENDERS, "preset" => preset.to_string(), "result" => result).increment(1);
}

/// One webhook attempt (see [`WEBHOOKS`]).
pub fn webhook(result: &'static str) {
    counter!(WEBHOOKS, "result" => result).increment(1);
}

/// One image deleted.
pub fn deleted() {
    counter!(DELETED_IMAGES).increment(1);
}

/// One upload answered with an alias of an image already stored.
pub fn deduplicated() {
    counter!(DEDUPLICATED).increment(1);
}

/// A connection closed without a request (see [`CONNECTIONS_REFUSED`]).
pub fn connection_refused(reason: &'static str) {
    counter!(CONNECTIONS_REFUSED, "reason" => reason).increment(1);
}

/// One worker tick.
pub fn tick(elapsed: Duration) {
    histogram!(TICK_DURATION).record(elapsed.as_secs_f64());
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One readable line per event.
    Text,
    /// One JSON object per line, with the request id and span fields flattened in.
    Json,
}

/// Logs go to stderr; `log` in the configuration (or `RUST_LOG`) is an env-filter directive,
/// `log_format` picks readable lines or JSON objects (span fields such as the request id are
/// flattened into each line). A bare level (`debug`) applies to pixbox and its plugins only:
/// wasmtime, cranelift and the AWS SDK stay at `warn` (their debug lines would bury pixbox's).
/// `tool` is for the plugin author's commands (`transform`, `plugin watch`): every plugin
/// message is shown, on short lines without timestamps.
pub fn init_tracing(log: &str, format: LogFormat, tool: bool) {
    let directive = log_directive(log, tool);
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(directive));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let _ = match format {
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(false).with_span_list(true).try_init(),
        LogFormat::Text if tool => builder.without_time().with_ansi(ansi).try_init(),
        LogFormat::Text => builder.with_ansi(ansi).try_init(),
    };
}

/// The env-filter directive for a configured `log` value (see [`init_tracing`]).
pub fn log_directive(log: &str, tool: bool) -> String {
    let plugin = if tool { "trace" } else { log };
    if log.contains(['=', ',']) {
        // A full directive is the operator's choice, as written (plugin messages added for tools).
        if tool { format!("{log},{PLUGIN_LOG_TARGET}=trace") } else { log.to_string() }
    } else {
        format!("warn,pixbox={log},{PLUGIN_LOG_TARGET}={plugin}")
    }
}

/// The log target of every message a plugin writes (`log` calls, stdout and stderr), so a
/// filter can show or hide plugins apart from the host: `PIXBOX_LOG=info,plugin=debug`.
pub const PLUGIN_LOG_TARGET: &str = "plugin";

#[cfg(test)]
mod tests {
    use super::log_directive;

    #[test]
    fn a_bare_level_is_pixbox_and_its_plugins_only() {
        assert_eq!(log_directive("debug", false), "warn,pixbox=debug,plugin=debug");
        assert_eq!(log_directive("info", true), "warn,pixbox=info,plugin=trace");
        assert_eq!(log_directive("info,wasmtime=debug", false), "info,wasmtime=debug");
    }
}
