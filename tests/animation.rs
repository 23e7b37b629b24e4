//! Animations end to end: animated GIF and WebP uploads come back animated (frames, delays, loop
//! count, every frame the route's size), the frame limits refuse at upload with nothing stored,
//! and a 200-frame 1080p GIF is either refused from its header or made with the memory of a frame.

use crate::common::{self, int, route, text};

use std::io::Cursor;

use image::AnimationDecoder;
use pixbox::imaging::container;
use pixbox::sandbox::{RenditionRequest, SandboxSettings};
use pixbox::storage::Bucket;
use reqwest::StatusCode;
use reqwest::multipart::{Form, Part};
use serde_json::Value;

// The benchmark's generated animation (benches/animation.rs), the same file for both.
#[path = "../host/benches/support/striped_gif.rs"]
mod striped_gif;
use striped_gif::striped_gif;

const GIF: &[u8] = include_bytes!("fixtures/animated-3.gif");
const WEBP: &[u8] = include_bytes!("fixtures/animated-3.webp");

/// The frames of an animated GIF or WebP as (width, height, delay in ms, mean blue).
fn frames(bytes: &[u8]) -> Vec<(u32, u32, u32, u8)> {
    let frames = match image::guess_format(bytes).unwrap() {
        image::ImageFormat::Gif => image::codecs::gif::GifDecoder::new(Cursor::new(bytes)).unwrap().into_frames(),
        image::ImageFormat::WebP => image::codecs::webp::WebPDecoder::new(Cursor::new(bytes)).unwrap().into_frames(),
        other => panic!("not an animation: {other:?}"),
    };
    frames
        .map(|frame| {
            let frame = frame.unwrap();
            let (numer, denom) = frame.delay().numer_denom_ms();
            let buffer = frame.into_buffer();
            let blue =
                buffer.pixels().map(|p| u64::from(p.0[2])).sum::<u64>() / u64::from(buffer.width() * buffer.height());
            (buffer.width(), buffer.height(), numer / denom, blue as u8)
        })
        .collect()
}

async fn upload(client: &reqwest::Client, base: &str, prefix: &str, bytes: &[u8], name: &str) -> reqwest::Response {
    let form = Form::new()
        .text("prefix", prefix.to_string())
        .part("images", Part::bytes(bytes.to_vec()).file_name(name.to_string()));
    client.post(format!("{base}/upload")).multipart(form).send().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn animated_gif_and_webp_come_back_animated_with_frames_delays_and_loops() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = common::config(dir.path());
    let box60 = [("width", int(60)), ("height", int(60))];
    config.routes = vec![
        route("", "resize", &box60),
        route("gif/", "resize", &[box60[0].clone(), box60[1].clone(), ("format", text("gif"))]),
        route("still/", "resize", &[box60[0].clone(), box60[1].clone(), ("animation", text("first-frame"))]),
    ];
    let running = pixbox::server::start(&config).await.unwrap();
    let base = format!("http://{}", running.addr.unwrap());
    let client = reqwest::Client::new();
    let download = |key: String| {
        let client = client.clone();
        let base = base.clone();
        async move { client.get(format!("{base}/download/{key}")).send().await.unwrap().bytes().await.unwrap().to_vec() }
    };

    // The sources: 120x80, blue 20, 120, 220, shown 100, 200, 300 ms, playing three times.
    let source: Vec<_> = frames(GIF).into_iter().map(|(w, h, delay, _)| (w, h, delay)).collect();
    assert_eq!(source, [(120, 80, 100), (120, 80, 200), (120, 80, 300)]);

    for (what, input, prefix, format) in [
        ("GIF -> WebP", GIF, "", image::ImageFormat::WebP),
        ("WebP -> WebP", WEBP, "", image::ImageFormat::WebP),
        ("GIF -> GIF", GIF, "gif/", image::ImageFormat::Gif),
        ("WebP -> GIF", WEBP, "gif/", image::ImageFormat::Gif),
    ] {
        let key = common::upload_done(&client, &base, prefix, input.to_vec()).await;
        let out = download(key).await;
        assert_eq!(image::guess_format(&out).unwrap(), format, "{what}");
        let scan = match format {
            image::ImageFormat::Gif => container::gif(&out),
            _ => container::webp(&out),
        }
        .unwrap();
        assert_eq!((scan.width, scan.height, scan.frames, scan.loops), (60, 40, 3, Some(3)), "{what}");
        let made = frames(&out);
        assert_eq!(
            made.iter().map(|f| (f.0, f.1, f.2)).collect::<Vec<_>>(),
            [(60, 40, 100), (60, 40, 200), (60, 40, 300)],
            "{what}"
        );
        for (i, (.., blue)) in made.iter().enumerate() {
            let expected = i as i32 * 100 + 20;
            assert!((i32::from(*blue) - expected).abs() <= 12, "{what}: frame {i} is blue {blue}, not {expected}");
        }
    }

    // `animation = first-frame`: a still of the first frame (a GIF's still is a PNG).
    let key = common::upload_done(&client, &base, "still/", GIF.to_vec()).await;
    let still = download(key).await;
    assert_eq!(image::guess_format(&still).unwrap(), image::ImageFormat::Png);
    let still = common::decode(&still);
    assert_eq!((still.width(), still.height()), (60, 40));
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn animations_over_the_frame_limits_are_refused_at_upload_with_nothing_stored() {
    // The 3-frame 120x80 GIF: 3 frames, 28 800 pixels over all frames.
    for (max_frames, max_animation_pixels, status, code) in [
        (3, 28_800, StatusCode::ACCEPTED, None),
        (2, 28_800, StatusCode::UNPROCESSABLE_ENTITY, Some("too-many-frames")),
        (3, 28_799, StatusCode::UNPROCESSABLE_ENTITY, Some("too-many-frames")),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let mut config = common::config(dir.path());
        config.limits.max_frames = max_frames;
        config.limits.max_animation_pixels = max_animation_pixels;
        config.role = pixbox::config::Role::Api;
        let (store, _) = pixbox::backends::connect(&config).await.unwrap();
        let running = pixbox::server::start(&config).await.unwrap();
        let base = format!("http://{}", running.addr.unwrap());
        let client = reqwest::Client::new();
        for (name, bytes) in [("a.gif", GIF), ("a.webp", WEBP)] {
            let answer = upload(&client, &base, "", bytes, name).await;
            let label = format!("{name} under {max_frames} frames / {max_animation_pixels} pixels");
            assert_eq!(answer.status(), status, "{label}");
            let body: Value = answer.json().await.unwrap();
            if let Some(code) = code {
                assert_eq!(body["code"], code, "{label}: {body}");
                assert!(body["message"].as_str().unwrap().contains("animation has 3 frames"), "{label}: {body}");
            }
        }
        let stored = store.list(Bucket::Temp, "").await.unwrap();
        let images: Vec<_> = stored.iter().filter(|k| !k.starts_with(".pixbox/")).collect();
        assert_eq!(images.len(), if code.is_some() { 0 } else { 2 }, "{stored:?}");
        running.stop().await;
    }
}

/// A worst case: 200 frames of 1920x1080, 415 million pixels. Under the default
/// limits it is refused from its header at upload (422, nothing stored, nothing decoded); with the
/// limit raised, the default plugin makes it within the default memory cap, holding about one
/// frame at a time (the high-water from the call's stats), never killed half-way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_200_frame_1080p_gif_is_refused_by_default_and_made_in_one_frames_memory_when_allowed() {
    let gif = striped_gif(1920, 1080, 200);
    let header = pixbox::imaging::probe(&gif).unwrap();
    assert_eq!((header.width, header.height, header.frames), (1920, 1080, 200));

    let dir = tempfile::tempdir().unwrap();
    let mut config = common::config(dir.path());
    config.role = pixbox::config::Role::Api;
    let (store, _) = pixbox::backends::connect(&config).await.unwrap();
    let running = pixbox::server::start(&config).await.unwrap();
    let base = format!("http://{}", running.addr.unwrap());
    let answer = upload(&reqwest::Client::new(), &base, "", &gif, "worst.gif").await;
    assert_eq!(answer.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let body: Value = answer.json().await.unwrap();
    assert_eq!(body["code"], "too-many-frames", "{body}");
    assert!(store.list(Bucket::Temp, "").await.unwrap().iter().all(|k| k.starts_with(".pixbox/")));
    running.stop().await;

    // Allowed: the default memory cap (256 MiB); the time budget raised, as an operator who
    // raises the animation limit would.
    let settings = SandboxSettings { time_budget_ms: 120_000, ..SandboxSettings::default() };
    assert_eq!(settings.memory_limit_mib, 256, "the default memory cap");
    let sandbox = common::sandbox(settings);
    let plugin = sandbox.load("resize").await.unwrap();
    let request = RenditionRequest {
        name: "default".into(),
        options: common::params(&[("width", "160"), ("height", "160"), ("max-animation-pixels", "500000000")]),
    };
    let made = sandbox.render(&plugin, &gif, "image/gif", &[request]).await.expect("made, not killed");
    let out = &made.images[0];
    let scan = container::webp(&out.bytes).unwrap();
    assert_eq!((scan.width, scan.height, scan.frames), (160, 90, 200));
    // One 1920x1080 RGBA canvas is 8 MiB; the input is in guest memory too. The whole animation
    // decoded would be 1.6 GiB.
    let peak = made.stats.memory_peak;
    assert!(peak < gif.len() + (64 << 20), "memory high-water {} MiB for a {} MiB input", peak >> 20, gif.len() >> 20);
    eprintln!(
        "200 frames of 1920x1080 ({} MiB GIF) -> 160x90 WebP ({} KiB): {:?}, memory high-water {} MiB",
        gif.len() >> 20,
        out.bytes.len() >> 10,
        made.stats.elapsed,
        peak >> 20
    );
}
