//! The modern output formats, in pure Rust so that they build for wasm32-wasip2: lossy WebP
//! (VP8) and AVIF (AV1, through rav1e).

use image::DynamicImage;

use crate::Error;

/// rav1e's speed preset (1 slowest .. 10 fastest). Inside the sandbox, without SIMD, 10 keeps a
/// 1024-pixel AVIF within a few times a JPEG's encode time; BENCHMARKS.md has the figures.
pub const AVIF_SPEED: u8 = 10;

/// Lossy WebP at `quality` (1..=100), with alpha when the image has it.
pub fn webp_lossy(image: &DynamicImage, quality: u8, out: &mut Vec<u8>) -> Result<(), Error> {
    use webp_lossy::{ColorType, EncoderParams, WebPEncoder};
    let mut encoder = WebPEncoder::new(out);
    let mut params = EncoderParams::default();
    params.use_lossy = true;
    params.lossy_quality = quality.min(100);
    encoder.set_params(params);
    let (w, h) = (image.width(), image.height());
    let result = match image {
        DynamicImage::ImageLuma8(p) => encoder.encode(p.as_raw(), w, h, ColorType::L8),
        DynamicImage::ImageLumaA8(p) => encoder.encode(p.as_raw(), w, h, ColorType::La8),
        DynamicImage::ImageRgba8(p) => encoder.encode(p.as_raw(), w, h, ColorType::Rgba8),
        DynamicImage::ImageRgb8(p) => encoder.encode(p.as_raw(), w, h, ColorType::Rgb8),
        other if other.color().has_alpha() => encoder.encode(other.to_rgba8().as_raw(), w, h, ColorType::Rgba8),
        other => encoder.encode(other.to_rgb8().as_raw(), w, h, ColorType::Rgb8),
    };
    result.map_err(|e| Error::Internal(format!("WebP encoding failed: {e}")))
}

/// AVIF at `quality` (1..=100, ravif's scale), 8-bit, with alpha when the image has it.
pub fn avif(image: &DynamicImage, quality: u8, out: &mut Vec<u8>) -> Result<(), Error> {
    let (w, h) = (image.width() as usize, image.height() as usize);
    let encoder = ravif::Encoder::new()
        .with_quality(f32::from(quality.clamp(1, 100)))
        .with_speed(AVIF_SPEED)
        // 8-bit: 10-bit is rav1e's advice for quality but costs time the sandbox budget needs.
        .with_bit_depth(ravif::BitDepth::Eight)
        .with_num_threads(Some(1));
    let encoded = if image.color().has_alpha() {
        let rgba = image.to_rgba8();
        let pixels: Vec<ravif::RGBA8> =
            rgba.as_raw().chunks_exact(4).map(|p| ravif::RGBA8::new(p[0], p[1], p[2], p[3])).collect();
        drop(rgba);
        encoder.encode_rgba(ravif::Img::new(&pixels[..], w, h))
    } else {
        let pixels: Vec<ravif::RGB8> = match image {
            DynamicImage::ImageRgb8(rgb) => {
                rgb.as_raw().chunks_exact(3).map(|p| ravif::RGB8::new(p[0], p[1], p[2])).collect()
            }
            other => other.to_rgb8().as_raw().chunks_exact(3).map(|p| ravif::RGB8::new(p[0], p[1], p[2])).collect(),
        };
        encoder.encode_rgb(ravif::Img::new(&pixels[..], w, h))
    };
    let encoded = encoded.map_err(|e| Error::Internal(format!("AVIF encoding failed: {e}")))?;
    out.extend_from_slice(&encoded.avif_file);
    Ok(())
}
