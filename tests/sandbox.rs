//! The sandbox with real plugin components: results, orientation, typed errors, routing. The
//! limits (time, memory, output, host resources) are tested in pairs in `limits.rs`.

mod common;

use std::collections::BTreeMap;

use common::{decode, jpeg, photo, png, red_left_blue_right, with_exif_orientation};
use image::GenericImageView;
use pixbox::sandbox::{OptionValue, Param, RouteConfig, Routes, Sandbox, SandboxSettings, TransformError};

fn sandbox() -> Sandbox {
    Sandbox::new(SandboxSettings { memory_limit_mib: 64, time_budget_ms: 1_000, ..SandboxSettings::default() }).unwrap()
}

fn params(pairs: &[(&str, &str)]) -> Vec<Param> {
    pairs.iter().map(|(n, v)| Param { name: n.to_string(), value: v.to_string() }).collect()
}

#[tokio::test]
async fn resize_fits_the_box_and_keeps_the_aspect_ratio() {
    let sandbox = sandbox();
    let resize = sandbox.load("resize").await.unwrap();
    assert_eq!(resize.info.name, "resize");
    let input = jpeg(&photo(800, 600));
    let out = sandbox
        .transform(&resize, &input, "image/jpeg", &params(&[("width", "200"), ("height", "200")]))
        .await
        .unwrap();
    assert_eq!((out.header.width, out.header.height), (200, 150));
    assert_eq!(out.header.format.media_type(), "image/jpeg");
    assert_eq!(decode(&out.bytes).dimensions(), (200, 150));
    assert!(out.stats.memory_peak > 0);

    // A tall image is bound by the height; format conversion on request; no upscaling by default.
    let tall = png(&photo(300, 900));
    let out = sandbox
        .transform(&resize, &tall, "image/png", &params(&[("width", "500"), ("height", "300"), ("format", "webp")]))
        .await
        .unwrap();
    assert_eq!((out.header.width, out.header.height, out.header.format.media_type()), (100, 300, "image/webp"));
    let small = png(&photo(50, 40));
    let out = sandbox.transform(&resize, &small, "image/png", &[]).await.unwrap();
    assert_eq!((out.header.width, out.header.height), (50, 40));
}

#[tokio::test]
async fn exif_orientation_is_applied_and_metadata_dropped() {
    let sandbox = sandbox();
    let resize = sandbox.load("resize").await.unwrap();
    // Orientation 6: the camera was turned; display needs a 90 degree clockwise rotation.
    let input = with_exif_orientation(&jpeg(&red_left_blue_right(64, 32)), 6);
    let out = sandbox.transform(&resize, &input, "image/jpeg", &[]).await.unwrap();
    let img = decode(&out.bytes).to_rgb8();
    assert_eq!(img.dimensions(), (32, 64), "rotated to portrait");
    let top = img.get_pixel(16, 8);
    let bottom = img.get_pixel(16, 56);
    assert!(top[0] > 200 && top[2] < 60, "red is on top after rotation, got {top:?}");
    assert!(bottom[2] > 200 && bottom[0] < 60, "blue is at the bottom after rotation, got {bottom:?}");
    assert!(!out.bytes.windows(4).any(|w| w == b"Exif"), "EXIF is not carried over");
}

#[tokio::test]
async fn thumbnail_plugin_gives_a_grayscale_square() {
    let sandbox = sandbox();
    let thumbnail = sandbox.load("thumbnail").await.unwrap();
    let out = sandbox
        .transform(&thumbnail, &jpeg(&photo(640, 480)), "image/jpeg", &params(&[("size", "96"), ("format", "png")]))
        .await
        .unwrap();
    assert_eq!((out.header.width, out.header.height), (96, 96));
    let img = decode(&out.bytes);
    assert!(matches!(img.color(), image::ColorType::L8 | image::ColorType::La8), "grayscale, got {:?}", img.color());
}

#[tokio::test]
async fn bad_input_and_bad_options_are_typed_errors() {
    let sandbox = sandbox();
    let resize = sandbox.load("resize").await.unwrap();
    let truncated = &jpeg(&photo(400, 300))[..600];
    let err = sandbox.transform(&resize, truncated, "image/jpeg", &[]).await.unwrap_err();
    assert!(matches!(err, TransformError::BadInput(_)), "{err:?}");
    assert!(err.is_permanent());
    let bomb = common::png_claiming(100_000, 100_000);
    let err = sandbox.transform(&resize, &bomb, "image/png", &[]).await.unwrap_err();
    assert!(matches!(&err, TransformError::BadInput(m) if m.contains("too large")), "{err:?}");
    let err =
        sandbox.transform(&resize, &png(&photo(8, 8)), "image/png", &params(&[("colour", "red")])).await.unwrap_err();
    assert!(matches!(&err, TransformError::Unsupported(m) if m.contains("colour")), "{err:?}");
}

#[tokio::test]
async fn longest_prefix_wins() {
    let sandbox = sandbox();
    let route = |prefix: &str, plugin: &str, options: &[(&str, i64)]| RouteConfig {
        prefix: prefix.into(),
        plugin: plugin.into(),
        options: options.iter().map(|(k, v)| (k.to_string(), OptionValue::Integer(*v))).collect::<BTreeMap<_, _>>(),
    };
    let routes = Routes::load(
        &sandbox,
        &[
            route("avatars/", "thumbnail", &[("size", 32)]),
            route("avatars/large/", "resize", &[("width", 300)]),
            route("", "resize", &[("width", 100), ("height", 100)]),
        ],
    )
    .await
    .unwrap();
    assert_eq!(routes.resolve("avatars/large/x.jpg").prefix, "avatars/large/");
    assert_eq!(routes.resolve("avatars/x.jpg").plugin.info.name, "thumbnail");
    assert_eq!(routes.resolve("avatarsx.jpg").prefix, "");
    assert_eq!(routes.resolve("photos/x.jpg").plugin.info.name, "resize");

    let input = jpeg(&photo(400, 200));
    for (key, size) in [("avatars/a.jpg", (32, 32)), ("avatars/large/a.jpg", (300, 150)), ("b.jpg", (100, 50))] {
        let r = routes.resolve(key);
        let out = sandbox.transform(&r.plugin, &input, "image/jpeg", &r.options).await.unwrap();
        assert_eq!((out.header.width, out.header.height), size, "{key}");
    }

    // A route naming an option its plugin does not have is refused at load time.
    let err = Routes::load(&sandbox, &[route("x/", "thumbnail", &[("width", 3)])]).await.unwrap_err();
    assert!(err.to_string().contains("no option \"width\""), "{err}");
    // Without a default route, the built-in resize is the default.
    let routes = Routes::load(&sandbox, &[route("a/", "thumbnail", &[])]).await.unwrap();
    assert_eq!(routes.resolve("zzz").plugin.info.name, "resize");
}

#[tokio::test]
async fn a_file_that_is_not_a_component_is_refused() {
    let sandbox = sandbox();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("not-a-plugin.wasm");
    std::fs::write(&path, b"\0asm\x01\0\0\0").unwrap();
    let err = sandbox.load(path.to_str().unwrap()).await.unwrap_err();
    assert!(err.to_string().contains("not a valid pixbox plugin"), "{err}");
    let err = sandbox.load("no-such-builtin").await.unwrap_err();
    assert!(err.to_string().contains("unknown built-in plugin"), "{err}");
}
