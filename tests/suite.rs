//! The test binary of every integration test that can share a process with the others: the
//! CLI, the ports' conformance suites, the pipeline end to end, deletes, webhooks and duplicates, presets rendered on request,
//! operations, faults, the sandbox's contract, plugin authoring, properties and fuzzing. One
//! binary links wasmtime and the AWS SDK once, not once a file. The tests that bound resident
//! memory are in `defences.rs` (which serialises them) and `limits.rs` (which bounds the whole
//! process), binaries of their own.

mod common;

mod animation;
mod cli;
mod faults;
mod fuzz;
mod inputs;
mod lifecycle;
mod operations;
mod pipeline;
mod plugin_author;
mod presets;
mod properties;
#[cfg(feature = "aws")]
mod queue;
mod sandbox;
#[cfg(feature = "aws")]
mod storage;
