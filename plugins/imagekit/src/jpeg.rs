//! JPEG out: a baseline encoder tuned for resized photos. (Decoding, with shrink-on-load, is the
//! kit's: `pixbox_kit::decode_at_least`.)

use image::DynamicImage;

use crate::Error;

/// Encodes 8-bit gray or RGB pixels as a baseline JPEG. Below quality 90 chroma is halved
/// horizontally (4:2:2, as the image crate's encoder did: 4:2:0 cost up to 0.4 dB of luma PSNR on
/// the benchmark photos) and averaged rather than point-sampled, so colour edges stay clean.
pub fn encode(image: &DynamicImage, quality: u8, out: &mut Vec<u8>) -> Result<(), Error> {
    let (width, height) = (dimension(image.width())?, dimension(image.height())?);
    let mut encoder = jpeg_encoder::Encoder::new(out, quality);
    encoder.set_chroma_subsampling_method(jpeg_encoder::ChromaSubsamplingMethod::Average);
    if quality < 90 {
        encoder.set_sampling_factor(jpeg_encoder::SamplingFactor::F_2_1);
    }
    let result = match image {
        DynamicImage::ImageLuma8(gray) => encoder.encode(gray.as_raw(), width, height, jpeg_encoder::ColorType::Luma),
        DynamicImage::ImageRgb8(rgb) => encoder.encode(rgb.as_raw(), width, height, jpeg_encoder::ColorType::Rgb),
        other => encoder.encode(other.to_rgb8().as_raw(), width, height, jpeg_encoder::ColorType::Rgb),
    };
    result.map_err(|e| Error::Internal(format!("encoding failed: {e}")))
}

/// JPEG sides are 16-bit; the option limits keep outputs far below that.
fn dimension(len: u32) -> Result<u16, Error> {
    u16::try_from(len).map_err(|_| Error::Unsupported(format!("JPEG cannot be {len} pixels wide or tall")))
}
