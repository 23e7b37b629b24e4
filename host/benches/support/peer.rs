//! Timing a peer's command-line tool from a benchmark: wall time and the tool's own peak memory.

use std::process::Command;
use std::time::{Duration, Instant};

/// Runs a peer to its end under GNU time: wall time, and the peer's own peak resident set in
/// bytes. (Reaped by the benchmark with `wait4`, a child would report at least the benchmark's
/// size: it starts as a copy of it, and Linux keeps that high-water across `exec`.)
pub fn run(command: &mut Command) -> (Duration, usize) {
    let rss = tempfile::NamedTempFile::new().unwrap();
    let mut timed = Command::new("/usr/bin/time");
    timed.args(["-f", "%M", "-o"]).arg(rss.path()).arg(command.get_program()).args(command.get_args());
    for (name, value) in command.get_envs() {
        if let Some(value) = value {
            timed.env(name, value);
        }
    }
    let started = Instant::now();
    let status = timed.status().expect("run GNU time (Debian: time) and the peer");
    let took = started.elapsed();
    assert!(status.success(), "{command:?} failed: {status}");
    let kib: usize = std::fs::read_to_string(rss.path()).unwrap().trim().parse().unwrap();
    (took, kib * 1024)
}

/// The median of some timings.
pub fn median(times: &mut [Duration]) -> Duration {
    times.sort();
    times[times.len() / 2]
}
