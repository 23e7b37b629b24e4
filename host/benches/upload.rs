//! Benchmark: the upload path under load. 32 clients post a 1 MB photo each, again and again, to
//! `pixbox serve --role api` on the embedded backend (filesystem store + SQLite queue).
//!
//! Run with `cargo bench -p pixbox --bench upload`. The server is the real binary in its own
//! process (so its memory can be read from /proc); the load generator runs in this process on the
//! same cores, over loopback. Prints latency percentiles, throughput and the server's resident
//! memory (sampled every 5 ms, and the kernel's high-water mark).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

const CLIENTS: usize = 32;
/// Uploads per client after the warm-up round.
const UPLOADS_PER_CLIENT: usize = 20;

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    runtime.block_on(run());
}

async fn run() {
    let photo = one_megabyte_photo();
    let data = tempfile::tempdir().unwrap();
    // Isolated from any pixbox.toml or PIXBOX_* of the machine (the defaults are measured).
    let mut server = Command::new(env!("CARGO_BIN_EXE_pixbox"))
        .current_dir(data.path())
        .env_clear()
        .arg("--data-dir")
        .arg(data.path())
        .args(["serve", "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", "--role", "api"])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .expect("start pixbox serve");
    let pid = server.id();
    let mut line = String::new();
    BufReader::new(server.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let addr = line.split("http://").nth(1).and_then(|s| s.split_whitespace().next()).expect("listening line");
    let url = format!("http://{addr}/upload");

    let rss_peak = Arc::new(AtomicU64::new(0));
    let sampling = Arc::new(AtomicBool::new(true));
    let sampler = {
        let (rss_peak, sampling) = (rss_peak.clone(), sampling.clone());
        std::thread::spawn(move || {
            while sampling.load(Ordering::Relaxed) {
                rss_peak.fetch_max(status_kib(pid, "VmRSS:"), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    };

    let client = reqwest::Client::builder().pool_max_idle_per_host(CLIENTS).build().unwrap();
    // Warm-up: one upload per client (connections, the SQLite file, the allocator).
    round(&client, &url, &photo, 1).await;
    let rss_before = status_kib(pid, "VmRSS:");
    let started = Instant::now();
    let mut latencies = round(&client, &url, &photo, UPLOADS_PER_CLIENT).await;
    let wall = started.elapsed();
    sampling.store(false, Ordering::Relaxed);
    sampler.join().unwrap();
    let hwm = status_kib(pid, "VmHWM:");
    server.kill().unwrap();
    server.wait().unwrap();

    latencies.sort();
    let pct = |p: f64| latencies[((latencies.len() as f64 * p).ceil() as usize).min(latencies.len()) - 1];
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "{} uploads of {} KiB, {CLIENTS} concurrent clients, in {:.1} s ({:.0} uploads/s)",
        latencies.len(),
        photo.len() / 1024,
        wall.as_secs_f64(),
        latencies.len() as f64 / wall.as_secs_f64()
    );
    println!(
        "| p50 ms | p90 ms | p99 ms | max ms | server RSS after warm-up MiB | server RSS peak MiB (5 ms samples) | server VmHWM MiB |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|");
    println!(
        "| {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} |",
        ms(pct(0.50)),
        ms(pct(0.90)),
        ms(pct(0.99)),
        ms(pct(1.0)),
        rss_before as f64 / 1024.0,
        rss_peak.load(Ordering::Relaxed) as f64 / 1024.0,
        hwm as f64 / 1024.0
    );
}

/// `CLIENTS` tasks, each posting `count` uploads one after another; returns every latency.
async fn round(client: &reqwest::Client, url: &str, photo: &bytes::Bytes, count: usize) -> Vec<Duration> {
    let tasks: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (client, url, photo) = (client.clone(), url.to_string(), photo.clone());
            tokio::spawn(async move {
                let mut times = Vec::with_capacity(count);
                for _ in 0..count {
                    let part = reqwest::multipart::Part::bytes(photo.to_vec()).file_name("photo.jpg");
                    let form = reqwest::multipart::Form::new().part("image", part);
                    let started = Instant::now();
                    let response = client.post(&url).multipart(form).send().await.expect("upload");
                    let status = response.status();
                    let body = response.bytes().await.expect("upload answer");
                    assert_eq!(status, 202, "upload refused: {}", String::from_utf8_lossy(&body));
                    times.push(started.elapsed());
                }
                times
            })
        })
        .collect();
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.unwrap());
    }
    all
}

/// A real photo of about 1 MB from `scripts/fetch-photos` (mate-backgrounds' Dune, 1680x1050).
fn one_megabyte_photo() -> bytes::Bytes {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/fetch-photos");
    let out = Command::new(script).output().expect("run scripts/fetch-photos");
    assert!(out.status.success(), "scripts/fetch-photos failed: {}", String::from_utf8_lossy(&out.stderr));
    let cache = PathBuf::from(String::from_utf8(out.stdout).unwrap().trim());
    std::fs::read(cache.join("mate-backgrounds/Dune.jpg")).unwrap().into()
}

/// A `Vm*:` line of /proc/<pid>/status, in KiB (0 if the process is gone).
fn status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}
