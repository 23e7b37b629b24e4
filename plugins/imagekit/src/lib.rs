//! Image logic shared by the sample plugins: fit, crop, placeholders, encode. Decoding is the
//! kit's (`pixbox_kit::decode_at_least`), the same layer every plugin built with the kit uses.
//!
//! No WebAssembly glue of its own, so the same code runs natively (the benchmark compares it with
//! the sandboxed plugin) and inside the `resize` and `thumbnail` components.

mod formats;
pub mod heif;
mod jpeg;
mod smart;
mod ycbcr;

pub use smart::focus as smart_focus;

use fast_image_resize as fr;
use image::{DynamicImage, ImageFormat};
pub use pixbox_kit::Error;
use pixbox_kit::PixelLimits;

/// The output format: keep the input's, or pick one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputFormat {
    Same,
    Jpeg,
    Png,
    /// Lossy WebP (VP8) at `quality`.
    Webp,
    WebpLossless,
    Avif,
    /// GIF, 256 colours per frame: for animations.
    Gif,
}

/// How an image is brought to the box.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Inside the box, aspect ratio kept (the output may be smaller than the box on one side).
    Fit,
    /// Fill the box, aspect ratio kept, the overflow cut off at `gravity`.
    Cover,
    /// Fit inside the box, then centre (or place at `gravity`) on a box-sized canvas of `background`.
    Pad,
    /// Cut a box-sized region at `gravity` without resizing.
    Crop,
}

/// Where `cover` and `crop` keep the image, and where `pad` places it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Gravity {
    /// A point of the image, as fractions of its width and height (0,0 top left; 0.5,0.5 centre).
    Point(f64, f64),
    /// Chosen from the image's content (see `smart`); the centre for `pad`.
    Smart,
}

impl Gravity {
    pub const CENTRE: Gravity = Gravity::Point(0.5, 0.5);

    fn parse(value: &str) -> Result<Gravity, Error> {
        let named = match value.to_ascii_lowercase().as_str() {
            "centre" | "center" => Some((0.5, 0.5)),
            "north" | "top" => Some((0.5, 0.0)),
            "south" | "bottom" => Some((0.5, 1.0)),
            "west" | "left" => Some((0.0, 0.5)),
            "east" | "right" => Some((1.0, 0.5)),
            "north-west" | "top-left" => Some((0.0, 0.0)),
            "north-east" | "top-right" => Some((1.0, 0.0)),
            "south-west" | "bottom-left" => Some((0.0, 1.0)),
            "south-east" | "bottom-right" => Some((1.0, 1.0)),
            _ => None,
        };
        if let Some((x, y)) = named {
            return Ok(Gravity::Point(x, y));
        }
        if value.eq_ignore_ascii_case("smart") {
            return Ok(Gravity::Smart);
        }
        let point = value
            .split_once(',')
            .and_then(|(x, y)| Some((x.trim().parse::<f64>().ok()?, y.trim().parse::<f64>().ok()?)));
        match point {
            Some((x, y)) if (0.0..=1.0).contains(&x) && (0.0..=1.0).contains(&y) => Ok(Gravity::Point(x, y)),
            _ => Err(Error::Unsupported(format!(
                "option gravity must be centre, north, south, east, west, north-east, north-west, \
                 south-east, south-west, smart or a focal point x,y with 0..1 fractions, got {value:?}"
            ))),
        }
    }
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
    pub mode: Mode,
    pub gravity: Gravity,
    /// RGBA.
    pub background: [u8; 4],
    /// Keep every frame of an animated GIF or WebP (else: the first frame).
    pub animation: bool,
    pub max_frames: u32,
    pub max_animation_pixels: u64,
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
            max_side: 65_535,
            mode: Mode::Fit,
            gravity: Gravity::CENTRE,
            background: [255, 255, 255, 255],
            animation: true,
            max_frames: pixbox_kit::DEFAULT_MAX_FRAMES,
            max_animation_pixels: pixbox_kit::DEFAULT_MAX_ANIMATION_PIXELS,
        }
    }
}

/// (name, description, default) of every option, the single source for `info()` and parsing.
pub const PARAMS: &[(&str, &str, &str)] = &[
    ("width", "Width of the box the image must fit in, in pixels (1..=10000).", "1024"),
    ("height", "Height of the box the image must fit in, in pixels (1..=10000).", "1024"),
    (
        "format",
        "Output format: same, jpeg, png, webp (lossy), webp-lossless, avif or gif. `same` keeps the input \
         format (a still GIF becomes PNG, an animated one an animated WebP, JPEG XL becomes JPEG; WebP \
         is written lossy). \
         Animations stay animated in webp, webp-lossless and gif (and avif, written as animated WebP); \
         jpeg and png get the first frame.",
        "same",
    ),
    ("quality", "Quality of lossy outputs (JPEG, WebP, AVIF), 1..=100, on each format's own scale.", "85"),
    ("upscale", "Enlarge images smaller than the box: true or false.", "false"),
    ("max-pixels", "Refuse inputs with more pixels than this (width x height) before decoding them.", "40000000"),
    ("max-side", "Refuse inputs wider or taller than this many pixels.", "65535"),
    (
        "mode",
        "How the image meets the box: fit (inside it), cover (fill it, the overflow cut at gravity), \
         pad (fit, then fill the rest of the box with background) or crop (cut a box-sized region at \
         gravity, no resizing).",
        "fit",
    ),
    (
        "gravity",
        "Where cover and crop keep the image and where pad places it: centre, north, south, east, west, \
         north-east, north-west, south-east, south-west, smart (chosen from the content: detail, colour, \
         skin; cover and crop only), or a focal point x,y (fractions 0..1 of the width and height, e.g. 0.3,0.25).",
        "centre",
    ),
    ("background", "The colour pad fills with, as rrggbb or rrggbbaa hex (alpha needs PNG or WebP).", "ffffff"),
    (
        "animation",
        "What an animated GIF or WebP becomes: keep (every frame resized, delays and loop count kept; \
         smart gravity uses the centre) or first-frame (a still).",
        "keep",
    ),
    ("max-frames", "Refuse animations with more frames than this, before decoding them.", "1000"),
    (
        "max-animation-pixels",
        "Refuse animations with more pixels than this over all frames (canvas x frames), before decoding them.",
        "50000000",
    ),
];

impl Options {
    /// The decode limits these options set.
    pub fn limits(&self) -> PixelLimits {
        PixelLimits {
            max_pixels: self.max_pixels,
            max_side: self.max_side,
            max_frames: self.max_frames,
            max_animation_pixels: self.max_animation_pixels,
        }
    }

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
                        "webp-lossless" => OutputFormat::WebpLossless,
                        "avif" => OutputFormat::Avif,
                        "gif" => OutputFormat::Gif,
                        _ => {
                            return Err(Error::Unsupported(format!(
                                "option format must be same, jpeg, png, webp, webp-lossless, avif or gif, got {value:?}"
                            )));
                        }
                    }
                }
                "mode" => {
                    o.mode = match value.to_ascii_lowercase().as_str() {
                        "fit" => Mode::Fit,
                        "cover" => Mode::Cover,
                        "pad" => Mode::Pad,
                        "crop" => Mode::Crop,
                        _ => {
                            return Err(Error::Unsupported(format!(
                                "option mode must be fit, cover, pad or crop, got {value:?}"
                            )));
                        }
                    }
                }
                "gravity" => o.gravity = Gravity::parse(value)?,
                "max-frames" => o.max_frames = parse_in(name, value, 1..=u32::MAX)?,
                "max-animation-pixels" => o.max_animation_pixels = parse_in(name, value, 1..=u64::MAX)?,
                "animation" => {
                    o.animation = match value.to_ascii_lowercase().as_str() {
                        "keep" => true,
                        "first-frame" => false,
                        _ => {
                            return Err(Error::Unsupported(format!(
                                "option animation must be keep or first-frame, got {value:?}"
                            )));
                        }
                    }
                }
                "background" => o.background = parse_colour(value)?,
                _ => return Err(Error::Unsupported(format!("unknown option {name:?}"))),
            }
        }
        Ok(o)
    }
}

/// `rrggbb` or `rrggbbaa` (a leading `#` is allowed).
fn parse_colour(value: &str) -> Result<[u8; 4], Error> {
    let hex = value.trim().trim_start_matches('#');
    let byte = |i: usize| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok();
    let colour = match hex.len() {
        6 => (|| Some([byte(0)?, byte(2)?, byte(4)?, 255]))(),
        8 => (|| Some([byte(0)?, byte(2)?, byte(4)?, byte(6)?]))(),
        _ => None,
    };
    colour.ok_or_else(|| Error::Unsupported(format!("option background must be rrggbb or rrggbbaa hex, got {value:?}")))
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
    let mut out = renditions(input, std::slice::from_ref(options))?;
    Ok(out.pop().expect("one rendition per request"))
}

/// [`resize`] for several boxes from one decode: the image is decoded (shrunk while decoding,
/// for JPEG) once, at the largest size any of them needs, then each is resized from it. The
/// decode limits are the strictest of the requests'.
pub fn renditions(input: &[u8], requests: &[Options]) -> Result<Vec<Encoded>, Error> {
    Ok(renditions_with_placeholder(input, requests, false)?.0)
}

/// [`renditions`], and with `placeholder` also the [`Placeholder`] of the decoded image.
pub fn renditions_with_placeholder(
    input: &[u8],
    requests: &[Options],
    placeholder: bool,
) -> Result<(Vec<Encoded>, Option<Placeholder>), Error> {
    let Some(first) = requests.first() else { return Ok((Vec::new(), None)) };
    let limits = Options {
        max_pixels: requests.iter().map(|o| o.max_pixels).min().unwrap_or(first.max_pixels),
        max_side: requests.iter().map(|o| o.max_side).min().unwrap_or(first.max_side),
        max_frames: requests.iter().map(|o| o.max_frames).min().unwrap_or(first.max_frames),
        max_animation_pixels: requests
            .iter()
            .map(|o| o.max_animation_pixels)
            .min()
            .unwrap_or(first.max_animation_pixels),
        ..first.clone()
    };
    if requests.iter().any(|o| o.animation)
        && let Some(frames) = pixbox_kit::animation::open(input, limits.limits())?
    {
        return animated_renditions(input, frames, requests, placeholder);
    }
    let image = decode_at_least(input, &limits, |w, h| {
        requests.iter().map(|o| needed(w, h, o)).fold((1, 1), |(a, b), (c, d)| (a.max(c), b.max(d)))
    })?;
    let encoded = cascade(input, &image, requests)?;
    let placeholder = if placeholder { Some(self::placeholder(&image)?) } else { None };
    Ok((encoded, placeholder))
}

/// Makes every rendition of one decoded image, the largest first: a `fit` rendition is resized
/// from the smallest `fit` rendition already made (before its encoding) that is still at least
/// twice its size on both sides, not from the decode. A page's 256-pixel image resized from its
/// 1024-pixel one reads a sixteenth of the pixels of a 12 MP decode, and two Lanczos3 passes with
/// a factor of 2 or more each lose nothing visible (`a_cascade_of_fits_looks_like_direct_fits`).
/// Other modes crop or pad around `gravity`, so they are made from the decode.
fn cascade(input: &[u8], image: &DynamicImage, requests: &[Options]) -> Result<Vec<Encoded>, Error> {
    let mut order: Vec<usize> = (0..requests.len()).collect();
    let area = |o: &Options| {
        let (w, h) = needed(image.width(), image.height(), o);
        u64::from(w) * u64::from(h)
    };
    order.sort_by_key(|&i| std::cmp::Reverse(area(&requests[i])));
    let mut made: Vec<Option<Encoded>> = requests.iter().map(|_| None).collect();
    let mut fitted: Vec<DynamicImage> = Vec::new();
    for i in order {
        let options = &requests[i];
        let out = if options.mode == Mode::Fit {
            let (w, h) = fit(image.width(), image.height(), options);
            let source = cascade_source(&fitted, w, h).unwrap_or(image);
            // The size the decode gives, whatever the source: the same as without the cascade.
            let whole = (0.0, 0.0, f64::from(source.width()), f64::from(source.height()));
            let out = resize_region(source, whole, w, h)?;
            fitted.push(out.clone());
            out
        } else {
            fit_image(image, options)?
        };
        made[i] = Some(encode(out, output_format(input, options.format), options.quality)?);
    }
    Ok(made.into_iter().map(|e| e.expect("every rendition made")).collect())
}

/// The smallest of the `fit` renditions made so far that is at least twice `width` x `height`.
fn cascade_source(fitted: &[DynamicImage], width: u32, height: u32) -> Option<&DynamicImage> {
    fitted.iter().filter(|f| f.width() >= 2 * width && f.height() >= 2 * height).min_by_key(|f| f.width())
}

/// [`renditions_with_placeholder`] for an animation: frames are decoded one at a time and each is
/// resized for every rendition and appended to its animation at once, so memory follows one frame.
/// Renditions in JPEG or PNG, or with `animation = first-frame`, get the first frame; so does the
/// placeholder.
fn animated_renditions(
    input: &[u8],
    frames: pixbox_kit::animation::Animation<'_>,
    requests: &[Options],
    want_placeholder: bool,
) -> Result<(Vec<Encoded>, Option<Placeholder>), Error> {
    use pixbox_kit::animation::{GifAnimation, WebpAnimation};
    enum Out {
        Webp(WebpAnimation, bool),
        Gif(GifAnimation),
        Still(Option<Encoded>),
    }
    let loops = frames.scan.loops;
    let mut outs: Vec<Out> = requests
        .iter()
        .map(|o| match (o.animation, animation_format(o.format)) {
            (true, Some(OutputFormat::Gif)) => Out::Gif(GifAnimation::new(loops)),
            (true, Some(format)) => Out::Webp(WebpAnimation::new(loops), format == OutputFormat::WebpLossless),
            _ => Out::Still(None),
        })
        .collect();
    // Smart gravity would follow the content from frame to frame and make the picture jump.
    let steady: Vec<Options> = requests
        .iter()
        .map(|o| match o.gravity {
            Gravity::Smart => Options { gravity: Gravity::CENTRE, ..o.clone() },
            _ => o.clone(),
        })
        .collect();
    let mut placeholder = None;
    for frame in frames {
        let frame = frame?;
        let image = DynamicImage::ImageRgba8(frame.image);
        if want_placeholder && placeholder.is_none() {
            placeholder = Some(self::placeholder(&image)?);
        }
        for (out, options) in outs.iter_mut().zip(&steady) {
            match out {
                Out::Webp(webp, lossless) => {
                    let format = if *lossless { OutputFormat::WebpLossless } else { OutputFormat::Webp };
                    let still = encode(fit_image(&image, options)?, format, options.quality)?;
                    webp.push(&still.bytes, frame.delay_ms)?;
                }
                Out::Gif(gif) => gif.push(&fit_image(&image, options)?, frame.delay_ms)?,
                Out::Still(still @ None) => *still = Some(fit_and_encode(input, &image, options)?),
                Out::Still(Some(_)) => {}
            }
        }
    }
    let encoded = outs
        .into_iter()
        .map(|out| match out {
            Out::Webp(webp, _) => Ok(Encoded { bytes: webp.finish()?, media_type: "image/webp" }),
            Out::Gif(gif) => Ok(Encoded { bytes: gif.finish()?, media_type: "image/gif" }),
            Out::Still(still) => still.ok_or_else(|| Error::BadInput("the animation has no frame".into())),
        })
        .collect::<Result<_, Error>>()?;
    Ok((encoded, placeholder))
}

/// The format an animation is written in for `format`: `same` is lossy WebP (from GIF or WebP),
/// and so is AVIF, whose encoder here writes stills (with `format = "auto"`, a browser that takes
/// AVIF would otherwise get a still); `None` for JPEG and PNG, which get the first frame.
fn animation_format(format: OutputFormat) -> Option<OutputFormat> {
    match format {
        OutputFormat::Same | OutputFormat::Webp | OutputFormat::Avif => Some(OutputFormat::Webp),
        OutputFormat::WebpLossless | OutputFormat::Gif => Some(format),
        OutputFormat::Jpeg | OutputFormat::Png => None,
    }
}

/// A stand-in for the image while it loads: its average colour and a ThumbHash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placeholder {
    /// sRGB.
    pub dominant_color: (u8, u8, u8),
    /// https://evanw.github.io/thumbhash/ (at most 25 bytes).
    pub thumbhash: Vec<u8>,
}

/// ThumbHash takes at most 100x100 pixels.
const THUMBHASH_SIDE: u32 = 100;

/// The placeholder of a decoded image: a ThumbHash of it shrunk to fit 100x100, and the average
/// colour the hash encodes (weighted by alpha, as ThumbHash does).
pub fn placeholder(image: &DynamicImage) -> Result<Placeholder, Error> {
    let limits = Options { width: THUMBHASH_SIDE, height: THUMBHASH_SIDE, ..Options::default() };
    let (w, h) = fit(image.width(), image.height(), &limits);
    // Shrink first, convert after: the full-size image is never copied. A ThumbHash is a blur of
    // the image, so a cheap shrink does (nearest to 4x the size, then a box filter): a Lanczos
    // pass over the whole decoded image cost 40-50 % of a 12 MP resize natively.
    let small = shrink_cheaply(image, w, h)?;
    let hash = thumbhash::rgba_to_thumb_hash(w as usize, h as usize, small.to_rgba8().as_raw());
    let (r, g, b, _) = thumbhash::thumb_hash_to_average_rgba(&hash)
        .map_err(|()| Error::Internal("the ThumbHash just made does not decode".into()))?;
    let byte = |v: f32| (v.clamp(0.0, 1.0) * 255.0).round() as u8;
    Ok(Placeholder { dominant_color: (byte(r), byte(g), byte(b)), thumbhash: hash })
}

/// `image` at `width` x `height` by the cheapest shrink that still averages every pixel: nearest
/// to 4x the size, then a box filter. For analyses (placeholders, smart crops), not for outputs.
fn shrink_cheaply(image: &DynamicImage, width: u32, height: u32) -> Result<DynamicImage, Error> {
    let mut small = DynamicImage::new(width, height, image.color());
    fr::Resizer::new()
        .resize(
            image,
            &mut small,
            &fr::ResizeOptions::new().resize_alg(fr::ResizeAlg::SuperSampling(fr::FilterType::Box, 4)),
        )
        .map_err(|e| Error::Internal(format!("resize failed: {e}")))?;
    Ok(small)
}

/// The smallest decoded size (of a `width` x `height` image) that `options` can be made from.
fn needed(width: u32, height: u32, options: &Options) -> (u32, u32) {
    match options.mode {
        Mode::Fit | Mode::Pad => fit(width, height, options),
        Mode::Cover => {
            let scale = cover_scale(width, height, options);
            let w = (f64::from(width) * scale).ceil() as u32;
            let h = (f64::from(height) * scale).ceil() as u32;
            (w.clamp(1, width), h.clamp(1, height))
        }
        Mode::Crop => (width, height),
    }
}

/// The scale at which the image fills the box (never above 1 without `upscale`).
fn cover_scale(width: u32, height: u32, options: &Options) -> f64 {
    let scale = f64::max(f64::from(options.width) / f64::from(width), f64::from(options.height) / f64::from(height));
    if scale > 1.0 && !options.upscale { 1.0 } else { scale }
}

/// Brings an already decoded (and oriented) image to `options`' box in its mode and encodes it.
fn fit_and_encode(input: &[u8], image: &DynamicImage, options: &Options) -> Result<Encoded, Error> {
    encode(fit_image(image, options)?, output_format(input, options.format), options.quality)
}

/// Brings an already decoded (and oriented) image to `options`' box in its mode.
fn fit_image(image: &DynamicImage, options: &Options) -> Result<DynamicImage, Error> {
    Ok(match options.mode {
        Mode::Fit => {
            let (width, height) = fit(image.width(), image.height(), options);
            resize_region(image, (0.0, 0.0, f64::from(image.width()), f64::from(image.height())), width, height)?
        }
        Mode::Cover => {
            let (w, h) = (image.width(), image.height());
            // The output: the box, or (without upscale) the box's shape at the image's scale.
            let scale = f64::max(f64::from(options.width) / f64::from(w), f64::from(options.height) / f64::from(h));
            let shrink = if scale > 1.0 && !options.upscale { scale } else { 1.0 };
            let out_w = ((f64::from(options.width) / shrink).round() as u32).clamp(1, options.width);
            let out_h = ((f64::from(options.height) / shrink).round() as u32).clamp(1, options.height);
            // The largest window of the output's shape, placed at the gravity.
            let k = f64::min(f64::from(w) / f64::from(out_w), f64::from(h) / f64::from(out_h));
            let (cw, ch) = (f64::from(out_w) * k, f64::from(out_h) * k);
            let (gx, gy) = gravity_point(image, options.gravity, cw, ch)?;
            let left = window_start(gx, f64::from(w), cw);
            let top = window_start(gy, f64::from(h), ch);
            resize_region(image, (left, top, cw, ch), out_w, out_h)?
        }
        Mode::Crop => {
            let (cw, ch) = (options.width.min(image.width()), options.height.min(image.height()));
            let (gx, gy) = gravity_point(image, options.gravity, f64::from(cw), f64::from(ch))?;
            let left = window_start(gx, f64::from(image.width()), f64::from(cw)).round() as u32;
            let top = window_start(gy, f64::from(image.height()), f64::from(ch)).round() as u32;
            image.crop_imm(left.min(image.width() - cw), top.min(image.height() - ch), cw, ch)
        }
        Mode::Pad => {
            let (width, height) = fit(image.width(), image.height(), options);
            let fitted =
                resize_region(image, (0.0, 0.0, f64::from(image.width()), f64::from(image.height())), width, height)?;
            let bg = image::Rgba(options.background);
            let mut canvas = image::RgbaImage::from_pixel(options.width, options.height, bg);
            // Smart gravity looks for what to keep; padding keeps everything, so: the centre.
            let (gx, gy) = match options.gravity {
                Gravity::Point(x, y) => (x, y),
                Gravity::Smart => (0.5, 0.5),
            };
            let x = (f64::from(options.width - width) * gx).round() as i64;
            let y = (f64::from(options.height - height) * gy).round() as i64;
            image::imageops::overlay(&mut canvas, &fitted.to_rgba8(), x, y);
            if options.background[3] == 255 && !image.color().has_alpha() {
                DynamicImage::ImageRgb8(DynamicImage::ImageRgba8(canvas).to_rgb8())
            } else {
                DynamicImage::ImageRgba8(canvas)
            }
        }
    })
}

/// The point a `window_w` x `window_h` window of `image` is centred on.
fn gravity_point(image: &DynamicImage, gravity: Gravity, window_w: f64, window_h: f64) -> Result<(f64, f64), Error> {
    match gravity {
        Gravity::Point(x, y) => Ok((x, y)),
        Gravity::Smart => smart::focus(image, window_w, window_h),
    }
}

/// Where a `part`-long window centred on the fraction `at` of a `whole`-long side starts, kept
/// inside the side.
fn window_start(at: f64, whole: f64, part: f64) -> f64 {
    (at * whole - part / 2.0).clamp(0.0, (whole - part).max(0.0))
}

/// Resizes the region (left, top, width, height) of `image` to `width` x `height` (Lanczos3);
/// the whole image at its own size is returned as is.
fn resize_region(
    image: &DynamicImage,
    region: (f64, f64, f64, f64),
    width: u32,
    height: u32,
) -> Result<DynamicImage, Error> {
    let whole = region == (0.0, 0.0, f64::from(image.width()), f64::from(image.height()));
    if whole && (width, height) == (image.width(), image.height()) {
        return Ok(image.clone());
    }
    let mut dst = DynamicImage::new(width, height, image.color());
    let (left, top, w, h) = region;
    fr::Resizer::new()
        .resize(
            image,
            &mut dst,
            &fr::ResizeOptions::new()
                .resize_alg(fr::ResizeAlg::Convolution(fr::FilterType::Lanczos3))
                .crop(left, top, w, h),
        )
        .map_err(|e| Error::Internal(format!("resize failed: {e}")))?;
    Ok(dst)
}

/// Resolves `Same` to the input's format; a GIF becomes PNG, a JPEG XL JPEG.
fn output_format(input: &[u8], format: OutputFormat) -> OutputFormat {
    match format {
        // JPEG XL and HEIC are read, not written: their photos are written as JPEG.
        OutputFormat::Same
            if matches!(pixbox_kit::Format::sniff(input), Some(pixbox_kit::Format::Jxl | pixbox_kit::Format::Heic)) =>
        {
            OutputFormat::Jpeg
        }
        OutputFormat::Same => match sniff(input) {
            Some(ImageFormat::Jpeg) => OutputFormat::Jpeg,
            Some(ImageFormat::WebP) if webp_is_lossless(input) => OutputFormat::WebpLossless,
            Some(ImageFormat::WebP) => OutputFormat::Webp,
            _ => OutputFormat::Png,
        },
        other => other,
    }
}

/// Whether a WebP file's image is lossless (a `VP8L` chunk rather than `VP8 `), so that `same`
/// keeps graphics and screenshots lossless instead of adding lossy artefacts to them.
fn webp_is_lossless(input: &[u8]) -> bool {
    let mut at = 12;
    while let Some(header) = input.get(at..at + 8) {
        match &header[..4] {
            b"VP8L" => return true,
            b"VP8 " => return false,
            _ => {}
        }
        let size = u32::from_le_bytes([header[4], header[5], header[6], header[7]]) as usize;
        // Checked: a size near the top of u32 would wrap on wasm32 and never move on.
        let Some(next) = size.checked_add(8 + (size & 1)).and_then(|step| at.checked_add(step)) else { break };
        at = next;
    }
    false
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
/// display orientation), under `options`' limits: the kit's decode layer.
pub fn decode_at_least(
    input: &[u8],
    options: &Options,
    need: impl Fn(u32, u32) -> (u32, u32),
) -> Result<DynamicImage, Error> {
    match pixbox_kit::Format::sniff(input) {
        Some(pixbox_kit::Format::Heic) => return heif::decode(input, options.limits()),
        #[cfg(feature = "libjpeg")]
        Some(pixbox_kit::Format::Jpeg) => {
            if let Some(image) = jpeg::decode(input, options.limits(), &need)? {
                return Ok(image);
            }
        }
        _ => {}
    }
    Ok(pixbox_kit::decode_at_least(input, options.limits(), need)?.0)
}

/// Decodes at full size, in display orientation, 8 bits per channel, in sRGB (the kit's decode).
pub fn decode(input: &[u8], options: &Options) -> Result<DynamicImage, Error> {
    decode_at_least(input, options, |w, h| (w, h))
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

/// Encodes pixels only (no metadata) in `format`; `Same` means PNG here.
pub fn encode(image: DynamicImage, format: OutputFormat, quality: u8) -> Result<Encoded, Error> {
    let mut bytes = Vec::new();
    let image = pixbox_kit::eight_bit(image);
    let (result, media_type) = match format {
        OutputFormat::Jpeg => {
            // JPEG has no alpha channel; `jpeg::encode` drops it.
            jpeg::encode(&image, quality, &mut bytes)?;
            (Ok(()), "image/jpeg")
        }
        OutputFormat::Webp => {
            formats::webp_lossy(&image, quality, &mut bytes)?;
            (Ok(()), "image/webp")
        }
        OutputFormat::WebpLossless => {
            let encoder = image::codecs::webp::WebPEncoder::new_lossless(&mut bytes);
            (image.write_with_encoder(encoder), "image/webp")
        }
        OutputFormat::Avif => {
            formats::avif(&image, quality, &mut bytes)?;
            (Ok(()), "image/avif")
        }
        OutputFormat::Gif => {
            let mut gif = pixbox_kit::animation::GifAnimation::new(Some(1));
            gif.push(&image, 0)?;
            bytes = gif.finish()?;
            (Ok(()), "image/gif")
        }
        OutputFormat::Png | OutputFormat::Same => {
            let encoder = image::codecs::png::PngEncoder::new(&mut bytes);
            (image.write_with_encoder(encoder), "image/png")
        }
    };
    result.map_err(|e| Error::Internal(format!("encoding failed: {e}")))?;
    Ok(Encoded { bytes, media_type })
}

#[cfg(test)]
mod tests {
    use pixbox_kit::Format;
    use pixbox_kit::container;
    use pixbox_kit::testing::animated_sample;

    use image::DynamicImage;

    use super::{Options, renditions};

    /// A 600-pixel and a 150-pixel fit made in one call (the 150 resized from the 600) look like
    /// the 150 made alone from the decode: same size, and more than 40 dB apart (PSNR over RGB)
    /// on a picture full of edges and texture, where a second resampling would show first.
    #[test]
    fn a_cascade_of_fits_looks_like_direct_fits() {
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let picture = image::RgbImage::from_fn(1200, 800, |x, y| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let noise = (state % 64) as u8;
            let stripes = if (x / 7 + y / 11) % 2 == 0 { 150 } else { 40 };
            image::Rgb([stripes + noise, (x % 256) as u8, (y % 256) as u8])
        });
        let mut png = Vec::new();
        picture.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png).unwrap();
        let fit = |side: &'static str| Options::parse([("width", side), ("height", side), ("format", "png")]).unwrap();
        let both = renditions(&png, &[fit("600"), fit("150")]).unwrap();
        let alone = renditions(&png, &[fit("150")]).unwrap();
        let decode = |bytes: &[u8]| image::load_from_memory(bytes).unwrap().to_rgb8();
        let (cascaded, direct) = (decode(&both[1].bytes), decode(&alone[0].bytes));
        assert_eq!(cascaded.dimensions(), (150, 100));
        assert_eq!(cascaded.dimensions(), direct.dimensions());
        let squared: f64 =
            cascaded.as_raw().iter().zip(direct.as_raw()).map(|(&a, &b)| (f64::from(a) - f64::from(b)).powi(2)).sum();
        let db = 10.0 * (255.0f64 * 255.0 / (squared / cascaded.as_raw().len() as f64)).log10();
        assert!(db > 40.0, "the cascaded 150 is {db:.1} dB from the direct one");
        eprintln!("150 px from the 600 px rendition vs from the decode: {db:.1} dB");
    }

    /// The cascade takes the smallest rendition made that is twice the size or more, else none.
    #[test]
    fn a_cascade_starts_from_the_smallest_rendition_twice_the_size() {
        let made = [DynamicImage::new_rgb8(2048, 1365), DynamicImage::new_rgb8(1024, 683)];
        assert_eq!(super::cascade_source(&made, 256, 171).map(|s| s.width()), Some(1024));
        assert_eq!(super::cascade_source(&made, 600, 400).map(|s| s.width()), Some(2048));
        assert_eq!(super::cascade_source(&made, 1100, 733).map(|s| s.width()), None);
        assert_eq!(super::cascade_source(&[], 10, 10).map(|s| s.width()), None);
    }

    #[test]
    fn an_animation_keeps_its_frames_in_every_animated_format_and_is_a_still_in_the_others() {
        let input = animated_sample(Format::Gif, 80, 60, 4);
        let options = |pairs: &[(&'static str, &'static str)]| {
            Options::parse([("width", "40"), ("height", "40")].into_iter().chain(pairs.iter().copied())).unwrap()
        };
        let requests = [
            options(&[]),
            options(&[("format", "webp-lossless")]),
            options(&[("format", "gif")]),
            options(&[("format", "jpeg")]),
            options(&[("animation", "first-frame")]),
            options(&[("mode", "cover"), ("gravity", "smart")]),
            options(&[("format", "avif")]),
        ];
        let out = renditions(&input, &requests).unwrap();
        let webp = |i: usize| container::webp(&out[i].bytes).unwrap();
        assert_eq!((webp(0).width, webp(0).height, webp(0).frames, webp(0).loops), (40, 30, 4, None));
        assert_eq!(webp(1).frames, 4);
        assert_eq!(container::gif(&out[2].bytes).unwrap().frames, 4);
        assert_eq!(out[3].media_type, "image/jpeg");
        assert_eq!(out[4].media_type, "image/png");
        assert_eq!((webp(5).width, webp(5).height, webp(5).frames), (40, 40, 4));
        assert_eq!((out[6].media_type, webp(6).frames), ("image/webp", 4));
    }

    #[test]
    fn an_animation_over_the_frame_limit_is_refused_before_decoding() {
        let input = animated_sample(Format::Webp, 20, 20, 3);
        let refused = renditions(&input, &[Options::parse([("max-frames", "2")]).unwrap()]).unwrap_err();
        assert!(refused.to_string().contains("3 frames"), "{refused}");
    }
}
