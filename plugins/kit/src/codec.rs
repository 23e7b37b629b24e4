//! The formats pixbox accepts, the decode limits, and encoding like the input (decoding is
//! `decode.rs`).

use std::io::Cursor;

use image::{DynamicImage, ImageFormat};

use crate::error::Error;

/// The formats pixbox accepts for upload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Jpeg,
    Png,
    Webp,
    Gif,
    /// JPEG XL: read, never written.
    Jxl,
    /// HEIC (HEIF with HEVC), as phones save photos: read, never written. The kit recognises it;
    /// decoding it takes a decoder the kit does not carry (pixbox's default plugins have one, and
    /// a plugin can bring one through [`crate::Plugin::decode`]).
    Heic,
}

/// JPEG XL's two signatures: a bare codestream, and the ISO-BMFF container's first box.
const JXL_CODESTREAM: &[u8] = &[0xFF, 0x0A];
const JXL_CONTAINER: &[u8] = b"\0\0\0\x0CJXL \r\n\x87\n";

impl Format {
    /// Recognised from the magic bytes, never from a name.
    pub fn sniff(bytes: &[u8]) -> Option<Format> {
        if bytes.starts_with(JXL_CODESTREAM) || bytes.starts_with(JXL_CONTAINER) {
            return Some(Format::Jxl);
        }
        if crate::container::is_heic(bytes) {
            return Some(Format::Heic);
        }
        match image::guess_format(bytes).ok()? {
            ImageFormat::Jpeg => Some(Format::Jpeg),
            ImageFormat::Png => Some(Format::Png),
            ImageFormat::WebP => Some(Format::Webp),
            ImageFormat::Gif => Some(Format::Gif),
            _ => None,
        }
    }

    pub fn media_type(self) -> &'static str {
        match self {
            Format::Jpeg => "image/jpeg",
            Format::Png => "image/png",
            Format::Webp => "image/webp",
            Format::Gif => "image/gif",
            Format::Jxl => "image/jxl",
            Format::Heic => "image/heic",
        }
    }

    /// The image crate's name for it; `None` for JPEG XL, which the kit decodes with jxl-oxide, and
    /// HEIC.
    pub(crate) fn image_format(self) -> Option<ImageFormat> {
        match self {
            Format::Jpeg => Some(ImageFormat::Jpeg),
            Format::Png => Some(ImageFormat::Png),
            Format::Webp => Some(ImageFormat::WebP),
            Format::Gif => Some(ImageFormat::Gif),
            Format::Jxl | Format::Heic => None,
        }
    }
}

/// One encoded output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoded {
    pub bytes: Vec<u8>,
    pub media_type: &'static str,
}

/// The largest input a decode accepts; the defaults are pixbox's own upload limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PixelLimits {
    pub max_pixels: u64,
    pub max_side: u32,
    /// Most frames an animation may have.
    pub max_frames: u32,
    /// Most pixels over all frames of an animation (each frame counts the whole canvas).
    pub max_animation_pixels: u64,
}

impl Default for PixelLimits {
    fn default() -> Self {
        PixelLimits {
            max_pixels: 40_000_000,
            max_side: 65_535,
            max_frames: DEFAULT_MAX_FRAMES,
            max_animation_pixels: DEFAULT_MAX_ANIMATION_PIXELS,
        }
    }
}

/// pixbox's own `[limits] max_frames`.
pub const DEFAULT_MAX_FRAMES: u32 = 1_000;
/// pixbox's own `[limits] max_animation_pixels`.
pub const DEFAULT_MAX_ANIMATION_PIXELS: u64 = 50_000_000;

impl PixelLimits {
    /// Refuses a size over these limits (as `bad-input`), before any pixel buffer exists.
    pub fn check(self, w: u32, h: u32) -> Result<(), Error> {
        if w > self.max_side || h > self.max_side {
            return Err(Error::BadInput(format!(
                "image too large: {w}x{h} is over the limit of {} pixels per side",
                self.max_side
            )));
        }
        if u64::from(w) * u64::from(h) > self.max_pixels {
            return Err(Error::BadInput(format!(
                "image is {w}x{h} = {} pixels, over the limit of {} pixels",
                u64::from(w) * u64::from(h),
                self.max_pixels
            )));
        }
        Ok(())
    }

    /// Refuses an animation of `frames` frames and `pixels` pixels over all of them (as
    /// `bad-input`), before any frame is decoded.
    pub fn check_animation(self, frames: u32, pixels: u64) -> Result<(), Error> {
        if frames > self.max_frames {
            return Err(Error::BadInput(format!(
                "animation has {frames} frames, over the limit of {} frames",
                self.max_frames
            )));
        }
        if pixels > self.max_animation_pixels {
            return Err(Error::BadInput(format!(
                "animation has {pixels} pixels over all its frames, over the limit of {} pixels",
                self.max_animation_pixels
            )));
        }
        Ok(())
    }

    /// The stricter of both on each axis.
    pub fn min(self, other: PixelLimits) -> PixelLimits {
        PixelLimits {
            max_pixels: self.max_pixels.min(other.max_pixels),
            max_side: self.max_side.min(other.max_side),
            max_frames: self.max_frames.min(other.max_frames),
            max_animation_pixels: self.max_animation_pixels.min(other.max_animation_pixels),
        }
    }
}

/// Encodes pixels only (no metadata). JPEG drops an alpha channel; `quality` is JPEG's.
pub fn encode(image: DynamicImage, format: Format, quality: u8) -> Result<Encoded, Error> {
    if format == Format::Jxl || format == Format::Heic {
        return Err(Error::Unsupported(format!("pixbox reads {} but does not write it", format.media_type())));
    }
    let image = eight_bit(image);
    let image = match format {
        Format::Jpeg if image.color().has_alpha() => match image {
            DynamicImage::ImageLumaA8(_) => DynamicImage::ImageLuma8(image.to_luma8()),
            _ => DynamicImage::ImageRgb8(image.to_rgb8()),
        },
        // The WebP and GIF encoders take colour images only.
        Format::Webp | Format::Gif if !matches!(image, DynamicImage::ImageRgb8(_) | DynamicImage::ImageRgba8(_)) => {
            if image.color().has_alpha() {
                DynamicImage::ImageRgba8(image.to_rgba8())
            } else {
                DynamicImage::ImageRgb8(image.to_rgb8())
            }
        }
        Format::Gif => DynamicImage::ImageRgba8(image.to_rgba8()),
        _ => image,
    };
    let mut bytes = Vec::new();
    let written = match format {
        Format::Jpeg => {
            image.write_with_encoder(image::codecs::jpeg::JpegEncoder::new_with_quality(&mut bytes, quality))
        }
        Format::Png => image.write_with_encoder(image::codecs::png::PngEncoder::new(&mut bytes)),
        Format::Webp => image.write_with_encoder(image::codecs::webp::WebPEncoder::new_lossless(&mut bytes)),
        Format::Gif => image.write_to(&mut Cursor::new(&mut bytes), ImageFormat::Gif),
        Format::Jxl | Format::Heic => unreachable!("refused above"),
    };
    written.map_err(|e| Error::Internal(format!("encoding {} failed: {e}", format.media_type())))?;
    Ok(Encoded { bytes, media_type: format.media_type() })
}

/// 16-bit and float layouts brought to 8 bits per channel, which every encoder takes.
pub fn eight_bit(image: DynamicImage) -> DynamicImage {
    match image {
        DynamicImage::ImageLuma8(_)
        | DynamicImage::ImageLumaA8(_)
        | DynamicImage::ImageRgb8(_)
        | DynamicImage::ImageRgba8(_) => image,
        other if other.color().has_alpha() => DynamicImage::ImageRgba8(other.to_rgba8()),
        other => DynamicImage::ImageRgb8(other.to_rgb8()),
    }
}
