//! Image logic shared by the sample plugins: sniff, decode with limits, orient, fit, encode.
//!
//! Plain Rust with no WebAssembly glue, so the same code runs natively (the benchmark compares
//! it with the sandboxed plugin) and inside the `resize` and `thumbnail` components.

mod jpeg;

use std::io::Cursor;

use fast_image_resize as fr;
use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader, Limits};

/// Why a resize failed; mirrors the contract's `transform-error`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// The input can never be processed (broken, truncated, too large).
    BadInput(String),
    /// An option or a format this plugin does not support.
    Unsupported(String),
    /// Anything else.
    Internal(String),
}

/// The output format: keep the input's, or pick one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputFormat {
    Same,
    Jpeg,
    Png,
    Webp,
}

/// Every option the plugin understands, with its default (see [`PARAMS`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Options {
    pub width: u32,
    pub height: u32,
    pub format: OutputFormat,
    pub quality: u8,
    pub upscale: bool,
    pub max_pixels: u64,
    pub max_side: u32,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            width: 1024,
            height: 1024,
            format: OutputFormat::Same,
            quality: 85,
            upscale: false,
            max_pixels: 40_000_000,
            max_side: 10_000,
        }
    }
}

/// (name, description, default) of every option, the single source for `info()` and parsing.
pub const PARAMS: &[(&str, &str, &str)] = &[
    ("width", "Width of the box the image must fit in, in pixels (1..=10000).", "1024"),
    ("height", "Height of the box the image must fit in, in pixels (1..=10000).", "1024"),
    (
        "format",
        "Output format: same, jpeg, png or webp. `same` keeps the input format (GIF becomes PNG). WebP output is lossless.",
        "same",
    ),
    ("quality", "JPEG quality, 1..=100.", "85"),
    ("upscale", "Enlarge images smaller than the box: true or false.", "false"),
    ("max-pixels", "Refuse inputs with more pixels than this (width x height) before decoding them.", "40000000"),
    ("max-side", "Refuse inputs wider or taller than this many pixels.", "10000"),
];

impl Options {
    /// Parses name/value pairs on top of the defaults; unknown names and bad values are refused.
    pub fn parse<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Result<Self, Error> {
        let mut o = Options::default();
        for (name, value) in pairs {
            match name {
                "width" => o.width = parse_in(name, value, 1..=10_000)?,
                "height" => o.height = parse_in(name, value, 1..=10_000)?,
                "quality" => o.quality = parse_in(name, value, 1..=100)?,
                "max-pixels" => o.max_pixels = parse_in(name, value, 1..=u64::MAX)?,
                "max-side" => o.max_side = parse_in(name, value, 1..=u32::MAX)?,
                "upscale" => {
                    o.upscale = value.parse().map_err(|_| {
                        Error::Unsupported(format!("option upscale must be true or false, got {value:?}"))
                    })?
                }
                "format" => {
                    o.format = match value.to_ascii_lowercase().as_str() {
                        "same" => OutputFormat::Same,
                        "jpeg" | "jpg" => OutputFormat::Jpeg,
                        "png" => OutputFormat::Png,
                        "webp" => OutputFormat::Webp,
                        _ => {
                            return Err(Error::Unsupported(format!(
                                "option format must be same, jpeg, png or webp, got {value:?}"
                            )));
                        }
                    }
                }
                _ => return Err(Error::Unsupported(format!("unknown option {name:?}"))),
            }
        }
        Ok(o)
    }
}

/// Parses a number and checks it is in `range`, with a message naming the option.
pub fn parse_in<T>(name: &str, value: &str, range: std::ops::RangeInclusive<T>) -> Result<T, Error>
where
    T: std::str::FromStr + PartialOrd + std::fmt::Display,
{
    match value.trim().parse::<T>() {
        Ok(v) if range.contains(&v) => Ok(v),
        _ => Err(Error::Unsupported(format!(
            "option {name} must be a whole number from {} to {}, got {value:?}",
            range.start(),
            range.end()
        ))),
    }
}

/// An encoded result.
#[derive(Debug)]
pub struct Encoded {
    pub bytes: Vec<u8>,
    pub media_type: &'static str,
}

/// Decodes `input`, applies its EXIF orientation, fits it inside the box and re-encodes it.
/// Metadata (EXIF, GPS, ICC) is not carried over: the encoders write pixels only.
pub fn resize(input: &[u8], options: &Options) -> Result<Encoded, Error> {
    let image = decode_at_least(input, options, |w, h| fit(w, h, options))?;
    let (width, height) = fit(image.width(), image.height(), options);
    let resized = if (width, height) == (image.width(), image.height()) {
        image
    } else {
        let image = normalise(image);
        let mut dst = DynamicImage::new(width, height, image.color());
        fr::Resizer::new()
            .resize(
                &image,
                &mut dst,
                &fr::ResizeOptions::new().resize_alg(fr::ResizeAlg::Convolution(fr::FilterType::Lanczos3)),
            )
            .map_err(|e| Error::Internal(format!("resize failed: {e}")))?;
        dst
    };
    encode(resized, output_format(input, options.format), options.quality)
}

/// Resolves `Same` to the input's format; GIF (which pixbox does not write) becomes PNG.
fn output_format(input: &[u8], format: OutputFormat) -> OutputFormat {
    match format {
        OutputFormat::Same => match sniff(input) {
            Some(ImageFormat::Jpeg) => OutputFormat::Jpeg,
            Some(ImageFormat::WebP) => OutputFormat::Webp,
            _ => OutputFormat::Png,
        },
        other => other,
    }
}

/// A `size` x `size` grayscale thumbnail cut from the centre of the image (never enlarged: a
/// smaller image gives a square as large as its shorter side). Uses the limits, format and quality
/// of `options`; its box is ignored.
pub fn square_thumbnail(input: &[u8], size: u32, options: &Options) -> Result<Encoded, Error> {
    // The centre square is cut from the shorter side, so that side must stay at least `size`.
    let image = decode_at_least(input, options, |w, h| {
        let side = size.min(w).min(h);
        let scale = f64::from(side) / f64::from(w.min(h));
        ((f64::from(w) * scale).ceil() as u32, (f64::from(h) * scale).ceil() as u32)
    })?;
    let gray = if image.color().has_alpha() {
        DynamicImage::ImageLumaA8(image.to_luma_alpha8())
    } else {
        DynamicImage::ImageLuma8(image.to_luma8())
    };
    let side = size.min(gray.width()).min(gray.height());
    let mut dst = DynamicImage::new(side, side, gray.color());
    fr::Resizer::new()
        .resize(
            &gray,
            &mut dst,
            &fr::ResizeOptions::new()
                .resize_alg(fr::ResizeAlg::Convolution(fr::FilterType::Lanczos3))
                .fit_into_destination(Some((0.5, 0.5))),
        )
        .map_err(|e| Error::Internal(format!("resize failed: {e}")))?;
    encode(dst, output_format(input, options.format), options.quality)
}

/// Decodes at the smallest size that still covers `need(width, height)` (given and returned in
/// display orientation): JPEGs shrink while decoding, other formats decode at full size.
pub fn decode_at_least(
    input: &[u8],
    options: &Options,
    need: impl Fn(u32, u32) -> (u32, u32),
) -> Result<DynamicImage, Error> {
    if sniff(input) == Some(ImageFormat::Jpeg)
        && let Some(image) = jpeg::decode_for(input, options, need)?
    {
        return Ok(image);
    }
    decode(input, options)
}

/// Refuses a size over the option limits, before any pixel buffer exists.
fn check_size(w: u32, h: u32, options: &Options) -> Result<(), Error> {
    if w > options.max_side || h > options.max_side {
        return Err(Error::BadInput(format!(
            "image too large: {w}x{h} is over the limit of {} pixels per side",
            options.max_side
        )));
    }
    if u64::from(w) * u64::from(h) > options.max_pixels {
        return Err(Error::BadInput(format!(
            "image is {w}x{h} = {} pixels, over the limit of {} pixels",
            u64::from(w) * u64::from(h),
            options.max_pixels
        )));
    }
    Ok(())
}

/// Decodes with the size checked from the header first, so a tiny file that claims to be huge is
/// refused before any pixel buffer is allocated. Returns the image already in display orientation.
pub fn decode(input: &[u8], options: &Options) -> Result<DynamicImage, Error> {
    let mut reader = ImageReader::new(Cursor::new(input));
    reader.set_format(
        sniff(input)
            .ok_or_else(|| Error::BadInput("not an image pixbox can read (expected JPEG, PNG, WebP or GIF)".into()))?,
    );
    let mut limits = Limits::default();
    limits.max_image_width = Some(options.max_side);
    limits.max_image_height = Some(options.max_side);
    reader.limits(limits);
    let mut decoder = reader.into_decoder().map_err(image_error)?;
    let (w, h) = decoder.dimensions();
    check_size(w, h, options)?;
    // A broken EXIF block is not worth refusing the image for: show it as stored.
    let orientation = decoder.orientation().unwrap_or(image::metadata::Orientation::NoTransforms);
    let mut image = DynamicImage::from_decoder(decoder).map_err(image_error)?;
    image.apply_orientation(orientation);
    Ok(image)
}

/// The formats pixbox accepts, recognised from their magic bytes (never from names or headers).
pub fn sniff(input: &[u8]) -> Option<ImageFormat> {
    match image::guess_format(input).ok()? {
        f @ (ImageFormat::Jpeg | ImageFormat::Png | ImageFormat::WebP | ImageFormat::Gif) => Some(f),
        _ => None,
    }
}

/// The size that fits inside the box keeping the aspect ratio (at least 1x1).
pub fn fit(width: u32, height: u32, options: &Options) -> (u32, u32) {
    let scale = f64::min(f64::from(options.width) / f64::from(width), f64::from(options.height) / f64::from(height));
    if scale >= 1.0 && !options.upscale {
        return (width, height);
    }
    let w = (f64::from(width) * scale).round().max(1.0) as u32;
    let h = (f64::from(height) * scale).round().max(1.0) as u32;
    (w.min(options.width), h.min(options.height))
}

/// Brings exotic pixel layouts (16-bit, float) to 8 bits per channel, which every encoder takes.
fn normalise(image: DynamicImage) -> DynamicImage {
    match image {
        DynamicImage::ImageLuma8(_)
        | DynamicImage::ImageLumaA8(_)
        | DynamicImage::ImageRgb8(_)
        | DynamicImage::ImageRgba8(_) => image,
        other if other.color().has_alpha() => DynamicImage::ImageRgba8(other.to_rgba8()),
        other => DynamicImage::ImageRgb8(other.to_rgb8()),
    }
}

/// Encodes pixels only (no metadata) in `format`; `Same` means PNG here.
pub fn encode(image: DynamicImage, format: OutputFormat, quality: u8) -> Result<Encoded, Error> {
    let mut bytes = Vec::new();
    let image = normalise(image);
    let (result, media_type) = match format {
        OutputFormat::Jpeg => {
            // JPEG has no alpha channel; `jpeg::encode` drops it.
            jpeg::encode(&image, quality, &mut bytes)?;
            (Ok(()), "image/jpeg")
        }
        OutputFormat::Webp => {
            let encoder = image::codecs::webp::WebPEncoder::new_lossless(&mut bytes);
            (image.write_with_encoder(encoder), "image/webp")
        }
        OutputFormat::Png | OutputFormat::Same => {
            let encoder = image::codecs::png::PngEncoder::new(&mut bytes);
            (image.write_with_encoder(encoder), "image/png")
        }
    };
    result.map_err(|e| Error::Internal(format!("encoding failed: {e}")))?;
    Ok(Encoded { bytes, media_type })
}

/// Decoder errors are about the input, except a format feature the decoder lacks.
fn image_error(e: image::ImageError) -> Error {
    match e {
        image::ImageError::Unsupported(e) => Error::Unsupported(e.to_string()),
        image::ImageError::Limits(e) => Error::BadInput(format!("image too large: {e}")),
        e => Error::BadInput(format!("cannot decode image: {e}")),
    }
}
