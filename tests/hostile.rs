//! The hostile-input catalogue: one table, every row sent to a live pixbox (api and worker in one
//! process) on each backend. Each row asserts its answer (status and code), for accepted images
//! the job's end (done, or failed with a code), and after it that the service is healthy; the
//! process's resident memory is watched over the whole table. README.md lists the same rows.

use crate::common;

use std::io::Cursor;
use std::time::{Duration, Instant};

use image::codecs::gif::GifEncoder;
use image::{DynamicImage, Frame, ImageBuffer, ImageFormat, Luma, Rgb, Rgba, RgbaImage};
use pixbox::config::{Config, Role};
use reqwest::StatusCode;
use reqwest::multipart::{Form, Part};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// What a row sends.
enum Send {
    /// `POST /upload` with these parts (file name, bytes, extra part headers) and query.
    Upload { parts: Vec<(String, Vec<u8>)>, query: &'static str, part_header: Option<usize> },
    /// A raw request body of this many bytes claiming to be multipart.
    Oversized(usize),
    /// A raw multipart body (boundary `b`) with one part per image: fast to build for many parts.
    RawParts(Vec<Vec<u8>>),
    /// `method path`.
    Request(reqwest::Method, String),
    /// `GET path` written as is (HTTP clients would normalise `%2e%2e` away).
    RawGet(&'static str),
    /// A client that trickles its headers and should be cut off at the header timeout.
    Slowloris,
}

/// How an accepted image's job must end.
#[derive(Debug, Clone, Copy, PartialEq)]
enum End {
    Done,
    Failed(&'static str),
}

struct Row {
    name: &'static str,
    send: Send,
    status: u16,
    code: Option<&'static str>,
    end: Option<End>,
}

fn encode(image: &DynamicImage, format: ImageFormat) -> Vec<u8> {
    let mut out = Cursor::new(Vec::new());
    image.write_to(&mut out, format).unwrap();
    out.into_inner()
}

fn one(name: &str, bytes: Vec<u8>) -> Vec<(String, Vec<u8>)> {
    vec![(name.to_string(), bytes)]
}

fn upload(parts: Vec<(String, Vec<u8>)>) -> Send {
    Send::Upload { parts, query: "", part_header: None }
}

/// A 320x200 HEIC photo (scripts/make-inputs).
const HEIC: &[u8] = include_bytes!("fixtures/cups.heic");

/// The HEIC photo with its `ispe` box (the image's size) claiming `width` x `height`.
fn heic_claiming(width: u32, height: u32) -> Vec<u8> {
    let mut out = HEIC.to_vec();
    let at = out.windows(4).position(|w| w == b"ispe").expect("an ispe box") + 8; // type, version and flags
    out[at..at + 4].copy_from_slice(&width.to_be_bytes());
    out[at + 4..at + 8].copy_from_slice(&height.to_be_bytes());
    out
}

/// The photo as a grid of four tiles with 800 bytes of noise in its third tile's coded data (the
/// `mdat` box holds the tiles in order): the container is intact, one tile's HEVC data is not.
/// libheif decodes tiles without the caller's options; pixbox's build makes them strict too.
fn heic_with_garbage_data() -> Vec<u8> {
    let mut out = include_bytes!("fixtures/cups-grid.heic").to_vec();
    let mdat = out.windows(4).position(|w| w == b"mdat").expect("an mdat box") + 4;
    let start = mdat + (out.len() - mdat) * 5 / 8;
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    for byte in &mut out[start..start + 800] {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        *byte = state as u8;
    }
    out
}

/// A GIF whose logical screen claims 65535 x 65535 around a 1x1 frame.
fn gif_claiming_huge_screen() -> Vec<u8> {
    let mut out = b"GIF89a".to_vec();
    out.extend_from_slice(&[0xFF, 0xFF, 0xFF, 0xFF, 0x00, 0x00, 0x00]);
    out.extend_from_slice(&[0x2C, 0, 0, 0, 0, 1, 0, 1, 0, 0]); // image descriptor, 1x1, no local table
    out.extend_from_slice(&[0x02, 0x02, 0x44, 0x01, 0x00]); // LZW min code 2, one data block
    out.push(0x3B);
    out
}

fn animated_gif() -> Vec<u8> {
    let mut out = Vec::new();
    {
        let mut encoder = GifEncoder::new(&mut out);
        let frames =
            [Rgba([255, 0, 0, 255]), Rgba([0, 0, 255, 255])].map(|c| Frame::new(RgbaImage::from_pixel(40, 30, c)));
        encoder.encode_frames(frames).unwrap();
    }
    out
}

/// A 16x16 GIF whose one frame claims 65535x65535: decoders allocate a frame at its own size.
fn gif_with_a_frame_past_its_screen() -> Vec<u8> {
    let mut out = b"GIF89a\x10\x00\x10\x00\x80\x00\x00".to_vec();
    out.extend_from_slice(&[0, 0, 0, 255, 255, 255]);
    out.extend_from_slice(b"\x2C\x00\x00\x00\x00\xFF\xFF\xFF\xFF\x00\x02\x02\x44\x01\x00\x3B");
    out
}

/// A GIF of `frames` 2x2 frames: tiny, yet over the frame limit past 1000.
fn gif_of_frames(frames: usize) -> Vec<u8> {
    let mut out = Vec::new();
    {
        let mut encoder = GifEncoder::new(&mut out);
        let frame = Frame::new(RgbaImage::from_pixel(2, 2, Rgba([9, 9, 9, 255])));
        encoder.encode_frames(std::iter::repeat_n(frame, frames)).unwrap();
    }
    out
}

/// An animated WebP (VP8X + ANIM + two ANMF frames) built around the image crate's lossless frames.
fn animated_webp() -> Vec<u8> {
    fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
        out.extend_from_slice(kind);
        out.extend_from_slice(&(data.len() as u32).to_le_bytes());
        out.extend_from_slice(data);
        if data.len() % 2 == 1 {
            out.push(0);
        }
    }
    let u24 = |v: u32| v.to_le_bytes()[..3].to_vec();
    let (w, h) = (40u32, 30u32);
    let mut body = b"WEBP".to_vec();
    let mut vp8x = vec![0x02, 0, 0, 0];
    vp8x.extend(u24(w - 1));
    vp8x.extend(u24(h - 1));
    chunk(&mut body, b"VP8X", &vp8x);
    chunk(&mut body, b"ANIM", &[0, 0, 0, 0, 0, 0]);
    for color in [Rgb([255, 0, 0]), Rgb([0, 0, 255])] {
        let still = encode(&DynamicImage::ImageRgb8(ImageBuffer::from_pixel(w, h, color)), ImageFormat::WebP);
        let mut frame = Vec::new();
        frame.extend(u24(0));
        frame.extend(u24(0));
        frame.extend(u24(w - 1));
        frame.extend(u24(h - 1));
        frame.extend(u24(100));
        frame.push(0);
        frame.extend_from_slice(&still[12..]); // the VP8L chunk, header included
        chunk(&mut body, b"ANMF", &frame);
    }
    let mut out = b"RIFF".to_vec();
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&body);
    out
}

fn cmyk_jpeg() -> Vec<u8> {
    let (w, h) = (64u16, 48u16);
    let pixels: Vec<u8> = (0..u32::from(w) * u32::from(h)).flat_map(|i| [(i % 256) as u8, 40, 200, 10]).collect();
    let mut out = Vec::new();
    jpeg_encoder::Encoder::new(&mut out, 85).encode(&pixels, w, h, jpeg_encoder::ColorType::Cmyk).unwrap();
    out
}

/// A PNG with a valid header and trailer whose IDAT is random bytes.
/// A JPEG that ends as a JPEG ends but holds a stray marker (`FF 8C`) halfway through its image
/// data: libjpeg stops there too ("Unsupported marker type"); it must never be stored padded
/// with grey.
fn jpeg_with_stray_marker() -> Vec<u8> {
    let mut jpeg = common::jpeg(&common::photo(400, 300));
    let sos = jpeg.windows(2).position(|w| w == [0xFF, 0xDA]).unwrap();
    let data = sos + 2 + usize::from(u16::from_be_bytes([jpeg[sos + 2], jpeg[sos + 3]]));
    let middle = data + (jpeg.len() - data) / 2;
    jpeg[middle..middle + 2].copy_from_slice(&[0xFF, 0x8C]);
    jpeg
}

fn png_with_garbage_idat() -> Vec<u8> {
    let good = common::png(&common::photo(16, 16));
    let idat = good.windows(4).position(|w| w == b"IDAT").unwrap() - 4;
    let len = u32::from_be_bytes(good[idat..idat + 4].try_into().unwrap()) as usize;
    let mut garbage: Vec<u8> = (0..len).map(|i| (i * 7919 % 251) as u8).collect();
    garbage[0] = 0x13; // not a zlib header
    let mut out = good[..idat + 8].to_vec();
    out.extend_from_slice(&garbage);
    let mut crc = crc32fast::Hasher::new();
    crc.update(b"IDAT");
    crc.update(&garbage);
    out.extend_from_slice(&crc.finalize().to_be_bytes());
    out.extend_from_slice(&good[idat + 12 + len..]);
    out
}

fn catalogue() -> Vec<Row> {
    let jpeg = common::jpeg(&common::photo(400, 300));
    let png = common::png(&common::photo(400, 300));
    let webp = encode(&DynamicImage::ImageRgb8(common::photo(400, 300)), ImageFormat::WebP);
    let tiny = common::png(&common::photo(1, 1));
    let zeros = |w, h| encode(&DynamicImage::ImageLuma8(ImageBuffer::from_pixel(w, h, Luma([0u8]))), ImageFormat::Png);
    let mut polyglot = jpeg.clone();
    polyglot.extend_from_slice(b"PK\x03\x04\x14\0\0\0\0\0secret.txt");
    polyglot.extend_from_slice(b"PK\x05\x06\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0");
    let key_rows = [
        ("key with ..", "/download/..%2F..%2Fetc%2Fpasswd", 400, "invalid-key"),
        ("key with %2e%2e", "/download/%2e%2e/%2e%2e/etc/passwd", 400, "invalid-key"),
        ("absolute key", "/download//etc/passwd", 400, "invalid-key"),
        ("key with NUL", "/download/a%00b.jpg", 400, "invalid-key"),
        ("unknown key", "/download/no-such-image.jpg", 404, "not-found"),
        ("status of an unknown key", "/status/no-such-image.jpg", 404, "not-found"),
    ];
    let mut rows = vec![
        Row {
            name: "pixel flood (PNG claiming 100000x100000)",
            send: upload(one("a.png", common::png_claiming(100_000, 100_000))),
            status: 422,
            code: Some("too-many-pixels"),
            end: None,
        },
        Row {
            name: "decompression bomb over the limit (PNG of zeros, 8000x8000)",
            send: upload(one("a.png", zeros(8000, 8000))),
            status: 422,
            code: Some("too-many-pixels"),
            end: None,
        },
        Row {
            name: "decompression bomb within the limit (PNG of zeros, 6000x6000)",
            send: upload(one("a.png", zeros(6000, 6000))),
            status: 202,
            code: None,
            end: Some(End::Done),
        },
        Row {
            name: "GIF bomb (logical screen 65535x65535)",
            send: upload(one("a.gif", gif_claiming_huge_screen())),
            status: 422,
            code: Some("too-many-pixels"),
            end: None,
        },
        Row {
            name: "truncated JPEG",
            send: upload(one("a.jpg", jpeg[..jpeg.len() / 2].to_vec())),
            status: 422,
            code: Some("truncated-image"),
            end: None,
        },
        Row {
            name: "JPEG cut inside its header",
            send: upload(one("a.jpg", jpeg[..100].to_vec())),
            status: 422,
            code: Some("unreadable-image"),
            end: None,
        },
        Row {
            name: "truncated PNG",
            send: upload(one("a.png", png[..png.len() / 2].to_vec())),
            status: 422,
            code: Some("truncated-image"),
            end: None,
        },
        Row {
            name: "truncated WebP",
            send: upload(one("a.webp", webp[..webp.len() / 2].to_vec())),
            status: 422,
            code: Some("truncated-image"),
            end: None,
        },
        Row {
            name: "wrong extension (PNG named .jpg)",
            send: upload(one("photo.jpg", png.clone())),
            status: 202,
            code: None,
            end: Some(End::Done),
        },
        Row {
            name: "JPEG/ZIP polyglot",
            send: upload(one("a.jpg", polyglot)),
            status: 422,
            code: Some("truncated-image"),
            end: None,
        },
        Row {
            name: "HEIC whose ispe box claims 100000x100000",
            send: upload(one("a.heic", heic_claiming(100_000, 100_000))),
            status: 422,
            code: Some("too-many-pixels"),
            end: None,
        },
        Row {
            name: "truncated HEIC",
            send: upload(one("a.heic", HEIC[..HEIC.len() - 1000].to_vec())),
            status: 422,
            code: Some("truncated-image"),
            end: None,
        },
        Row {
            name: "HEIC grid (as phones store photos) with noise in one tile's HEVC data",
            send: upload(one("a.heic", heic_with_garbage_data())),
            status: 202,
            code: None,
            end: Some(End::Failed("bad-input")),
        },
        Row {
            name: "PNG whose IDAT is garbage",
            send: upload(one("a.png", png_with_garbage_idat())),
            status: 202,
            code: None,
            end: Some(End::Failed("bad-input")),
        },
        Row {
            name: "JPEG with a stray marker in its image data (it still ends as a JPEG ends)",
            send: upload(one("a.jpg", jpeg_with_stray_marker())),
            status: 202,
            code: None,
            end: Some(End::Failed("bad-input")),
        },
        Row {
            name: "CMYK JPEG",
            send: upload(one("a.jpg", cmyk_jpeg())),
            status: 202,
            code: None,
            end: Some(End::Done),
        },
        Row {
            name: "16-bit PNG",
            send: upload(one(
                "a.png",
                encode(
                    &DynamicImage::ImageRgb16(ImageBuffer::from_pixel(64, 48, Rgb([60000u16, 100, 30000]))),
                    ImageFormat::Png,
                ),
            )),
            status: 202,
            code: None,
            end: Some(End::Done),
        },
        Row {
            name: "animated GIF",
            send: upload(one("a.gif", animated_gif())),
            status: 202,
            code: None,
            end: Some(End::Done),
        },
        Row {
            name: "GIF whose frame reaches far past its 16x16 screen (65535x65535)",
            send: upload(one("a.gif", gif_with_a_frame_past_its_screen())),
            status: 422,
            code: Some("too-many-pixels"),
            end: None,
        },
        Row {
            name: "GIF of 1001 frames (over max_frames)",
            send: upload(one("a.gif", gif_of_frames(1001))),
            status: 422,
            code: Some("too-many-frames"),
            end: None,
        },
        Row {
            name: "animated WebP",
            send: upload(one("a.webp", animated_webp())),
            status: 202,
            code: None,
            end: Some(End::Done),
        },
        Row {
            name: "1x1 image",
            send: upload(one("a.png", tiny.clone())),
            status: 202,
            code: None,
            end: Some(End::Done),
        },
        Row {
            name: "10000x1 image",
            send: upload(one("a.png", zeros(10_000, 1))),
            status: 202,
            code: None,
            end: Some(End::Done),
        },
        Row {
            name: "not an image",
            send: upload(one("a.txt", b"hello, I am text".to_vec())),
            status: 415,
            code: Some("unsupported-format"),
            end: None,
        },
        Row {
            name: "10 000 multipart parts",
            send: Send::RawParts(vec![tiny.clone(); 10_000]),
            status: 413,
            code: Some("too-many-images"),
            end: None,
        },
        Row {
            name: "1 MiB part header",
            send: Send::Upload { parts: one("a.png", tiny.clone()), query: "", part_header: Some(1 << 20) },
            status: 400,
            code: Some("part-header-too-large"),
            end: None,
        },
        Row {
            name: "body over the request limit",
            send: Send::Oversized(6 << 20),
            status: 413,
            code: Some("body-too-large"),
            end: None,
        },
        Row { name: "slowloris (headers trickled)", send: Send::Slowloris, status: 0, code: None, end: None },
        Row {
            name: "prefix with ..",
            send: Send::Upload { parts: one("a.png", tiny.clone()), query: "?prefix=../x/", part_header: None },
            status: 400,
            code: Some("invalid-prefix"),
            end: None,
        },
        Row {
            name: "prefix with %2e%2e",
            send: Send::Upload { parts: one("a.png", tiny.clone()), query: "?prefix=%2e%2e/x/", part_header: None },
            status: 400,
            code: Some("invalid-prefix"),
            end: None,
        },
        Row {
            name: "absolute prefix",
            send: Send::Upload { parts: one("a.png", tiny.clone()), query: "?prefix=/etc/", part_header: None },
            status: 400,
            code: Some("invalid-prefix"),
            end: None,
        },
        Row {
            name: "prefix with NUL",
            send: Send::Upload { parts: one("a.png", tiny.clone()), query: "?prefix=a%00b/", part_header: None },
            status: 400,
            code: Some("invalid-prefix"),
            end: None,
        },
        Row {
            name: "very long prefix",
            send: Send::Upload {
                parts: one("a.png", tiny.clone()),
                query: "?prefix=aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa/",
                part_header: None,
            },
            status: 400,
            code: Some("invalid-prefix"),
            end: None,
        },
        Row {
            name: "very long key",
            send: Send::Request(reqwest::Method::GET, format!("/download/{}.jpg", "k".repeat(2000))),
            status: 400,
            code: Some("invalid-key"),
            end: None,
        },
        Row {
            name: "wrong method",
            send: Send::Request(reqwest::Method::PUT, "/upload".into()),
            status: 405,
            code: Some("method-not-allowed"),
            end: None,
        },
        Row {
            name: "unknown route",
            send: Send::Request(reqwest::Method::GET, "/admin".into()),
            status: 404,
            code: Some("no-such-route"),
            end: None,
        },
    ];
    for (name, path, status, code) in key_rows {
        rows.push(Row { name, send: Send::RawGet(path), status, code: Some(code), end: None });
    }
    rows
}

/// The answer is the row's status and code, with a message for people.
fn check(row: &Row, status: u16, body: &Value) {
    assert_eq!(status, row.status, "{}: {body}", row.name);
    if let Some(code) = row.code {
        assert_eq!(body["code"], code, "{}: {body}", row.name);
        assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()), "{}: {body}", row.name);
    }
}

async fn config(aws: bool, dir: &std::path::Path) -> Option<Config> {
    let mut config = common::config(dir);
    config.role = Role::All;
    config.worker.concurrency = 1;
    config.limits.max_request_bytes = 4 << 20;
    config.limits.header_read_timeout_secs = 1;
    // The table sends more requests than a client would; the rate limit has its own test.
    config.limits.rate_per_second = 0;
    if aws {
        common::use_aws(&mut config, "hostile_input_catalogue")?;
    }
    Some(config)
}

async fn run(aws: bool) {
    let _serial = common::RSS_SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let Some(config) = config(aws, dir.path()).await else { return };
    let running = pixbox::server::start(&config).await.unwrap();
    let addr = running.addr.unwrap();
    let base = format!("http://{addr}");
    let client = reqwest::Client::new();

    let before = common::rss_bytes();
    let watch = common::RssWatch::start(Duration::from_millis(5));

    let mut accepted = Vec::new();
    for row in catalogue() {
        let started = Instant::now();
        let response = match &row.send {
            Send::Upload { parts, query, part_header } => {
                let mut form = Form::new();
                for (name, bytes) in parts {
                    let mut part = Part::bytes(bytes.clone()).file_name(name.clone());
                    if let Some(len) = part_header {
                        let mut headers = reqwest::header::HeaderMap::new();
                        headers.insert("x-padding", "p".repeat(*len).parse().unwrap());
                        part = part.headers(headers);
                    }
                    form = form.part("images", part);
                }
                Some(client.post(format!("{base}/upload{query}")).multipart(form).send().await.unwrap())
            }
            Send::Oversized(len) => Some(
                client
                    .post(format!("{base}/upload"))
                    .header("content-type", "multipart/form-data; boundary=b")
                    .body(vec![b'x'; *len])
                    .send()
                    .await
                    .unwrap(),
            ),
            Send::RawParts(images) => {
                let mut body = Vec::new();
                for (i, image) in images.iter().enumerate() {
                    let head =
                        format!("--b\r\nContent-Disposition: form-data; name=\"images\"; filename=\"{i}.png\"\r\n\r\n");
                    body.extend_from_slice(head.as_bytes());
                    body.extend_from_slice(image);
                    body.extend_from_slice(b"\r\n");
                }
                body.extend_from_slice(b"--b--\r\n");
                let content_type = "multipart/form-data; boundary=b";
                Some(
                    client
                        .post(format!("{base}/upload"))
                        .header("content-type", content_type)
                        .body(body)
                        .send()
                        .await
                        .unwrap(),
                )
            }
            Send::Request(method, path) => {
                Some(client.request(method.clone(), format!("{base}{path}")).send().await.unwrap())
            }
            Send::RawGet(path) => {
                let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
                let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
                stream.write_all(request.as_bytes()).await.unwrap();
                let mut answer = String::new();
                stream.read_to_string(&mut answer).await.unwrap();
                let status: u16 = answer[9..12].parse().unwrap();
                let body: Value =
                    serde_json::from_str(answer.split("\r\n\r\n").nth(1).unwrap_or("")).unwrap_or(Value::Null);
                check(&row, status, &body);
                None
            }
            Send::Slowloris => {
                let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
                stream.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: ").await.unwrap();
                let cut = tokio::time::timeout(Duration::from_secs(5), async {
                    let mut buf = [0u8; 512];
                    loop {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        if stream.write_all(b"x").await.is_err() {
                            return;
                        }
                        if let Ok(Ok(0) | Err(_)) =
                            tokio::time::timeout(Duration::from_millis(1), stream.read(&mut buf)).await
                        {
                            return;
                        }
                    }
                })
                .await;
                assert!(cut.is_ok(), "{}: the connection was never cut off", row.name);
                let after = started.elapsed();
                assert!(after < Duration::from_millis(2500), "{}: cut off only after {after:?}", row.name);
                None
            }
        };
        if let Some(response) = response {
            let status = response.status();
            let body: Value = response.json().await.unwrap_or(Value::Null);
            check(&row, status.as_u16(), &body);
            if let Some(end) = row.end {
                accepted.push((row.name, body["images"][0]["key"].as_str().unwrap().to_string(), end));
            }
        }
        // Refusals come from headers and limits, never from reading a whole bomb: each answer is
        // quick (the slowloris row waits for its timeout, checked above).
        if !matches!(row.send, Send::Slowloris) {
            assert!(started.elapsed() < Duration::from_secs(2), "{}: answered after {:?}", row.name, started.elapsed());
        }
        let health = client.get(format!("{base}/health")).send().await.unwrap();
        assert_eq!(health.status(), StatusCode::OK, "unhealthy after {}", row.name);
        eprintln!("{:<62} {:>6.0} ms", row.name, started.elapsed().as_secs_f64() * 1e3);
    }

    // The accepted ones end as the table says.
    for (name, key, end) in accepted {
        let deadline = Instant::now() + Duration::from_secs(60);
        let status = loop {
            let status: Value = client.get(format!("{base}/status/{key}")).send().await.unwrap().json().await.unwrap();
            if status["state"] != "pending" || Instant::now() > deadline {
                break status;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        match end {
            End::Done => assert_eq!(status["state"], "done", "{name}: {status}"),
            End::Failed(code) => {
                assert_eq!(status["state"], "failed", "{name}: {status}");
                assert_eq!(status["error"]["code"], code, "{name}: {status}");
            }
        }
    }
    let grew = watch.peak().saturating_sub(before);
    eprintln!("resident memory grew by at most {} MiB over the catalogue", grew >> 20);
    // One sandboxed call (256 MiB at most) and one request body (4 MiB) at a time, plus slack.
    assert!(grew < 384 << 20, "resident memory grew by {} MiB", grew >> 20);
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_input_catalogue_embedded() {
    run(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_input_catalogue_s3_sqs() {
    run(true).await;
}
