//! Benchmark: worker throughput on a queue full of real photos, against what the sandbox alone
//! can do with the same photos on the same cores.
//!
//! Run with `cargo bench -p pixbox --bench worker` after `scripts/fetch-photos` (or point
//! `PIXBOX_BENCH_PHOTOS` at a folder of JPEGs). Same run, same files:
//! - sandbox only: each photo through the default plugin, one call at a time; per-image time;
//! - pipeline: the photos stored as originals and queued as jobs on the embedded backend, then
//!   one worker tick (`concurrency` = cores) drains the queue: get, sandbox, put, delete.
//!
//! The ratio is (sandbox time / concurrency) / pipeline time: 100 % means the pipeline keeps
//! every core as busy as the bare sandbox would.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use pixbox::config::Config;
use pixbox::jobs::Job;
use pixbox::sandbox::{Routes, Sandbox};
use pixbox::storage::{Bucket, ObjectMeta};
use pixbox::worker::Worker;

/// Each photo is queued this many times, so the queue is long enough to measure steady state.
const COPIES: usize = 3;

fn photos() -> Vec<(String, Vec<u8>)> {
    let dir = std::env::var_os("PIXBOX_BENCH_PHOTOS").map(PathBuf::from).unwrap_or_else(|| {
        let cache = std::env::var_os("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache"));
        cache.join("pixbox/photos/mate-backgrounds")
    });
    let mut photos: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("no photos in {} ({e}): run scripts/fetch-photos first", dir.display()))
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x.eq_ignore_ascii_case("jpg")))
        .map(|e| (e.file_name().to_string_lossy().into_owned(), std::fs::read(e.path()).unwrap()))
        .collect();
    photos.sort();
    assert!(!photos.is_empty(), "no .jpg files in {}", dir.display());
    photos
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    runtime.block_on(run());
}

async fn run() {
    let photos = photos();
    let dir = tempfile::tempdir().unwrap();
    let config = Config { data_dir: dir.path().to_path_buf(), ..Config::default() };
    let concurrency = config.worker_concurrency();
    let sandbox = Arc::new(Sandbox::new(config.sandbox.clone()).unwrap());
    let routes = Arc::new(Routes::load(&sandbox, &config.routes).await.unwrap());
    let route = routes.resolve("");

    // Sandbox only: one call at a time, after one warm-up call.
    let probe = |bytes: &[u8]| pixbox::imaging::probe(bytes).unwrap().format.media_type();
    sandbox.transform(&route.plugin, &photos[0].1, probe(&photos[0].1), &route.options).await.unwrap();
    let mut sandbox_time = Duration::ZERO;
    for _ in 0..COPIES {
        for (_, bytes) in &photos {
            let out = sandbox.transform(&route.plugin, bytes, probe(bytes), &route.options).await.unwrap();
            sandbox_time += out.stats.elapsed;
        }
    }
    let jobs = photos.len() * COPIES;

    // Sandbox only, `concurrency` calls at a time: what the cores give without any queue or store.
    let started = Instant::now();
    let mut calls = tokio::task::JoinSet::new();
    let work: Vec<Vec<u8>> = (0..COPIES).flat_map(|_| photos.iter().map(|(_, b)| b.clone())).collect();
    let work = Arc::new(std::sync::Mutex::new(work));
    for _ in 0..concurrency {
        let (sandbox, routes, work) = (sandbox.clone(), routes.clone(), work.clone());
        calls.spawn(async move {
            let route = routes.resolve("");
            loop {
                let Some(bytes) = work.lock().unwrap().pop() else { break };
                let media_type = pixbox::imaging::probe(&bytes).unwrap().format.media_type();
                sandbox.transform(&route.plugin, &bytes, media_type, &route.options).await.unwrap();
            }
        });
    }
    calls.join_all().await;
    let parallel_time = started.elapsed();

    // Pipeline: originals in the temp bucket, one job each, one tick drains them.
    let (store, queue) = pixbox::backends::connect(&config).await.unwrap();
    let mut bodies = Vec::new();
    for copy in 0..COPIES {
        for (name, bytes) in &photos {
            let key = format!("bench/{copy}/{name}");
            let meta = ObjectMeta { content_type: probe(bytes).into(), metadata: Default::default() };
            store.put(Bucket::Temp, &key, Bytes::from(bytes.clone()), &meta).await.unwrap();
            bodies.push(Job { key, upload: None }.to_body());
        }
    }
    for chunk in bodies.chunks(pixbox::queue::MAX_BATCH) {
        queue.send_batch(chunk).await.unwrap();
    }
    let worker = Worker {
        store: store.clone(),
        queue,
        sandbox: sandbox.clone(),
        routes: routes.clone(),
        settings: config.worker.clone(),
        limits: config.limits.pixels(),
        max_input_bytes: config.limits.max_image_bytes as usize,
    };
    let started = Instant::now();
    let report = worker.tick(concurrency, &Default::default()).await;
    let pipeline_time = started.elapsed();
    assert_eq!(report.done, jobs, "{report:?}");

    let ideal = sandbox_time / concurrency as u32;
    let megapixels: f64 = photos
        .iter()
        .map(|(_, b)| {
            let h = pixbox::imaging::probe(b).unwrap();
            f64::from(h.width) * f64::from(h.height) / 1e6
        })
        .sum();
    println!(
        "{} real photos ({:.1} MP in all) x {COPIES} = {jobs} jobs, concurrency {concurrency}",
        photos.len(),
        megapixels
    );
    println!("| measure | seconds | images/s |");
    println!("|---|---:|---:|");
    let rate = |d: Duration| jobs as f64 / d.as_secs_f64();
    println!(
        "| sandbox only, one call at a time (sum of calls) | {:.2} | {:.2} |",
        secs(sandbox_time),
        rate(sandbox_time)
    );
    println!("| sandbox only x {concurrency} cores (ideal) | {:.2} | {:.2} |", secs(ideal), rate(ideal));
    println!(
        "| sandbox only, {concurrency} calls at a time (measured) | {:.2} | {:.2} |",
        secs(parallel_time),
        rate(parallel_time)
    );
    println!("| worker pipeline, queue to all stored | {:.2} | {:.2} |", secs(pipeline_time), rate(pipeline_time));
    println!("pipeline throughput / ideal: {:.0} %", 100.0 * ideal.as_secs_f64() / pipeline_time.as_secs_f64());
    println!(
        "pipeline throughput / sandbox {concurrency} at a time: {:.0} %",
        100.0 * parallel_time.as_secs_f64() / pipeline_time.as_secs_f64()
    );
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}
