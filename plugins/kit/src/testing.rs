//! A native test harness: run a [`Plugin`] exactly as the host would (options checked against
//! `info()`, one guarded decode, one encode per rendition) in a plain `cargo test`, no wasm.
//!
//! ```ignore
//! #[test]
//! fn brightens() {
//!     let input = pixbox_kit::testing::sample(Format::Jpeg, 64, 48);
//!     let out = pixbox_kit::testing::run::<Brighten>(&input, &[("amount", "50")]).unwrap();
//!     assert_eq!(out.media_type, "image/jpeg");
//!     assert_eq!((out.image.width(), out.image.height()), (64, 48));
//! }
//! ```

use image::{DynamicImage, Rgb, RgbImage};

use crate::{Error, Format, Plugin};

/// One rendition made by [`run`]: the encoded bytes and, for assertions, the decoded pixels.
#[derive(Debug, Clone)]
pub struct Output {
    pub bytes: Vec<u8>,
    pub media_type: &'static str,
    pub image: DynamicImage,
}

/// Runs `P` on an encoded `input` with one rendition's `options`, as the host would.
pub fn run<P: Plugin>(input: &[u8], options: &[(&str, &str)]) -> Result<Output, Error> {
    let mut out = run_renditions::<P>(input, &[options])?;
    Ok(out.pop().expect("one output per rendition"))
}

/// [`run`] with several renditions from one decode, as a route with `[routes.renditions]` asks.
pub fn run_renditions<P: Plugin>(input: &[u8], renditions: &[&[(&str, &str)]]) -> Result<Vec<Output>, Error> {
    let requests: Vec<Vec<(String, String)>> =
        renditions.iter().map(|r| r.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect()).collect();
    crate::render::<P>(input, &requests)?
        .into_iter()
        .map(|e| {
            let image = image::load_from_memory(&e.bytes)
                .map_err(|err| Error::Internal(format!("the plugin's {} does not decode: {err}", e.media_type)))?;
            Ok(Output { bytes: e.bytes, media_type: e.media_type, image })
        })
        .collect()
}

/// A `width` x `height` test picture: smooth gradients with a sharp diagonal, so resampling and
/// colour changes show.
pub fn picture(width: u32, height: u32) -> DynamicImage {
    DynamicImage::ImageRgb8(RgbImage::from_fn(width, height, |x, y| {
        let (fx, fy) = (x as f32 / width.max(1) as f32, y as f32 / height.max(1) as f32);
        let edge = if x * height > y * width { 40 } else { 0 };
        Rgb([(fx * 215.0) as u8 + edge, (fy * 215.0) as u8 + edge, ((1.0 - fx) * 200.0) as u8])
    }))
}

/// [`picture`] encoded as `format`: a sample input for each format pixbox accepts.
pub fn sample(format: Format, width: u32, height: u32) -> Vec<u8> {
    crate::encode(picture(width, height), format, 90).expect("the sample encodes").bytes
}

/// An animation of `frames` frames of [`picture`] (each shifted a little further to the right,
/// shown 100 ms, looping for ever) as a GIF or a lossless WebP: a sample input for plugins that
/// ask for frames ([`crate::Info::animated`]).
pub fn animated_sample(format: Format, width: u32, height: u32, frames: u32) -> Vec<u8> {
    let frame = |i: u32| {
        let mut image = picture(width, height).to_rgba8();
        image::imageops::overlay(&mut image, &picture(width, height).to_rgba8(), i64::from(i * 4), 0);
        DynamicImage::ImageRgba8(image)
    };
    match format {
        Format::Gif => {
            let mut gif = crate::animation::GifAnimation::new(None);
            (0..frames).for_each(|i| gif.push(&frame(i), 100).expect("a GIF frame"));
            gif.finish().expect("the sample GIF")
        }
        _ => {
            let mut webp = crate::animation::WebpAnimation::new(None);
            for i in 0..frames {
                let still = crate::encode(frame(i), Format::Webp, 90).expect("a WebP frame");
                webp.push(&still.bytes, 100).expect("a WebP frame");
            }
            webp.finish().expect("the sample WebP")
        }
    }
}
