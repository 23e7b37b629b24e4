//! The sandbox with real plugin components: results, orientation, typed errors, routing. The
//! limits (time, memory, output, host resources) are tested in pairs in `limits.rs`.

use crate::common::{self, int, params, route};

use std::collections::BTreeMap;

use common::{decode, jpeg, photo, png, red_left_blue_right, with_exif_orientation};
use image::GenericImageView;
use pixbox::sandbox::{
    Contract, MAX_RENDITIONS, OptionValue, RenditionRequest, RouteConfig, Routes, Sandbox, SandboxSettings,
    TransformError,
};

fn sandbox() -> Sandbox {
    Sandbox::new(SandboxSettings {
        memory_limit_mib: 64,
        time_budget_ms: 1_000,
        cache_dir: Some(common::plugin_cache()),
        ..SandboxSettings::default()
    })
    .unwrap()
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

/// In the sandbox the JPEG decoder's colour conversion and the encoder's run in WebAssembly
/// SIMD; built natively the same code runs them one pixel at a time with libjpeg's and
/// jpeg-encoder's own arithmetic. Both must write the same bytes: the SIMD paths are exact.
#[tokio::test]
async fn the_sandboxed_plugin_writes_the_bytes_the_same_code_writes_natively() {
    let sandbox = sandbox();
    let resize = sandbox.load("resize").await.unwrap();
    // An input of odd width, decoded at full size (700 px: the 8x8 transform), at 5/8 (440 and
    // 437 px: 5x5, and 10x10 for the halved chroma), at 4/8 (200 px: 4x4, and the 8x8 for the
    // chroma); outputs of odd width too (437: a partial run of 16 pixels, a lone last chroma
    // sample); the output's chroma halved below quality 90, kept at 95.
    let input = jpeg(&photo(1001, 667));
    for (width, quality) in [("700", "85"), ("440", "85"), ("437", "85"), ("200", "85"), ("437", "95")] {
        let pairs = [("width", width), ("height", width), ("quality", quality)];
        let sandboxed = sandbox.transform(&resize, &input, "image/jpeg", &params(&pairs)).await.unwrap();
        let native = imagekit::resize(&input, &imagekit::Options::parse(pairs).unwrap()).unwrap();
        assert!(sandboxed.bytes == native.bytes, "width {width}, quality {quality}: the outputs differ");
    }
}

/// Phones make panoramas of 12 000 px and more on the long side: far under the pixel limit, so
/// taken by the upload check and the plugin alike.
#[tokio::test]
async fn a_panorama_longer_than_ten_thousand_pixels_is_resized() {
    let sandbox = sandbox();
    let resize = sandbox.load("resize").await.unwrap();
    let input = jpeg(&photo(12_000, 600));
    let header = pixbox::imaging::probe(&input).unwrap();
    pixbox::imaging::PixelLimits::default().check(&header).expect("the default limits take a 7.2 MP panorama");
    let out = sandbox.transform(&resize, &input, "image/jpeg", &[]).await.unwrap();
    assert_eq!((out.header.width, out.header.height), (1024, 51));
}

/// `format=same` keeps a lossless WebP lossless (graphics stay crisp) and a lossy one lossy.
#[tokio::test]
async fn same_format_keeps_webp_lossless_or_lossy() {
    let sandbox = sandbox();
    let resize = sandbox.load("resize").await.unwrap();
    let mut lossless = Vec::new();
    photo(300, 200).write_with_encoder(image::codecs::webp::WebPEncoder::new_lossless(&mut lossless)).unwrap();
    let same = params(&[("width", "150"), ("height", "150"), ("format", "same")]);
    let out = sandbox.transform(&resize, &lossless, "image/webp", &same).await.unwrap();
    let chunk = |bytes: &[u8]| bytes.windows(4).find(|w| *w == b"VP8L" || *w == b"VP8 ").map(<[u8]>::to_vec);
    assert_eq!(chunk(&out.bytes).as_deref(), Some(&b"VP8L"[..]), "lossless in, lossless out");
    let lossy = sandbox.transform(&resize, &jpeg(&photo(300, 200)), "image/jpeg", &params(&[("format", "webp")])).await;
    let lossy = lossy.unwrap().bytes;
    assert_eq!(chunk(&lossy).as_deref(), Some(&b"VP8 "[..]));
    let out = sandbox.transform(&resize, &lossy, "image/webp", &same).await.unwrap();
    assert_eq!(chunk(&out.bytes).as_deref(), Some(&b"VP8 "[..]), "lossy in, lossy out");
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
    // JPEGs are decoded by libjpeg-turbo, whose errors cannot return: the plugin says why and
    // traps, and the host reports libjpeg's reason as bad input, not a crash.
    let whole = jpeg(&photo(400, 300));
    let truncated = &whole[..600];
    let err = sandbox.transform(&resize, truncated, "image/jpeg", &[]).await.unwrap_err();
    assert!(matches!(&err, TransformError::BadInput(m) if m.contains("Premature end of JPEG file")), "{err:?}");
    assert!(err.is_permanent());
    // Whole, but an end-of-image marker inside the compressed data (libjpeg would pad with grey).
    let mut damaged = whole.clone();
    let middle = damaged.len() / 2;
    damaged[middle..middle + 2].copy_from_slice(&[0xFF, 0xD9]);
    let err = sandbox.transform(&resize, &damaged, "image/jpeg", &[]).await.unwrap_err();
    assert!(matches!(&err, TransformError::BadInput(m) if m.contains("Corrupt JPEG data")), "{err:?}");
    // The failed instance is gone with its call: the next one decodes the whole file.
    let out = sandbox.transform(&resize, &whole, "image/jpeg", &[]).await.unwrap();
    assert_eq!((out.header.width, out.header.height), (400, 300));
    // Only the end marker missing: libjpeg reads ahead for bits the file does not need, and that
    // alone is no damage.
    let out = sandbox.transform(&resize, &whole[..whole.len() - 2], "image/jpeg", &[]).await.unwrap();
    assert_eq!((out.header.width, out.header.height), (400, 300));
    // A legal JPEG the decoder does not do (lossless: its frame marker says SOF3) is unsupported.
    let mut lossless = whole.clone();
    let sof = lossless.windows(2).position(|w| w == [0xFF, 0xC0]).expect("a baseline frame header");
    lossless[sof + 1] = 0xC3;
    let err = sandbox.transform(&resize, &lossless, "image/jpeg", &[]).await.unwrap_err();
    assert!(matches!(&err, TransformError::Unsupported(m) if m.contains("SOF type 0xc3")), "{err:?}");
    let bomb = common::png_claiming(100_000, 100_000);
    let err = sandbox.transform(&resize, &bomb, "image/png", &[]).await.unwrap_err();
    assert!(matches!(&err, TransformError::BadInput(m) if m.contains("too large")), "{err:?}");
    let err =
        sandbox.transform(&resize, &png(&photo(8, 8)), "image/png", &params(&[("colour", "red")])).await.unwrap_err();
    assert!(matches!(&err, TransformError::Unsupported(m) if m.contains("colour")), "{err:?}");
}

/// A progressive JPEG of one 8x8 grey block whose every AC band gets a first scan and nine
/// refinement scans (1 + 10 x `bands` scans, all legal, each carrying one Huffman code).
fn progressive_with_scans(bands: u8) -> Vec<u8> {
    let segment = |marker: u8, body: &[u8]| {
        let mut s = vec![0xFF, marker];
        s.extend_from_slice(&((body.len() + 2) as u16).to_be_bytes());
        s.extend_from_slice(body);
        s
    };
    let mut jpeg = vec![0xFF, 0xD8];
    jpeg.extend(segment(0xDB, &[[0u8].as_slice(), &[1; 64]].concat()));
    jpeg.extend(segment(0xC2, &[8, 0, 8, 0, 8, 1, 1, 0x11, 0]));
    // One symbol (0: a DC difference of 0, an end of band) coded as the single bit 0.
    let one_code = |class: u8| [[class].as_slice(), &[1], &[0; 15], &[0]].concat();
    jpeg.extend(segment(0xC4, &one_code(0x00)));
    jpeg.extend(segment(0xC4, &one_code(0x10)));
    let mut scan = |ss: u8, se: u8, ah: u8, al: u8| {
        jpeg.extend(segment(0xDA, &[1, 1, 0x00, ss, se, ah << 4 | al]));
        jpeg.push(0x7F); // the code 0, padded with ones
    };
    scan(0, 0, 0, 0);
    for band in 1..=bands {
        scan(band, band, 0, 9);
        for al in (0..9).rev() {
            scan(band, band, al + 1, al);
        }
    }
    jpeg.extend([0xFF, 0xD9]);
    jpeg
}

/// Every scan of a progressive JPEG walks the whole image: a file of more than 500 scans is
/// refused at the 501st, as libjpeg-turbo's own API does, before it can spend the time budget.
#[tokio::test]
async fn progressive_jpegs_are_limited_to_500_scans() {
    let sandbox = sandbox();
    let resize = sandbox.load("resize").await.unwrap();
    // 391 scans: decoded.
    let out = sandbox.transform(&resize, &progressive_with_scans(39), "image/jpeg", &[]).await.unwrap();
    assert_eq!((out.header.width, out.header.height), (8, 8));
    // 631 scans: refused, at once.
    let started = std::time::Instant::now();
    let err = sandbox.transform(&resize, &progressive_with_scans(63), "image/jpeg", &[]).await.unwrap_err();
    assert!(matches!(&err, TransformError::BadInput(m) if m.contains("more than 500 scans")), "{err:?}");
    assert!(started.elapsed() < std::time::Duration::from_millis(500), "took {:?}", started.elapsed());
}

#[tokio::test]
async fn longest_prefix_wins() {
    let sandbox = sandbox();
    let routes = Routes::load(
        &sandbox,
        &[
            route("avatars/", "thumbnail", &[("size", int(32))]),
            route("avatars/large/", "resize", &[("width", int(300))]),
            route("", "resize", &[("width", int(100)), ("height", int(100))]),
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
    let err = Routes::load(&sandbox, &[route("x/", "thumbnail", &[("width", int(3))])]).await.unwrap_err();
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

/// Only what a transform needs: the environment, files, TCP, UDP and name lookup are each
/// tried by a real plugin and each refused (the plugin reports what the host answered).
#[tokio::test]
async fn the_environment_files_and_network_are_denied() {
    let sandbox = sandbox();
    let plugin = sandbox.load(common::built_plugin("misbehave").to_str().unwrap()).await.unwrap();
    let input = png(&photo(8, 8));
    for mode in ["env", "files", "tcp", "udp", "dns"] {
        let err = sandbox.transform(&plugin, &input, "image/png", &params(&[("mode", mode)])).await.unwrap_err();
        eprintln!("{mode}: {err}");
        match &err {
            TransformError::BadInput(m) => assert!(m.starts_with("denied: "), "{mode}: {m}"),
            other => panic!("{mode} was not denied: {other:?}"),
        }
    }
    // The denials are the host's answers, not a broken plugin: the same plugin still works.
    assert!(sandbox.transform(&plugin, &input, "image/png", &[]).await.is_ok());
}

/// The compiled-plugin cache holds native code that is loaded unchecked: its directory is
/// private, and a cached file writable by others or owned by another user is compiled again
/// (and rewritten as this user's), never loaded. Needs root for the other-owner case (chown).
#[tokio::test]
async fn cached_plugins_are_loaded_only_when_this_user_wrote_them() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("plugin-cache");
    let sandbox =
        Sandbox::new(SandboxSettings { cache_dir: Some(cache.clone()), ..SandboxSettings::default() }).unwrap();
    let plugin = common::built_plugin("misbehave");
    sandbox.load(plugin.to_str().unwrap()).await.unwrap();
    assert_eq!(std::fs::metadata(&cache).unwrap().mode() & 0o777, 0o700, "the cache directory is private");
    let file = std::fs::read_dir(&cache)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension() == Some("cwasm".as_ref()));
    let file = file.expect("a cached artifact");
    let me = std::fs::metadata(&file).unwrap().uid();

    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o666)).unwrap();
    sandbox.load(plugin.to_str().unwrap()).await.unwrap();
    assert_eq!(std::fs::metadata(&file).unwrap().mode() & 0o777, 0o600, "a writable-by-others file was loaded");

    std::os::unix::fs::chown(&file, Some(65534), Some(65534))
        .expect("this test changes a file's owner: run it as root (CI does)");
    sandbox.load(plugin.to_str().unwrap()).await.unwrap();
    assert_eq!(std::fs::metadata(&file).unwrap().uid(), me, "a file of another user was loaded");
}

fn request(name: &str, pairs: &[(&str, &str)]) -> RenditionRequest {
    RenditionRequest { name: name.into(), options: params(pairs) }
}

/// A 0.2.0 plugin makes every rendition in one call (one decode), each checked by the host.
#[tokio::test]
async fn a_0_2_plugin_makes_every_rendition_in_one_call() {
    let sandbox = sandbox();
    let resize = sandbox.load("resize").await.unwrap();
    assert_eq!(resize.contract, Contract::V0_2);
    let input = jpeg(&photo(1200, 900));
    let requests = [
        request("thumb", &[("width", "128"), ("height", "128")]),
        request("medium", &[("width", "400"), ("height", "400"), ("format", "png")]),
        request("large", &[("width", "800"), ("height", "800")]),
    ];
    let rendered = sandbox.render(&resize, &input, "image/jpeg", &requests).await.unwrap();
    assert_eq!(rendered.calls, 1);
    let sizes: Vec<_> =
        rendered.images.iter().map(|i| (i.header.width, i.header.height, i.header.format.media_type())).collect();
    assert_eq!(sizes, [(128, 96, "image/jpeg"), (400, 300, "image/png"), (800, 600, "image/jpeg")]);
    for image in &rendered.images {
        assert_eq!(decode(&image.bytes).dimensions(), (image.header.width, image.header.height));
    }
    // One bad rendition fails the call, with the plugin's typed error.
    let bad = [request("ok", &[]), request("bad", &[("width", "0")])];
    let err = sandbox.render(&resize, &input, "image/jpeg", &bad).await.unwrap_err();
    assert!(matches!(err, TransformError::Unsupported(_)), "{err:?}");
}

/// A plugin built against the frozen 0.1.0 contract (a committed binary) still loads, says so,
/// and is called once per rendition.
#[tokio::test]
async fn a_0_1_plugin_still_loads_and_is_called_once_per_rendition() {
    let sandbox = sandbox();
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/misbehave-0.1.0.wasm");
    let old = sandbox.load(path).await.unwrap();
    assert_eq!((old.contract, old.contract.version()), (Contract::V0_1, "0.1.0"));
    assert_eq!(old.info.name, "misbehave");
    let input = png(&photo(16, 16));
    let requests = [request("a", &[]), request("b", &[("mode", "echo")]), request("c", &[])];
    let rendered = sandbox.render(&old, &input, "image/png", &requests).await.unwrap();
    assert_eq!(rendered.calls, 3);
    assert!(rendered.images.iter().all(|i| i.bytes == input));
    assert_eq!(rendered.placeholder, None);
    // Its typed errors still come through.
    let err = sandbox.render(&old, &input, "image/png", &[request("x", &[("mode", "nope")])]).await.unwrap_err();
    assert!(matches!(err, TransformError::Unsupported(_)), "{err:?}");
}

/// The host holds a 0.2.0 plugin to its answer: exactly one image per request, and no more
/// requests than a call may carry.
#[tokio::test]
async fn rendition_counts_are_checked() {
    let sandbox = sandbox();
    let misbehave = sandbox.load(common::built_plugin("misbehave").to_str().unwrap()).await.unwrap();
    let input = png(&photo(16, 16));
    let echoed = sandbox.render(&misbehave, &input, "image/png", &[request("a", &[]), request("b", &[])]).await;
    assert_eq!(echoed.unwrap().images.len(), 2);
    let short = [request("a", &[]), request("b", &[("mode", "short")])];
    let err = sandbox.render(&misbehave, &input, "image/png", &short).await.unwrap_err();
    assert!(matches!(&err, TransformError::InvalidOutput(m) if m.contains("asked for 2")), "{err:?}");
    let too_many: Vec<_> = (0..=MAX_RENDITIONS).map(|i| request(&format!("r{i}"), &[])).collect();
    let err = sandbox.render(&misbehave, &input, "image/png", &too_many).await.unwrap_err();
    assert!(matches!(err, TransformError::Unsupported(_)), "{err:?}");
    let err = sandbox.render(&misbehave, &input, "image/png", &[]).await.unwrap_err();
    assert!(matches!(err, TransformError::Unsupported(_)), "{err:?}");
}

/// The resize modes: fit (inside), cover (fill, cut at gravity), pad (fit on a box-sized canvas of
/// the background colour), crop (a box-sized region at gravity); no upscaling unless asked.
#[tokio::test]
async fn resize_modes_bring_the_image_to_the_box() {
    let sandbox = sandbox();
    let resize = sandbox.load("resize").await.unwrap();
    // Left half red, right half blue: where a crop was taken shows in the colours.
    let input = png(&red_left_blue_right(800, 400));
    let run = async |pairs: &[(&str, &str)]| {
        let out = sandbox.transform(&resize, &input, "image/png", &params(pairs)).await.unwrap();
        decode(&out.bytes).to_rgba8()
    };
    let box_200 = [("width", "200"), ("height", "200")];
    let with = |extra: &[(&'static str, &'static str)]| [&box_200[..], extra].concat();
    let red = |p: &image::Rgba<u8>| p[0] > 200 && p[2] < 60;
    let blue = |p: &image::Rgba<u8>| p[2] > 200 && p[0] < 60;

    let fit = run(&with(&[("mode", "fit")])).await;
    assert_eq!(fit.dimensions(), (200, 100));
    let cover = run(&with(&[("mode", "cover")])).await;
    assert_eq!(cover.dimensions(), (200, 200));
    assert!(red(cover.get_pixel(10, 100)) && blue(cover.get_pixel(190, 100)), "centred: both halves");
    let west = run(&with(&[("mode", "cover"), ("gravity", "west")])).await;
    // (The filter may blend the window's last columns with what lies beyond it.)
    assert!(west.enumerate_pixels().filter(|(x, ..)| *x < 190).all(|(.., p)| red(p)), "cover at west: red half only");
    let focus = run(&with(&[("mode", "cover"), ("gravity", "0.9,0.5")])).await;
    assert!(focus.enumerate_pixels().filter(|(x, ..)| *x >= 10).all(|(.., p)| blue(p)), "focal point in the blue half");
    let pad = run(&with(&[("mode", "pad"), ("background", "00ff00")])).await;
    assert_eq!(pad.dimensions(), (200, 200));
    let green = |p: &image::Rgba<u8>| p[1] > 200 && p[0] < 60 && p[2] < 60;
    assert!(green(pad.get_pixel(100, 5)) && green(pad.get_pixel(100, 195)), "letterboxed top and bottom");
    assert!(red(pad.get_pixel(10, 100)) && blue(pad.get_pixel(190, 100)), "the image in the middle");
    let crop = run(&with(&[("mode", "crop"), ("gravity", "north-east")])).await;
    assert_eq!(crop.dimensions(), (200, 200));
    assert!(crop.pixels().all(blue), "a 200x200 region of the top right, not resized");

    // A box larger than the image: no upscaling unless asked (cover keeps the box's shape).
    let small = png(&red_left_blue_right(100, 50));
    let out = sandbox
        .transform(&resize, &small, "image/png", &params(&[("width", "400"), ("height", "400"), ("mode", "cover")]))
        .await
        .unwrap();
    assert_eq!((out.header.width, out.header.height), (50, 50));
    let out = sandbox
        .transform(
            &resize,
            &small,
            "image/png",
            &params(&[("width", "400"), ("height", "400"), ("mode", "cover"), ("upscale", "true")]),
        )
        .await
        .unwrap();
    assert_eq!((out.header.width, out.header.height), (400, 400));
    let err = sandbox.transform(&resize, &small, "image/png", &params(&[("mode", "stretch")])).await.unwrap_err();
    assert!(matches!(err, TransformError::Unsupported(_)), "{err:?}");
    let err = sandbox.transform(&resize, &small, "image/png", &params(&[("gravity", "1.5,0")])).await.unwrap_err();
    assert!(matches!(err, TransformError::Unsupported(_)), "{err:?}");
}

/// The default plugin returns a placeholder of the input from the same decode: a ThumbHash that
/// decodes to the image's look, and its dominant colour.
#[tokio::test]
async fn the_default_plugin_returns_a_placeholder() {
    let sandbox = sandbox();
    let resize = sandbox.load("resize").await.unwrap();
    let green = png(&image::RgbImage::from_pixel(300, 200, image::Rgb([20, 200, 40])));
    let rendered = sandbox.render(&resize, &green, "image/png", &[request("a", &[])]).await.unwrap();
    let placeholder = rendered.placeholder.expect("resize computes a placeholder");
    let (r, g, b) = placeholder.dominant_color;
    assert!(r.abs_diff(20) < 12 && g.abs_diff(200) < 12 && b.abs_diff(40) < 12, "{:?}", placeholder.dominant_color);
    assert!(placeholder.thumbhash.len() <= 25, "{} bytes", placeholder.thumbhash.len());
    let ratio = thumbhash::thumb_hash_to_approximate_aspect_ratio(&placeholder.thumbhash).unwrap();
    assert!((ratio - 1.5).abs() < 0.15, "aspect {ratio}");
    // Left red, right blue: the hash's picture keeps which side is which.
    let halves = png(&red_left_blue_right(200, 100));
    let rendered = sandbox.render(&resize, &halves, "image/png", &[request("a", &[])]).await.unwrap();
    let hash = rendered.placeholder.unwrap().thumbhash;
    let (w, h, rgba) = thumbhash::thumb_hash_to_rgba(&hash).unwrap();
    let at = |x: usize, y: usize| &rgba[(y * w + x) * 4..(y * w + x) * 4 + 3];
    let (left, right) = (at(1, h / 2), at(w - 2, h / 2));
    assert!(left[0] > left[2] + 60 && right[2] > right[0] + 60, "left {left:?}, right {right:?}");
}

/// A Display-P3 photo comes out in sRGB with the original's colours. The input is a real photo
/// (tests/fixtures/cups-srgb.jpg: saturated blue and red cups) converted to Display P3 and
/// tagged with the Display P3 profile, as phones write their photos. The plugin's output is
/// compared with the sRGB original in CIELAB: its mean ΔE stays within 0.5 of what the sRGB
/// original's own trip through the plugin costs (JPEG rounding), and its 90th percentile within
/// 1; the same P3 numbers without their profile (what ignoring it shows) are visibly off: a mean
/// ΔE over 3 and a 90th percentile over twice the converted one's.
#[tokio::test]
async fn a_display_p3_photo_keeps_its_colours() {
    use moxcms::{ColorProfile, Layout, TransformOptions};
    let original = decode(include_bytes!("fixtures/cups-srgb.jpg")).to_rgb8();
    let p3 = ColorProfile::new_display_p3();
    let to_p3 = ColorProfile::new_srgb()
        .create_transform_8bit(Layout::Rgb, &p3, Layout::Rgb, TransformOptions::default())
        .unwrap();
    let mut p3_pixels = original.clone();
    to_p3.transform(original.as_raw(), &mut p3_pixels).unwrap();
    let jpeg_tagged = |pixels: &image::RgbImage, icc: Option<Vec<u8>>| {
        use image::ImageEncoder;
        let mut out = Vec::new();
        let mut encoder = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 95);
        if let Some(icc) = icc {
            encoder.set_icc_profile(icc).unwrap();
        }
        encoder.write_image(pixels.as_raw(), pixels.width(), pixels.height(), image::ExtendedColorType::Rgb8).unwrap();
        out
    };
    let sandbox = sandbox();
    let resize = sandbox.load("resize").await.unwrap();
    let run = async |input: Vec<u8>| {
        let out = sandbox.transform(&resize, &input, "image/jpeg", &params(&[("format", "png")])).await.unwrap();
        decode(&out.bytes).to_rgb8()
    };
    let baseline = delta_e(&original, &run(jpeg_tagged(&original, None)).await);
    let converted = delta_e(&original, &run(jpeg_tagged(&p3_pixels, Some(p3.encode().unwrap()))).await);
    let ignored = delta_e(&original, &run(jpeg_tagged(&p3_pixels, None)).await);
    eprintln!(
        "ΔE76 against the sRGB original (mean, 90th percentile): sRGB round trip {baseline:.2?}, \
         P3 converted {converted:.2?}, P3 profile ignored {ignored:.2?}"
    );
    assert!(converted.0 <= baseline.0 + 0.5, "P3 converted: mean ΔE {converted:.2?} (sRGB round trip {baseline:.2?})");
    assert!(converted.1 <= baseline.1 + 1.0, "P3 converted: p90 ΔE {converted:.2?} (sRGB round trip {baseline:.2?})");
    assert!(ignored.0 >= 3.0 && ignored.1 >= 2.0 * converted.1, "the test photo must tell: ignored is {ignored:.2?}");
}

/// Mean and 90th percentile of the CIE76 ΔE between two same-sized sRGB images.
fn delta_e(a: &image::RgbImage, b: &image::RgbImage) -> (f64, f64) {
    assert_eq!(a.dimensions(), b.dimensions());
    let mut all: Vec<f64> = a
        .pixels()
        .zip(b.pixels())
        .map(|(p, q)| {
            let (l1, a1, b1) = srgb_to_lab(p.0);
            let (l2, a2, b2) = srgb_to_lab(q.0);
            ((l1 - l2).powi(2) + (a1 - a2).powi(2) + (b1 - b2).powi(2)).sqrt()
        })
        .collect();
    all.sort_by(f64::total_cmp);
    (all.iter().sum::<f64>() / all.len() as f64, all[all.len() * 9 / 10])
}

/// CIELAB (D65) of an sRGB pixel.
fn srgb_to_lab([r, g, b]: [u8; 3]) -> (f64, f64, f64) {
    let linear = |c: u8| {
        let c = f64::from(c) / 255.0;
        if c <= 0.04045 { c / 12.92 } else { ((c + 0.055) / 1.055).powf(2.4) }
    };
    let (r, g, b) = (linear(r), linear(g), linear(b));
    let x = (0.4124 * r + 0.3576 * g + 0.1805 * b) / 0.95047;
    let y = 0.2126 * r + 0.7152 * g + 0.0722 * b;
    let z = (0.0193 * r + 0.1192 * g + 0.9505 * b) / 1.08883;
    let f = |t: f64| if t > 216.0 / 24389.0 { t.cbrt() } else { (24389.0 / 27.0 * t + 16.0) / 116.0 };
    let (fx, fy, fz) = (f(x), f(y), f(z));
    (116.0 * fy - 16.0, 500.0 * (fx - fy), 200.0 * (fy - fz))
}

/// `gravity = "smart"` keeps what is interesting: a detailed, colourful patch off to the right of
/// a flat grey image stays in a square cover crop, where the centre crop loses it; a flat image
/// is cropped at its centre.
#[tokio::test]
async fn smart_gravity_keeps_the_subject() {
    let sandbox = sandbox();
    let resize = sandbox.load("resize").await.unwrap();
    // 400x200 grey; a 60x60 red/blue checkerboard at x 320..380.
    let mut scene = image::RgbImage::from_pixel(400, 200, image::Rgb([128, 128, 128]));
    for y in 70..130 {
        for x in 320..380 {
            let v = if (x / 4 + y / 4) % 2 == 0 { [220, 40, 30] } else { [30, 60, 200] };
            scene.put_pixel(x, y, image::Rgb(v));
        }
    }
    let run = async |input: &[u8], gravity: &str| {
        let pairs = [("width", "200"), ("height", "200"), ("mode", "cover"), ("gravity", gravity), ("format", "png")];
        decode(&sandbox.transform(&resize, input, "image/png", &params(&pairs)).await.unwrap().bytes).to_rgb8()
    };
    // Not grey: the checkerboard, and its red/blue blends where the crop falls between pixels.
    let coloured = |img: &image::RgbImage| {
        img.pixels().filter(|p| p.0.iter().max().unwrap() - p.0.iter().min().unwrap() > 40).count()
    };
    let smart = run(&png(&scene), "smart").await;
    let centre = run(&png(&scene), "centre").await;
    assert_eq!(smart.dimensions(), (200, 200));
    assert!(coloured(&smart) >= 60 * 60 * 9 / 10, "smart kept {} of the subject's 3600 pixels", coloured(&smart));
    assert_eq!(coloured(&centre), 0, "the centre crop (100..300) has none of it");
    // A flat image: the centre, as `centre` gives.
    let mut halves = red_left_blue_right(400, 200);
    for p in halves.pixels_mut() {
        *p = image::Rgb([90, 90, 90]);
    }
    assert_eq!(run(&png(&halves), "smart").await, run(&png(&halves), "centre").await);
}

/// The smallest PSNR a q85 lossy WebP of `photo(640, 480)` at 320x240 may have: libwebp makes it
/// at 40.8 dB (2.2 KB), the earlier pure-Rust encoder at 37.8 dB (2.1 KB; measured natively on
/// the same pixels).
const PSNR_AT_Q85: f64 = 39.5;

/// The formats the default plugin writes: lossy WebP (much smaller than lossless on a photo),
/// lossless WebP (exact), AVIF (its header read by the host: the right size); an unknown one
/// is refused.
#[tokio::test]
async fn the_default_plugin_writes_lossy_webp_and_avif() {
    let sandbox = Sandbox::new(SandboxSettings {
        memory_limit_mib: 128,
        time_budget_ms: 10_000,
        cache_dir: Some(common::plugin_cache()),
        ..SandboxSettings::default()
    })
    .unwrap();
    let resize = sandbox.load("resize").await.unwrap();
    let input = jpeg(&photo(640, 480));
    let run = async |format: &str| {
        let pairs = [("width", "320"), ("height", "320"), ("format", format)];
        sandbox.transform(&resize, &input, "image/jpeg", &params(&pairs)).await.unwrap()
    };
    let lossy = run("webp").await;
    let lossless = run("webp-lossless").await;
    assert_eq!(lossy.header.format.media_type(), "image/webp");
    assert_eq!(decode(&lossy.bytes).dimensions(), (320, 240));
    assert!(
        lossy.bytes.len() * 3 < lossless.bytes.len(),
        "lossy {} vs lossless {} bytes",
        lossy.bytes.len(),
        lossless.bytes.len()
    );
    // Fidelity per `quality` is libwebp's (the encoder is libwebp); BENCHMARKS.md, "Lossy WebP
    // against cwebp", has the corpus figures.
    let exact = decode(&lossless.bytes).to_rgb8();
    let error = psnr(&exact, &decode(&lossy.bytes).to_rgb8());
    eprintln!("lossy WebP at q85: {} bytes, PSNR {error:.2} dB against the lossless output", lossy.bytes.len());
    assert!(error >= PSNR_AT_Q85, "lossy WebP at q85 is {error:.2} dB from the lossless output");
    let avif = run("avif").await;
    assert_eq!(avif.header.format.media_type(), "image/avif");
    assert_eq!((avif.header.width, avif.header.height), (320, 240));
    assert_eq!(&avif.bytes[4..12], b"ftypavif");
    let err = sandbox.transform(&resize, &input, "image/jpeg", &params(&[("format", "jxl")])).await.unwrap_err();
    assert!(matches!(err, TransformError::Unsupported(_)), "{err:?}");
}

/// PSNR (RGB) of two same-size images, in dB.
fn psnr(a: &image::RgbImage, b: &image::RgbImage) -> f64 {
    assert_eq!(a.dimensions(), b.dimensions());
    let squared: f64 = a.as_raw().iter().zip(b.as_raw()).map(|(&x, &y)| (f64::from(x) - f64::from(y)).powi(2)).sum();
    10.0 * (255.0f64 * 255.0 / (squared / a.as_raw().len() as f64).max(1e-10)).log10()
}

/// `format = "auto"` routes: expanded into the fallback and one request per listed format (all in
/// one call); a route that uses `auto` without `formats`, lists an unknown format, or would make
/// more outputs than a call may carry is refused when the routes load, saying why.
#[tokio::test]
async fn auto_format_routes_are_expanded_and_checked() {
    let sandbox = sandbox();
    let text = |v: &str| OptionValue::Text(v.into());
    let route = |formats: &[&str], renditions: usize| {
        let mut config = RouteConfig::new("p/", "resize", BTreeMap::from([("format".to_string(), text("auto"))]));
        config.formats = formats.iter().map(|f| f.to_string()).collect();
        for i in 0..renditions {
            config
                .renditions
                .insert(format!("r{i}"), BTreeMap::from([("width".to_string(), OptionValue::Integer(64))]));
        }
        config.default_rendition = (renditions > 0).then(|| "r0".to_string());
        config
    };
    let routes = Routes::load(&sandbox, &[route(&["avif", "webp"], 0)]).await.unwrap();
    let made: Vec<(String, String)> = routes
        .resolve("p/a.jpg")
        .renditions
        .iter()
        .map(|r| (r.name.clone(), r.options.iter().find(|p| p.name == "format").unwrap().value.clone()))
        .collect();
    let pairs = |v: &[(&str, &str)]| v.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect::<Vec<_>>();
    assert_eq!(made, pairs(&[("default", "same"), ("default.avif", "avif"), ("default.webp", "webp")]));
    for (config, says) in [
        (route(&[], 0), "needs the route to list formats"),
        (route(&["jxl"], 0), "\"jxl\""),
        (route(&["webp", "webp"], 0), "at most once"),
        (route(&["avif", "webp"], 6), "18 outputs"),
    ] {
        let err = Routes::load(&sandbox, &[config]).await.unwrap_err();
        assert!(err.to_string().contains(says), "{err}");
    }
}
