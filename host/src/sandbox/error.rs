//! Errors of the sandbox: loading a plugin, and running one transform.

use std::time::Duration;

use crate::jobs::codes;

/// A plugin could not be loaded (bad file, not a pixbox component, compile failure).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoadError {
    #[error("cannot read plugin {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("unknown built-in plugin {name:?} (built-ins: {known}); a path to a .wasm file also works")]
    UnknownBuiltin { name: String, known: String },
    #[error("{plugin} is not a valid pixbox plugin component: {reason}")]
    Invalid { plugin: String, reason: String },
    #[error("{plugin} failed while describing itself (info): {source}")]
    Info { plugin: String, source: TransformError },
    #[error("route {prefix:?}: {reason}")]
    Route { prefix: String, reason: String },
    #[error("cannot set up the WebAssembly engine: {0}")]
    Engine(String),
}

/// One transform call failed. [`TransformError::is_permanent`] tells whether a retry can help.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TransformError {
    /// The plugin says the input can never be processed.
    #[error("bad input: {0}")]
    BadInput(String),
    /// The plugin does not support an option, value or format.
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// The plugin reported an internal failure.
    #[error("plugin failed: {0}")]
    PluginFailed(String),
    /// The call ran past its wall-clock budget and was interrupted.
    #[error("plugin ran past its time budget of {budget:?} and was stopped")]
    Timeout { budget: Duration },
    /// The plugin tried to use more linear memory than allowed.
    #[error("plugin tried to use more than its memory limit of {limit_bytes} bytes")]
    OutOfMemory { limit_bytes: usize },
    /// The plugin trapped (a panic, an abort, an invalid operation).
    #[error("plugin crashed: {0}")]
    Trap(String),
    /// The plugin answered with something that is not the image it claims to be.
    #[error("plugin returned an invalid image: {0}")]
    InvalidOutput(String),
    /// The plugin's output is larger than allowed.
    #[error("plugin output is {size} bytes, over the limit of {limit} bytes")]
    OutputTooLarge { size: usize, limit: usize },
    /// The host could not run the plugin right now (the engine could not instantiate it).
    #[error("sandbox unavailable: {0}")]
    Unavailable(String),
    /// Every slot of the sandbox's pool stayed busy for a whole time budget: the call never ran.
    #[error("every sandbox slot stayed busy for {waited:?}; the call did not run")]
    PoolBusy { waited: Duration },
}

impl TransformError {
    /// True when running the same input through the same plugin again cannot succeed, so the job
    /// should be failed for good instead of retried.
    pub fn is_permanent(&self) -> bool {
        match self {
            TransformError::BadInput(_)
            | TransformError::Unsupported(_)
            | TransformError::InvalidOutput(_)
            | TransformError::OutputTooLarge { .. } => true,
            // Timeouts and memory exhaustion may depend on load or on a limit an operator raises;
            // traps may be a plugin bug fixed by a redeploy. The queue's receive limit bounds retries.
            TransformError::PluginFailed(_)
            | TransformError::Timeout { .. }
            | TransformError::OutOfMemory { .. }
            | TransformError::Trap(_)
            | TransformError::Unavailable(_)
            | TransformError::PoolBusy { .. } => false,
        }
    }

    /// True for the call running out of time or memory: worth one more attempt (it may have been
    /// load), permanent after [`crate::worker::RESOURCE_ATTEMPTS`].
    pub fn is_resource_limit(&self) -> bool {
        matches!(self, TransformError::Timeout { .. } | TransformError::OutOfMemory { .. })
    }

    /// A short reason for clients. The plugin's own typed messages are meant for them; what the
    /// host saw (trap details, plugin stderr, engine errors) stays in the server's log.
    pub fn public_reason(&self) -> String {
        match self {
            TransformError::BadInput(m) => format!("bad input: {}", short(m)),
            TransformError::Unsupported(m) => format!("unsupported: {}", short(m)),
            TransformError::PluginFailed(m) => format!("the plugin failed: {}", short(m)),
            TransformError::Timeout { budget } => format!("the plugin ran past its time budget of {budget:?}"),
            TransformError::OutOfMemory { limit_bytes } => {
                format!("the plugin needed more than its memory limit of {} MiB", limit_bytes >> 20)
            }
            TransformError::Trap(_) => "the plugin crashed".into(),
            TransformError::InvalidOutput(_) => "the plugin returned something that is not a valid image".into(),
            TransformError::OutputTooLarge { limit, .. } => format!("the result is larger than {limit} bytes"),
            TransformError::Unavailable(_) => "the sandbox was unavailable".into(),
            TransformError::PoolBusy { .. } => "the sandbox was busy".into(),
        }
    }

    /// A stable kebab-case name for logs, metrics and API error bodies.
    pub fn code(&self) -> &'static str {
        match self {
            TransformError::BadInput(_) => codes::BAD_INPUT,
            TransformError::Unsupported(_) => codes::UNSUPPORTED,
            TransformError::PluginFailed(_) => codes::PLUGIN_FAILED,
            TransformError::Timeout { .. } => codes::TIMEOUT,
            TransformError::OutOfMemory { .. } => codes::OUT_OF_MEMORY,
            TransformError::Trap(_) => codes::TRAP,
            TransformError::InvalidOutput(_) => codes::INVALID_OUTPUT,
            TransformError::OutputTooLarge { .. } => codes::OUTPUT_TOO_LARGE,
            TransformError::Unavailable(_) => codes::UNAVAILABLE,
            TransformError::PoolBusy { .. } => codes::SANDBOX_BUSY,
        }
    }
}

/// Longest part of a plugin's own message passed on to clients.
const MAX_PUBLIC_MESSAGE_CHARS: usize = 200;

/// A plugin's message cut to one short line for clients (the whole of it is in the log).
fn short(message: &str) -> String {
    let line: String = message.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
    let line = line.trim();
    match line.char_indices().nth(MAX_PUBLIC_MESSAGE_CHARS) {
        Some((cut, _)) => format!("{}...", &line[..cut]),
        None => line.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plugin_messages_reach_clients_as_one_short_line() {
        let long = format!("line one\nline two\t{}", "x".repeat(500));
        let reason = TransformError::BadInput(long).public_reason();
        assert!(!reason.contains('\n') && !reason.contains('\t'), "{reason}");
        assert!(reason.starts_with("bad input: line one line two"), "{reason}");
        assert!(reason.chars().count() <= "bad input: ".len() + MAX_PUBLIC_MESSAGE_CHARS + 3, "{reason}");
        assert_eq!(TransformError::PluginFailed("ünïcode ok".into()).public_reason(), "the plugin failed: ünïcode ok");
        assert_eq!(TransformError::Trap("wasm backtrace ...".into()).public_reason(), "the plugin crashed");
    }
}
