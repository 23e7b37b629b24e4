//! The one decode layer of pixbox's plugins, the default ones and every plugin built with the
//! kit: sizes checked from the header before any pixel buffer exists, JPEGs shrunk while they
//! decode when the caller needs less, damaged data refused rather than padded, EXIF orientation
//! applied, ICC profiles converted to sRGB, 8 bits per channel out. `scripts/conformance` checks
//! it against Pillow's decodes of public test suites.

use std::io::Cursor;

use image::{DynamicImage, ImageDecoder, ImageReader, Limits};

use crate::codec::{Format, PixelLimits, eight_bit};
use crate::error::Error;
use crate::{colour, jpeg, png};

/// Decodes a JPEG, PNG, WebP, GIF (its first frame) or JPEG XL at full size (HEIC is
/// `unsupported`: see [`Format::Heic`]): refused as `bad-input` when the header says it is over
/// `limits`, before any pixel buffer is allocated (a 1 KiB file claiming 100000x100000 costs
/// nothing). Returns the image in display orientation, 8 bits per
/// channel, in sRGB, and the input's format.
pub fn decode(input: &[u8], limits: PixelLimits) -> Result<(DynamicImage, Format), Error> {
    // Straight to the full-size decoder: asking the scaled one first would only read the
    // header twice to learn there is nothing to shrink.
    match sniff(input)? {
        Format::Jpeg => Ok((jpeg::decode_full(input, limits)?, Format::Jpeg)),
        Format::Jxl => Ok((decode_jxl(input, limits)?, Format::Jxl)),
        Format::Heic => Err(Error::Unsupported(
            "HEIC: this plugin is built without a HEIC decoder (pixbox's default plugins have one)".into(),
        )),
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
    Format::sniff(input).ok_or_else(|| {
        Error::BadInput("not an image pixbox can read (expected JPEG, PNG, WebP, GIF, JPEG XL or HEIC)".into())
    })
}

/// What one JPEG XL render may take: jxl-oxide renders in 32-bit floats with its filters' state,
/// about [`JXL_BYTES_PER_PIXEL`] (measured: 237 MiB for 8.3 MP), so a whole 12 MP photo would not
/// fit the default 256 MiB. Larger images are rendered in bands of whole 256-pixel groups that
/// stay within this; each band decodes again the group edges its filters need. A 17.9 MP photo:
/// out of memory whole; 169 MiB and 2.0 s with 96 MiB bands; 130 MiB and 2.9 s with these
/// (BENCHMARKS.md).
const JXL_RENDER_BUDGET: usize = 64 << 20;
const JXL_BYTES_PER_PIXEL: usize = 28;

/// Rows per band for a `width`-pixel-wide JPEG XL: all of them when the whole image fits the
/// budget, else a multiple of 256 (at least 256).
fn jxl_band_rows(width: u32, height: u32) -> u32 {
    let fit = JXL_RENDER_BUDGET / (width as usize * JXL_BYTES_PER_PIXEL).max(1);
    if fit >= height as usize { height } else { ((fit / 256 * 256).max(256)) as u32 }
}

/// JPEG XL through jxl-oxide (pure Rust, one thread). The whole file is read first (that parses
/// headers and keeps the compressed groups; pixels come at render) and the size is checked before
/// anything is rendered. A file cut short is refused: jxl-oxide would render what has arrived (a
/// progressive file shows a blurred picture), which must not pass for the image. A large image is
/// rendered in bands ([`jxl_band_rows`]) into one 8-bit buffer, so memory follows the band, not the
/// image. The decoder applies the codestream's orientation (JPEG XL's wins over any EXIF),
/// and its pixels are in the colour space of the profile it reports, converted to sRGB here.
fn decode_jxl(input: &[u8], limits: PixelLimits) -> Result<DynamicImage, Error> {
    let bad =
        |e: Box<dyn std::error::Error + Send + Sync>| Error::BadInput(format!("cannot decode the JPEG XL image: {e}"));
    let mut image = jxl_oxide::JxlImage::builder().read(input).map_err(bad)?;
    let (width, height) = (image.width(), image.height());
    limits.check(width, height)?;
    if !image.is_loading_done() {
        return Err(Error::BadInput("the JPEG XL file is cut off: its last frame is incomplete".into()));
    }
    let format = image.pixel_format();
    if format.has_black() {
        return Err(Error::Unsupported("CMYK JPEG XL is not supported".into()));
    }
    let channels = format.channels();
    let row = width as usize * channels;
    let mut pixels = vec![0u8; row * height as usize];
    let band_rows = jxl_band_rows(width, height);
    for top in (0..height).step_by(band_rows as usize) {
        let rows = band_rows.min(height - top);
        image.set_image_region(jxl_oxide::CropInfo { width, height: rows, left: 0, top });
        let render = image.render_frame(0).map_err(bad)?;
        let mut stream = render.stream();
        if (stream.width(), stream.height(), stream.channels() as usize) != (width, rows, channels) {
            return Err(Error::Internal(format!(
                "jxl-oxide rendered {}x{}x{} for a {width}x{rows}x{channels} band",
                stream.width(),
                stream.height(),
                stream.channels()
            )));
        }
        let band = &mut pixels[top as usize * row..(top + rows) as usize * row];
        stream.write_to_buffer(band);
    }
    let wrong = || Error::Internal(format!("{channels} channels from jxl-oxide"));
    let decoded = match channels {
        1 => image::GrayImage::from_raw(width, height, pixels).map(DynamicImage::ImageLuma8),
        2 => image::GrayAlphaImage::from_raw(width, height, pixels).map(DynamicImage::ImageLumaA8),
        3 => image::RgbImage::from_raw(width, height, pixels).map(DynamicImage::ImageRgb8),
        4 => image::RgbaImage::from_raw(width, height, pixels).map(DynamicImage::ImageRgba8),
        _ => None,
    }
    .ok_or_else(wrong)?;
    colour::to_srgb(decoded, Some(&image.rendered_icc()))
}

/// PNG, WebP and GIF, through the image crate's decoders.
fn decode_other(input: &[u8], limits: PixelLimits, format: Format) -> Result<DynamicImage, Error> {
    // A GIF's frames may reach past its logical screen, and the decoder allocates them at their
    // own size: the limits apply to the canvas that holds them all.
    if format == Format::Gif {
        let scan = crate::container::gif(input).map_err(|e| Error::BadInput(format!("cannot read the GIF: {e}")))?;
        limits.check(scan.width, scan.height)?;
    }
    let input = png::mask_grey_key(input);
    let mut reader = ImageReader::new(Cursor::new(&input[..]));
    reader.set_format(format.image_format().ok_or_else(|| Error::Internal(format!("{format:?} has its own decoder")))?);
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
