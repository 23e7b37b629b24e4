//! The plugin threads: a runtime of its own on which every plugin call runs, so the runtime that
//! serves HTTP and moves bytes to and from the store is never held up by guest code.
//!
//! Guest code yields to its executor only at epoch ticks (every 10 ms). Run on the caller's
//! runtime, two busy calls on a 2-core machine left every other task (a store read's next chunk,
//! an upload's next frame, `/health`) waiting up to a tick for each turn. On threads of their own
//! the kernel shares the cores between the calls and the I/O, preemptively.

use std::future::Future;

use tokio_util::task::AbortOnDropHandle;
use tracing::Instrument;

use super::TransformError;

/// A multi-threaded runtime as wide as the machine (no wider than the pool), shut down in the
/// background when the sandbox is dropped, wherever that happens.
pub(super) struct PluginThreads {
    runtime: Option<tokio::runtime::Runtime>,
}

impl PluginThreads {
    pub(super) fn start(slots: usize) -> std::io::Result<Self> {
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(cores.min(slots).max(1))
            .thread_name("pixbox-plugin")
            .enable_all()
            .build()?;
        Ok(PluginThreads { runtime: Some(runtime) })
    }

    /// Runs `call` on the plugin threads under the caller's tracing span. Dropping the returned
    /// future (a job cancelled at shutdown, a client gone) cancels the call, as it would inline.
    pub(super) async fn run<T: Send + 'static>(
        &self,
        call: impl Future<Output = Result<T, TransformError>> + Send + 'static,
    ) -> Result<T, TransformError> {
        let runtime = self.runtime.as_ref().expect("only taken on drop");
        let task = AbortOnDropHandle::new(runtime.spawn(call.in_current_span()));
        match task.await {
            Ok(result) => result,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(e) => Err(TransformError::Unavailable(format!("the plugin call was stopped: {e}"))),
        }
    }
}

impl Drop for PluginThreads {
    fn drop(&mut self) {
        // Dropping a runtime blocks, which panics inside another runtime's task.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}
