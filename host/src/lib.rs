//! pixbox: an image upload-and-resize service whose transforms run in sandboxed WebAssembly
//! components. The binary (`main.rs`) only parses the command line and calls into this library.

pub mod api;
pub mod auth;
pub mod author;
#[cfg(feature = "aws")]
pub mod aws;
pub mod backends;
pub mod cli;
pub mod config;
pub mod imaging;
pub mod jobs;
pub mod lifecycle;
pub mod operations;
pub mod queue;
pub mod render;
pub mod sandbox;
pub mod server;
pub mod storage;
pub mod telemetry;
pub mod webhooks;
pub mod worker;

#[cfg(test)]
mod layers;
