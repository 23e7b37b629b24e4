//! JPEG decoding, fast and strict: shrink-on-load, and damaged files refused.
//!
//! A JPEG stores 8x8 blocks of frequencies; its inverse DCT can produce each block at 1/2, 1/4 or
//! 1/8 of its size for a fraction of the work, so a 24 MP photo headed for a 1024-pixel box never
//! becomes 24 million pixels (this is libvips' "shrink-on-load"). `jpeg-decoder` implements the
//! scaled IDCTs; zune-jpeg (the image crate's decoder) has none and stays the path for full-size
//! decodes and the pixel layouts handled here only rarely (CMYK), in strict mode: a damaged file
//! is refused, never stored padded with grey. A baseline file whose colour components come in
//! separate scans goes to `jpeg-decoder` at any size: zune-jpeg decodes it as luma alone (green).

use image::metadata::Orientation;
use image::{DynamicImage, GrayImage, RgbImage};

use crate::codec::PixelLimits;
use crate::error::Error;

/// How much larger than the fitted size the decoded image must stay. The scaled IDCT keeps more
/// detail near the new Nyquist limit than Lanczos does, which the JPEG encoder then pays for:
/// shrinking right down to the fitted size lost up to 1.0 dB of luma PSNR against a full-size
/// decode on the benchmark photos, a margin of 1.4 at most 0.46 dB (libvips leaves a factor of 2).
const MARGIN: f64 = 1.4;

/// The largest shrink (8, 4, 2 or 1) whose decoded size still covers `need` x [`MARGIN`] on both
/// axes, so the final resize always shrinks by at least the margin. `jpeg-decoder`'s own choice
/// only guarantees one axis.
fn shrink_for(width: u32, height: u32, need: (u32, u32)) -> u32 {
    let covers = |len: u32, need: u32| f64::from(len) >= f64::from(need) * MARGIN;
    [8, 4, 2].into_iter().find(|&d| covers(scaled(width, d), need.0) && covers(scaled(height, d), need.1)).unwrap_or(1)
}

/// The size the scaled IDCT makes of `len` pixels at 1/`shrink`, rounding up as libjpeg does.
fn scaled(len: u32, shrink: u32) -> u32 {
    len.div_ceil(shrink)
}

/// Everything `jpeg-decoder` reports is about the input, except a coding feature it lacks.
fn decode_error(e: jpeg_decoder::Error) -> Error {
    match e {
        jpeg_decoder::Error::Unsupported(feature) => Error::Unsupported(format!("unsupported JPEG: {feature:?}")),
        e => Error::BadInput(format!("cannot decode image: {e}")),
    }
}

/// Decodes a JPEG at the smallest scale that still covers what the caller needs, by shrinking
/// alone; one pass over the header, one decoder. `need` maps the
/// oriented full size to the smallest oriented size the caller needs. Returns the image in display
/// orientation and in sRGB, or `None` when the general decoder should take it (progressive, CMYK or 16-bit
/// pixels, or nothing to gain).
pub fn decode_for(
    input: &[u8],
    limits: PixelLimits,
    need: impl Fn(u32, u32) -> (u32, u32),
) -> Result<Option<DynamicImage>, Error> {
    let mut decoder = jpeg_decoder::Decoder::new(input);
    decoder.read_info().map_err(decode_error)?;
    let info = decoder.info().ok_or_else(|| Error::BadInput("JPEG has no frame header".into()))?;
    let (width, height) = (u32::from(info.width), u32::from(info.height));
    limits.check(width, height)?;
    if info.coding_process == jpeg_decoder::CodingProcess::DctProgressive {
        // jpeg-decoder's progressive path is slower than the general decoder's full-size decode
        // (1.45 s vs 1.27 s for 18 MP in the sandbox): scaling cannot skip entropy decoding.
        return Ok(None);
    }
    if !matches!(info.pixel_format, jpeg_decoder::PixelFormat::L8 | jpeg_decoder::PixelFormat::RGB24) {
        return Ok(None);
    }
    // A broken EXIF block is not worth refusing the image for: show it as stored.
    let orientation = decoder.exif_data().and_then(Orientation::from_exif_chunk).unwrap_or(Orientation::NoTransforms);
    let swaps = matches!(
        orientation,
        Orientation::Rotate90 | Orientation::Rotate270 | Orientation::Rotate90FlipH | Orientation::Rotate270FlipH
    );
    let (oriented_w, oriented_h) = if swaps { (height, width) } else { (width, height) };
    let (need_w, need_h) = need(oriented_w, oriented_h);
    let stored_need = if swaps { (need_h, need_w) } else { (need_w, need_h) };
    let shrink = shrink_for(width, height, stored_need);
    if shrink == 1 && !separate_scans(input) {
        // Nothing to gain over the general decoder, which is faster at full size.
        return Ok(None);
    }
    let want = (scaled(width, shrink), scaled(height, shrink));
    let got = decoder.scale(want.0 as u16, want.1 as u16).map_err(decode_error)?;
    if (u32::from(got.0), u32::from(got.1)) != want {
        // Rounding on a tiny image made the decoder pick another scale: decode at full size.
        return Ok(None);
    }
    let pixels = decoder.decode().map_err(decode_error)?;
    let (w, h) = want;
    let image = match info.pixel_format {
        jpeg_decoder::PixelFormat::L8 => GrayImage::from_raw(w, h, pixels).map(DynamicImage::ImageLuma8),
        _ => RgbImage::from_raw(w, h, pixels).map(DynamicImage::ImageRgb8),
    };
    let mut image =
        image.ok_or_else(|| Error::Internal(format!("JPEG decoder returned a buffer that is not {w}x{h}")))?;
    image.apply_orientation(orientation);
    Ok(Some(crate::colour::to_srgb(image, decoder.icc_profile().as_deref())?))
}

/// Whether a sequential (non-progressive) JPEG sends its colour components in separate scans: its
/// first scan then carries fewer components than the frame has. Legal, written by some scanners
/// and older encoders; zune-jpeg 0.5 decodes only the first scan of such a file. Reads the
/// segments up to the first scan only.
pub fn separate_scans(input: &[u8]) -> bool {
    let mut at = 2;
    let mut frame_components = None;
    while at + 4 <= input.len() {
        if input[at] != 0xFF {
            return false;
        }
        let marker = input[at + 1];
        if marker == 0xFF {
            at += 1; // fill byte
            continue;
        }
        let length = usize::from(u16::from_be_bytes([input[at + 2], input[at + 3]]));
        let body = input.get(at + 4..at + 2 + length.max(2)).unwrap_or_default();
        match marker {
            // SOF0 and SOF1: baseline and extended sequential, Huffman-coded.
            0xC0 | 0xC1 => frame_components = body.get(5).copied(),
            // Progressive and other frames are not this case.
            0xC2..=0xC3 | 0xC5..=0xC7 | 0xC9..=0xCB | 0xCD..=0xCF => return false,
            // Start of scan: its component count is the segment's first byte.
            0xDA => return matches!((frame_components, body.first()), (Some(f), Some(&s)) if s < f),
            _ => {}
        }
        at += 2 + length;
    }
    false
}

/// Decodes a JPEG at full size: `jpeg-decoder` for separate-scan files, zune-jpeg in strict mode
/// for the rest. Returns the image in display orientation and in sRGB.
pub fn decode_full(input: &[u8], limits: PixelLimits) -> Result<DynamicImage, Error> {
    // jpeg-decoder takes grey and YCbCr/RGB files; others (CMYK in separate scans) stay with zune.
    if separate_scans(input)
        && let Some(image) = decode_for(input, limits, |w, h| (w, h))?
    {
        return Ok(image);
    }
    use zune_core::colorspace::ColorSpace;
    let lenient = zune_core::options::DecoderOptions::default()
        .set_strict_mode(false)
        .set_max_width(limits.max_side as usize)
        .set_max_height(limits.max_side as usize);
    let mut decoder = zune_jpeg::JpegDecoder::new_with_options(zune_core::bytestream::ZCursor::new(input), lenient);
    // Stray bytes between header segments are skipped, as libjpeg does (with a warning); only
    // the image data is decoded strictly, where leniency means grey padding.
    decoder.decode_headers().map_err(zune_error)?;
    let strict = lenient.set_strict_mode(true);
    let (width, height) = decoder.dimensions().ok_or_else(|| Error::BadInput("JPEG has no frame header".into()))?;
    let (width, height) = (width as u32, height as u32);
    limits.check(width, height)?;
    let gray = decoder.input_colorspace() == Some(ColorSpace::Luma);
    decoder.set_options(strict.jpeg_set_out_colorspace(if gray { ColorSpace::Luma } else { ColorSpace::RGB }));
    let pixels = decoder.decode().map_err(zune_error)?;
    let image = if gray {
        GrayImage::from_raw(width, height, pixels).map(DynamicImage::ImageLuma8)
    } else {
        RgbImage::from_raw(width, height, pixels).map(DynamicImage::ImageRgb8)
    };
    let mut image =
        image.ok_or_else(|| Error::Internal(format!("JPEG decoder returned a buffer that is not {width}x{height}")))?;
    // A broken EXIF block is not worth refusing the image for: show it as stored.
    let orientation =
        decoder.exif().and_then(|exif| Orientation::from_exif_chunk(exif)).unwrap_or(Orientation::NoTransforms);
    image.apply_orientation(orientation);
    crate::colour::to_srgb(image, decoder.icc_profile().as_deref())
}

/// zune-jpeg's errors are about the input (strict mode makes damage one), except a coding
/// feature it lacks.
fn zune_error(e: zune_jpeg::errors::DecodeErrors) -> Error {
    match e {
        zune_jpeg::errors::DecodeErrors::Unsupported(feature) => {
            Error::Unsupported(format!("unsupported JPEG: {feature:?}"))
        }
        e => Error::BadInput(format!("cannot decode image: {e}")),
    }
}
