//! Benchmark: worker throughput on a queue full of real photos, against what the sandbox alone
//! can do with the same photos on the same cores.
//!
//! Run with `cargo bench -p pixbox --bench worker` after `scripts/fetch-photos` (or point
//! `PIXBOX_BENCH_PHOTOS` at a folder of JPEGs). Same run, same files, in interleaved rounds (a
//! shared VM drifts; interleaving keeps the three measures comparable), medians reported:
//! - sandbox only, serial: each photo through the default plugin, one call at a time;
//! - sandbox only, parallel: `concurrency` calls at a time, no queue, no store;
//! - pipeline: the photos stored as originals and queued as jobs on the embedded backend, then
//!   one worker tick (`concurrency` = cores) drains the queue: get, sandbox, put, delete.
//!
//! The headline ratio is (serial time / concurrency) / pipeline time: 100 % means the pipeline
//! keeps every core as busy as the bare sandbox would with perfect scaling. The CPU time of the
//! two wall-clock measures tells idle cores (cores busy below `concurrency`) from host work.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

#[path = "support/cpu.rs"]
mod cpu;
use cpu::cpu_time;
use pixbox::config::Config;
use pixbox::jobs::Job;
use pixbox::sandbox::{Routes, Sandbox};
use pixbox::storage::{Bucket, ObjectMeta};
use pixbox::worker::Worker;

/// Each photo is queued this many times per round, so the queue is long enough for steady state.
const COPIES: usize = 3;
/// Rounds of the three measures; medians are reported.
const ROUNDS: usize = 3;

type Photos = Vec<(String, Vec<u8>)>;

fn photos() -> Photos {
    let dir = std::env::var_os("PIXBOX_BENCH_PHOTOS").map(PathBuf::from).unwrap_or_else(|| {
        let cache = std::env::var_os("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache"));
        cache.join("pixbox/photos/mate-backgrounds")
    });
    let mut photos: Photos = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("no photos in {} ({e}): run scripts/fetch-photos first", dir.display()))
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x.eq_ignore_ascii_case("jpg")))
        .map(|e| (e.file_name().to_string_lossy().into_owned(), std::fs::read(e.path()).unwrap()))
        .collect();
    photos.sort();
    assert!(!photos.is_empty(), "no .jpg files in {}", dir.display());
    photos
}

fn media_type(bytes: &[u8]) -> &'static str {
    pixbox::imaging::probe(bytes).unwrap().format.media_type()
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    runtime.block_on(run());
}

/// Everything a round needs: the photos, and one sandbox and route table for all measures.
struct Bench {
    photos: Photos,
    sandbox: Arc<Sandbox>,
    routes: Arc<Routes>,
    concurrency: usize,
}

impl Bench {
    /// The work of one round, in pipeline order.
    fn work(&self) -> Vec<&[u8]> {
        (0..COPIES).flat_map(|_| self.photos.iter().map(|(_, b)| b.as_slice())).collect()
    }

    /// Sum of the sandbox's own time over the round, one call at a time.
    async fn serial(&self) -> Duration {
        let route = self.routes.resolve("");
        let mut total = Duration::ZERO;
        for bytes in self.work() {
            let out = self.sandbox.transform(&route.plugin, bytes, media_type(bytes), &route.options).await.unwrap();
            total += out.stats.elapsed;
        }
        total
    }

    /// Wall time of the round with `concurrency` sandbox calls at a time.
    async fn parallel(&self) -> Measured {
        // Popped from the end: reversed, so the calls come in the pipeline's order.
        let work: Vec<Vec<u8>> = self.work().into_iter().rev().map(<[u8]>::to_vec).collect();
        let work = Arc::new(std::sync::Mutex::new(work));
        let (started, cpu) = (Instant::now(), cpu_time());
        let mut calls = tokio::task::JoinSet::new();
        for _ in 0..self.concurrency {
            let (sandbox, routes, work) = (self.sandbox.clone(), self.routes.clone(), work.clone());
            calls.spawn(async move {
                let route = routes.resolve("");
                loop {
                    let Some(bytes) = work.lock().unwrap().pop() else { break };
                    sandbox.transform(&route.plugin, &bytes, media_type(&bytes), &route.options).await.unwrap();
                }
            });
        }
        calls.join_all().await;
        Measured { wall: started.elapsed(), cpu: cpu_time() - cpu }
    }

    /// Wall time from a full queue until the last result is stored (the tick itself then spends
    /// a moment deciding the queue is empty, which is per tick, not per image).
    async fn pipeline(&self) -> Measured {
        let dir = tempfile::tempdir().unwrap();
        let config = Config { data_dir: dir.path().to_path_buf(), ..Config::default() };
        let (store, queue) = pixbox::backends::connect(&config).await.unwrap();
        let mut bodies = Vec::new();
        for (i, bytes) in self.work().into_iter().enumerate() {
            let key = format!("bench/{i}.jpg");
            let meta = ObjectMeta { content_type: media_type(bytes).into(), metadata: Default::default() };
            store.put(Bucket::Temp, &key, Bytes::copy_from_slice(bytes), &meta).await.unwrap();
            bodies.push(Job::new(key).to_body());
        }
        for chunk in bodies.chunks(pixbox::queue::MAX_BATCH) {
            queue.send_batch(chunk).await.unwrap();
        }
        let worker = Worker {
            store: store.clone(),
            queue,
            sandbox: self.sandbox.clone(),
            routes: self.routes.clone(),
            settings: config.worker.clone(),
            limits: config.limits.pixels(),
            formats: config.formats,
            max_input_bytes: config.limits.max_image_bytes as usize,
        };
        let jobs = bodies.len();
        let concurrency = self.concurrency;
        let (started, cpu) = (Instant::now(), cpu_time());
        let tick = tokio::spawn(async move { worker.tick(concurrency, &Default::default()).await });
        while store.list(Bucket::Permanent, "bench/").await.unwrap().len() < jobs {
            assert!(!tick.is_finished(), "the tick ended before every result was stored");
            // Coarse on purpose: listing competes with the jobs for the same cores.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let measured = Measured { wall: started.elapsed(), cpu: cpu_time() - cpu };
        let report = tick.await.unwrap();
        assert_eq!(report.done, jobs, "{report:?}");
        measured
    }
}

async fn run() {
    let config = Config::default();
    let sandbox = Arc::new(Sandbox::new(config.sandbox.clone()).unwrap());
    let routes = Arc::new(Routes::load(&sandbox, &config.routes).await.unwrap());
    let bench = Bench { photos: photos(), sandbox, routes, concurrency: config.worker_concurrency() };
    let warm = &bench.photos[0].1;
    let route = bench.routes.resolve("");
    bench.sandbox.transform(&route.plugin, warm, media_type(warm), &route.options).await.unwrap();

    let (mut serial, mut parallel, mut pipeline) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        serial.push(bench.serial().await);
        parallel.push(bench.parallel().await);
        pipeline.push(bench.pipeline().await);
    }
    let serial = median(serial);
    let (parallel, pipeline) = (Measured::median(parallel), Measured::median(pipeline));
    let concurrency = bench.concurrency;
    let ideal = serial / concurrency as u32;
    let jobs = bench.work().len();
    let megapixels: f64 = bench
        .photos
        .iter()
        .map(|(_, b)| {
            let h = pixbox::imaging::probe(b).unwrap();
            f64::from(h.width) * f64::from(h.height) / 1e6
        })
        .sum();
    println!(
        "{} real photos ({megapixels:.1} MP in all) x {COPIES} = {jobs} jobs per round, concurrency {concurrency}, \
         median of {ROUNDS} interleaved rounds",
        bench.photos.len(),
    );
    println!("| measure | seconds | images/s | CPU seconds | cores busy |");
    println!("|---|---:|---:|---:|---:|");
    let row = |name: String, d: Duration, cpu: Option<Duration>| {
        let (cpu, busy) = match cpu {
            Some(cpu) => (format!("{:.2}", cpu.as_secs_f64()), format!("{:.2}", cpu.as_secs_f64() / d.as_secs_f64())),
            None => ("".into(), "".into()),
        };
        println!("| {name} | {:.2} | {:.2} | {cpu} | {busy} |", d.as_secs_f64(), jobs as f64 / d.as_secs_f64())
    };
    row("sandbox only, one call at a time (sum of calls)".into(), serial, None);
    row(format!("sandbox only x {concurrency} cores (ideal)"), ideal, None);
    row(format!("sandbox only, {concurrency} calls at a time (measured)"), parallel.wall, Some(parallel.cpu));
    row("worker pipeline, full queue to all stored".into(), pipeline.wall, Some(pipeline.cpu));
    let ratio = |d: Duration| 100.0 * d.as_secs_f64() / pipeline.wall.as_secs_f64();
    println!("pipeline throughput / ideal: {:.0} %", ratio(ideal));
    println!("pipeline throughput / sandbox {concurrency} at a time: {:.0} %", ratio(parallel.wall));
}

/// Wall time of a measure and the CPU time the process spent in it (all threads): their ratio
/// says how many cores were busy, so idle cores show apart from slow code.
#[derive(Debug, Clone, Copy)]
struct Measured {
    wall: Duration,
    cpu: Duration,
}

impl Measured {
    /// The round with the median wall time.
    fn median(mut rounds: Vec<Measured>) -> Measured {
        rounds.sort_by_key(|m| m.wall);
        rounds[rounds.len() / 2]
    }
}

fn median(mut times: Vec<Duration>) -> Duration {
    times.sort();
    times[times.len() / 2]
}
