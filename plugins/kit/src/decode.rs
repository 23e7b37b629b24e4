//! The one decode layer of pixbox's plugins, the default ones and every plugin built with the
//! kit: sizes checked from the header before any pixel buffer exists, JPEGs shrunk while they
//! decode when the caller needs less, damaged data refused rather than padded, EXIF orientation
//! applied, ICC profiles converted to sRGB, 8 bits per channel out. `scripts/conformance` checks
//! it against Pillow's decodes of public test suites.

use std::io::Cursor;

use image::{DynamicImage, ImageDecoder, ImageReader, Limits};

use crate::codec::{Format, eight_bit};
use crate::{Error, PixelLimits, colour, jpeg, png};

/// Decodes a JPEG, PNG, WebP or GIF (its first frame) at full size: refused as `bad-input` when
/// the header says it is over `limits`, before any pixel buffer is allocated (a 1 KiB file
/// claiming 100000x100000 costs nothing). Returns the image in display orientation, 8 bits per
/// channel, in sRGB, and the input's format.
pub fn decode(input: &[u8], limits: PixelLimits) -> Result<(DynamicImage, Format), Error> {
    // Straight to the full-size decoder: asking the scaled one first would only read the
    // header twice to learn there is nothing to shrink.
    match sniff(input)? {
        Format::Jpeg => Ok((jpeg::decode_full(input, limits)?, Format::Jpeg)),
        format => Ok((decode_other(input, limits, format)?, format)),
    }
}

/// [`decode`], at the smallest size that still covers `need(width, height)` (given and returned in
/// display orientation): a JPEG shrinks by 2, 4 or 8 while it decodes (libvips' "shrink-on-load":
/// a 24 MP photo headed for a 1024-pixel box never becomes 24 million pixels); other formats, and
/// JPEGs the scaled decoder does not take, decode at full size. The caller resizes the rest of
/// the way.
pub fn decode_at_least(
    input: &[u8],
    limits: PixelLimits,
    need: impl Fn(u32, u32) -> (u32, u32),
) -> Result<(DynamicImage, Format), Error> {
    let format = sniff(input)?;
    if format == Format::Jpeg
        && let Some(image) = jpeg::decode_for(input, limits, need)?
    {
        return Ok((image, format));
    }
    decode(input, limits)
}

/// The format, or `bad-input` for anything pixbox does not read.
fn sniff(input: &[u8]) -> Result<Format, Error> {
    Format::sniff(input)
        .ok_or_else(|| Error::BadInput("not an image pixbox can read (expected JPEG, PNG, WebP or GIF)".into()))
}

/// PNG, WebP and GIF, through the image crate's decoders.
fn decode_other(input: &[u8], limits: PixelLimits, format: Format) -> Result<DynamicImage, Error> {
    let input = png::mask_grey_key(input);
    let mut reader = ImageReader::new(Cursor::new(&input[..]));
    reader.set_format(format.image_format());
    let mut decoder_limits = Limits::default();
    decoder_limits.max_image_width = Some(limits.max_side);
    decoder_limits.max_image_height = Some(limits.max_side);
    reader.limits(decoder_limits);
    let mut decoder = reader.into_decoder().map_err(Error::from)?;
    let (w, h) = decoder.dimensions();
    limits.check(w, h)?;
    // A broken EXIF block (or ICC profile) is not worth refusing the image for: show it as stored.
    let orientation = orientation(&mut decoder);
    let icc = decoder.icc_profile().ok().flatten();
    let mut image = eight_bit(DynamicImage::from_decoder(decoder)?);
    image.apply_orientation(orientation);
    colour::to_srgb(image, icc.as_deref())
}

/// The orientation in the file's EXIF; none when the block is missing or broken. A WebP EXIF chunk
/// may start with JPEG's APP1 prefix `Exif\0\0` (Pillow, and so many Python pipelines, write it
/// so); browsers, exiftool and libvips accept it, and so does pixbox.
fn orientation(decoder: &mut impl ImageDecoder) -> image::metadata::Orientation {
    use image::metadata::Orientation;
    if let Ok(Some(exif)) = decoder.exif_metadata()
        && let Some(found) = Orientation::from_exif_chunk(exif.strip_prefix(b"Exif\0\0").unwrap_or(&exif))
    {
        return found;
    }
    decoder.orientation().unwrap_or(Orientation::NoTransforms)
}
