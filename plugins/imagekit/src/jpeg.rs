//! JPEG in and out: libjpeg-turbo's decoder with shrink-on-load at any n/8 (the `libjpeg`
//! feature; without it, the kit's pure-Rust decoders), and a baseline encoder tuned for resized
//! photos.

use image::DynamicImage;

use crate::Error;
use crate::ycbcr::Rgb;

/// How much larger than the fitted size the decoded image must stay: the kit's margin (see
/// `pixbox_kit`'s jpeg module: decoding right down to the fitted size costs up to 1.0 dB of luma
/// PSNR, 1.4 at most 0.46 dB).
#[cfg(feature = "libjpeg")]
const MARGIN: f64 = 1.4;

/// The scales (in eighths, smallest first) a decode may use. 3/8 and 7/8 are left out: on the
/// benchmark photos they cost 1.1 and 1.6 dB of luma PSNR against the full-size reference, where
/// 5/8 and 6/8 cost at most 0.12 dB and save most of a 4 MP photo's decode.
#[cfg(feature = "libjpeg")]
const SCALES: [u32; 5] = [1, 2, 4, 5, 6];

/// Decodes a JPEG with libjpeg-turbo at the smallest n/8 of its size (n = 1..=8) whose size
/// covers `need(width, height)` x [`MARGIN`] on both axes (`need` maps the oriented full size to
/// the smallest oriented size the caller needs; identity for a full-size decode). Returns the
/// image in display orientation and sRGB, or `None` for CMYK files, which the kit's decoder
/// takes. Damaged data ends the call as `bad-input` with libjpeg's reason, a JPEG feature it lacks
/// as `unsupported` ([`pixbox_kit::end_call`]): libjpeg cannot return from its errors. (Built
/// natively, for benchmarks, such an error aborts the process.)
#[cfg(feature = "libjpeg")]
pub fn decode(
    input: &[u8],
    limits: pixbox_kit::PixelLimits,
    need: impl Fn(u32, u32) -> (u32, u32),
) -> Result<Option<DynamicImage>, Error> {
    use image::metadata::Orientation;
    use image::{GrayImage, RgbImage};
    use pixbox_jpeg::{ColorSpace, Decoder, Failure};

    let mut decoder = Decoder::new(input, |failure, reason| match failure {
        Failure::BadInput => pixbox_kit::end_call(&Error::BadInput(format!("cannot decode image: {reason}"))),
        Failure::Unsupported => pixbox_kit::end_call(&Error::Unsupported(format!("unsupported JPEG: {reason}"))),
        Failure::Internal => pixbox_kit::end_call(&Error::Internal(format!("libjpeg: {reason}"))),
    });
    let header = decoder.header();
    limits.check(header.width, header.height)?;
    let gray = match header.color_space {
        ColorSpace::Gray => true,
        ColorSpace::Rgb => false,
        ColorSpace::Cmyk | ColorSpace::Other => return Ok(None),
    };
    // A broken EXIF block is not worth refusing the image for: show it as stored.
    let orientation = decoder.exif().and_then(Orientation::from_exif_chunk).unwrap_or(Orientation::NoTransforms);
    let swaps = matches!(
        orientation,
        Orientation::Rotate90 | Orientation::Rotate270 | Orientation::Rotate90FlipH | Orientation::Rotate270FlipH
    );
    let (width, height) = (header.width, header.height);
    let (need_w, need_h) = if swaps { need(height, width) } else { need(width, height) };
    let (need_w, need_h) = if swaps { (need_h, need_w) } else { (need_w, need_h) };
    let covers = |len: u32, need: u32| f64::from(len) >= f64::from(need) * MARGIN;
    let eighths = SCALES
        .into_iter()
        .find(|&n| {
            let (w, h) = decoder.scaled_size(n);
            covers(w, need_w) && covers(h, need_h)
        })
        .unwrap_or(8);
    let icc = decoder.icc();
    let (w, h, pixels) = decoder.decode(eighths, gray);
    let image = if gray {
        GrayImage::from_raw(w, h, pixels).map(DynamicImage::ImageLuma8)
    } else {
        RgbImage::from_raw(w, h, pixels).map(DynamicImage::ImageRgb8)
    };
    let mut image = image.ok_or_else(|| Error::Internal(format!("libjpeg returned a buffer that is not {w}x{h}")))?;
    image.apply_orientation(orientation);
    Ok(Some(pixbox_kit::to_srgb(image, icc.as_deref())?))
}

/// Encodes 8-bit gray or RGB pixels as a baseline JPEG. Below quality 90 chroma is halved
/// horizontally (4:2:2, as the image crate's encoder did: 4:2:0 cost up to 0.4 dB of luma PSNR on
/// the benchmark photos) and averaged rather than point-sampled, so colour edges stay clean. RGB
/// is converted (and chroma averaged) by [`crate::ycbcr`], in SIMD inside the sandbox.
pub fn encode(image: &DynamicImage, quality: u8, out: &mut Vec<u8>) -> Result<(), Error> {
    let (width, height) = (dimension(image.width())?, dimension(image.height())?);
    let mut encoder = jpeg_encoder::Encoder::new(out, quality);
    let halve_chroma = quality < 90;
    encoder.set_sampling_factor(if halve_chroma {
        jpeg_encoder::SamplingFactor::F_2_1
    } else {
        jpeg_encoder::SamplingFactor::F_1_1
    });
    // The averages are computed while converting: the encoder reads them as they are.
    encoder.set_chroma_subsampling_method(jpeg_encoder::ChromaSubsamplingMethod::Nearest);
    let result = match image {
        DynamicImage::ImageLuma8(gray) => encoder.encode(gray.as_raw(), width, height, jpeg_encoder::ColorType::Luma),
        DynamicImage::ImageRgb8(rgb) => encoder.encode_image(Rgb::new(rgb.as_raw(), width, height, halve_chroma)),
        other => encoder.encode_image(Rgb::new(other.to_rgb8().as_raw(), width, height, halve_chroma)),
    };
    result.map_err(|e| Error::Internal(format!("encoding failed: {e}")))
}

/// JPEG sides are 16-bit; the option limits keep outputs far below that.
fn dimension(len: u32) -> Result<u16, Error> {
    u16::try_from(len).map_err(|_| Error::Unsupported(format!("JPEG cannot be {len} pixels wide or tall")))
}
