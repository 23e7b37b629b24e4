//! pixbox-kit: write a pixbox image plugin as one function from image to image.
//!
//! ```ignore
//! use pixbox_kit::{DynamicImage, Error, Info, Options, Plugin};
//!
//! struct Brighten;
//!
//! impl Plugin for Brighten {
//!     fn info() -> Info {
//!         Info::new("brighten", env!("CARGO_PKG_VERSION"), "Makes images brighter or darker.")
//!             .option("amount", "How much to add to every channel, -255..=255.", "30")
//!     }
//!
//!     fn transform(mut image: DynamicImage, options: &Options) -> Result<DynamicImage, Error> {
//!         let amount = options.get_in("amount", -255..=255)?;
//!         pixbox_kit::image::imageops::colorops::brighten_in_place(&mut image, amount);
//!         Ok(image)
//!     }
//! }
//!
//! pixbox_kit::plugin!(Brighten);
//! ```
//!
//! The kit does the rest of the contract (`pixbox:transform@0.2.0`): it refuses option names the
//! plugin did not declare, decodes the input once (the same decode layer as pixbox's own plugins:
//! size checked from the header before any pixel buffer exists, damaged data refused, EXIF
//! orientation applied, ICC profiles converted to sRGB), calls `transform` once per rendition,
//! and encodes each result like the input (or as the `format` option says), mapping every failure
//! to the error case the host expects. [`testing`] runs the same path natively, without wasm.

pub mod animation;
mod codec;
mod colour;
pub mod container;
mod decode;
mod error;
mod jpeg;
mod options;
mod png;
pub mod testing;

pub use codec::{DEFAULT_MAX_ANIMATION_PIXELS, DEFAULT_MAX_FRAMES, Encoded, Format, PixelLimits, eight_bit, encode};
pub use colour::{cicp_to_srgb, to_srgb};
pub use decode::{decode, decode_at_least};
pub use error::Error;
pub use image::{self, DynamicImage};
pub use options::{Info, OptionSpec, Options, STANDARD_OPTIONS};

/// The generated bindings of `wit/transform.wit`, for plugins that implement the contract by hand
/// (several renditions from one decode, placeholders): `impl bindings::Guest` and
/// `pixbox_kit::bindings::export!(MyPlugin with_types_in pixbox_kit::bindings)`.
// The generated glue is unsafe FFI (the kit's own code has none).
#[allow(unsafe_code)]
pub mod bindings;

/// A plugin made of one image-to-image function.
pub trait Plugin {
    /// Name, version, description and the plugin's own options (the kit adds
    /// [`STANDARD_OPTIONS`]). Called by `pixbox plugin info` and when a route is loaded.
    fn info() -> Info;

    /// Makes one rendition. `image` is decoded, in display orientation (EXIF applied), in sRGB and
    /// 8 bits per channel; `options` holds this rendition's options, already checked against
    /// [`Plugin::info`]. Called once per rendition the route asks for.
    fn transform(image: DynamicImage, options: &Options) -> Result<DynamicImage, Error>;

    /// Decodes the input once for every rendition: the kit's decode layer ([`decode`]). A plugin
    /// that carries a decoder of its own (pixbox's thumbnail plugin, for HEIC) overrides this and
    /// hands every other format to [`decode`].
    fn decode(input: &[u8], limits: PixelLimits) -> Result<(DynamicImage, Format), Error> {
        decode(input, limits)
    }
}

/// Exports a [`Plugin`] as the component's `info` and `transform`.
#[macro_export]
macro_rules! plugin {
    ($plugin:ty) => {
        // The exports wit-bindgen generates are unsafe FFI glue.
        #[allow(unsafe_code)]
        const _: () = {
            struct Exported;
            impl $crate::bindings::Guest for Exported {
                fn info() -> $crate::bindings::PluginInfo {
                    <$plugin as $crate::Plugin>::info().into()
                }
                fn transform(
                    input: $crate::bindings::Image,
                    requests: ::std::vec::Vec<$crate::bindings::RenditionRequest>,
                ) -> ::std::result::Result<$crate::bindings::Transformed, $crate::bindings::TransformError> {
                    $crate::run::<$plugin>(input, requests)
                }
            }
    $crate::bindings::export!(Exported with_types_in $crate::bindings);
        };
    };
}

/// The whole `transform` call of a [`Plugin`]: every request's options checked first (a bad one
/// fails the call before any decoding), one decode, then `P::transform` and an encode per
/// request. Public for [`plugin!`]; plugins call [`testing::run`] instead.
#[doc(hidden)]
pub fn run<P: Plugin>(
    input: bindings::Image,
    requests: Vec<bindings::RenditionRequest>,
) -> Result<bindings::Transformed, bindings::TransformError> {
    let requests: Vec<Vec<(String, String)>> =
        requests.into_iter().map(|r| r.options.into_iter().map(|p| (p.name, p.value)).collect()).collect();
    let out = render::<P>(&input.bytes, &requests)?;
    let renditions = out.into_iter().map(|e| bindings::Image { bytes: e.bytes, media_type: e.media_type.into() });
    Ok(bindings::Transformed { renditions: renditions.collect(), placeholder: None })
}

/// [`run`] without the WIT types: encoded outputs, one per request.
pub(crate) fn render<P: Plugin>(input: &[u8], requests: &[Vec<(String, String)>]) -> Result<Vec<Encoded>, Error> {
    let info = P::info();
    let options = requests.iter().map(|pairs| Options::parse(&info, pairs)).collect::<Result<Vec<_>, _>>()?;
    // One decode for every rendition, under the strictest limits any of them sets.
    let limits = options.iter().map(Options::pixel_limits).reduce(|a, b| a.min(b)).unwrap_or_default();
    if info.frames
        && options.iter().map(Options::keeps_animation).any(|keep| keep.unwrap_or(false))
        && let Some(frames) = animation::open(input, limits)?
    {
        return render_animation::<P>(frames, &options);
    }
    let (image, format) = P::decode(input, limits)?;
    let mut image = Some(image);
    let mut out = Vec::with_capacity(options.len());
    for (i, options) in options.iter().enumerate() {
        // The last rendition takes the decoded image; only the others pay for a copy.
        let this = if i + 1 == requests.len() { image.take() } else { image.clone() };
        let result = P::transform(this.expect("one image per rendition"), options)?;
        out.push(encode(result, options.output_format(format)?, options.quality()?)?);
    }
    Ok(out)
}

/// [`render`] for an animation and a plugin that asked for frames: each frame goes through
/// `P::transform` once per rendition and is appended to that rendition's animation at once, so
/// memory holds one frame and the outputs so far. A rendition with `animation = first-frame` or a
/// format without animation (JPEG, PNG) gets the first frame as a still.
fn render_animation<P: Plugin>(frames: animation::Animation<'_>, options: &[Options]) -> Result<Vec<Encoded>, Error> {
    enum Out {
        Webp(animation::WebpAnimation),
        Gif(animation::GifAnimation),
        Still(Option<Encoded>),
    }
    let (format, loops) = (frames.format, frames.scan.loops);
    let mut outs = Vec::with_capacity(options.len());
    for o in options {
        outs.push(match (o.keeps_animation()?, o.animation_format(format)?) {
            (true, Some(Format::Gif)) => Out::Gif(animation::GifAnimation::new(loops)),
            (true, Some(_)) => Out::Webp(animation::WebpAnimation::new(loops)),
            _ => Out::Still(None),
        });
    }
    for frame in frames {
        let frame = frame?;
        let image = DynamicImage::ImageRgba8(frame.image);
        for (out, o) in outs.iter_mut().zip(options) {
            match out {
                Out::Webp(webp) => {
                    let made = encode(P::transform(image.clone(), o)?, Format::Webp, o.quality()?)?;
                    webp.push(&made.bytes, frame.delay_ms)?;
                }
                Out::Gif(gif) => gif.push(&P::transform(image.clone(), o)?, frame.delay_ms)?,
                Out::Still(still @ None) => {
                    let made = P::transform(image.clone(), o)?;
                    *still = Some(encode(made, o.output_format(format)?, o.quality()?)?);
                }
                Out::Still(Some(_)) => {}
            }
        }
    }
    outs.into_iter()
        .map(|out| match out {
            Out::Webp(webp) => Ok(Encoded { bytes: webp.finish()?, media_type: Format::Webp.media_type() }),
            Out::Gif(gif) => Ok(Encoded { bytes: gif.finish()?, media_type: Format::Gif.media_type() }),
            Out::Still(still) => still.ok_or_else(|| Error::BadInput("the animation has no frame".into())),
        })
        .collect()
}

/// Writes a message to the host's log, tagged with the plugin's name (`pixbox transform` shows
/// every level; a server shows what its log filter lets through). Outside wasm (tests), it goes
/// to stderr.
pub fn log(level: Level, message: &str) {
    #[cfg(target_arch = "wasm32")]
    bindings::pixbox::transform::log::log(level.into(), message);
    #[cfg(not(target_arch = "wasm32"))]
    eprintln!("[{level:?}] {message}");
}

/// The starts of a `log` message at level `error` by which a plugin that is about to trap says
/// how the call failed: the host then reports it as `bad-input` or `unsupported` with the rest of
/// the message as the reason, not as a crash (see `log` in the contract).
pub const BAD_INPUT_PREFIX: &str = "bad-input: ";
pub const UNSUPPORTED_PREFIX: &str = "unsupported: ";

/// Ends the call with `error`, from code that cannot return one: a C library's fatal error handler
/// (libjpeg's `error_exit` must not return, and the guest has no setjmp). For `BadInput` and
/// `Unsupported` it tells the host so in a log message ([`BAD_INPUT_PREFIX`]), then traps; an
/// `Internal` error traps with its message, a crash pixbox may retry. The instance ends with the
/// call anyway, so nothing of the failed work outlives it.
pub fn end_call(error: &Error) -> ! {
    match error {
        Error::BadInput(reason) => log(Level::Error, &format!("{BAD_INPUT_PREFIX}{reason}")),
        Error::Unsupported(reason) => log(Level::Error, &format!("{UNSUPPORTED_PREFIX}{reason}")),
        Error::Internal(reason) => log(Level::Error, reason),
    }
    std::process::abort()
}

/// How important a [`log`] message is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Trace,
    Debug,
    Info,
    Warn,
    Error,
}

impl From<Level> for bindings::pixbox::transform::log::Level {
    fn from(level: Level) -> Self {
        use bindings::pixbox::transform::log::Level as L;
        match level {
            Level::Trace => L::Trace,
            Level::Debug => L::Debug,
            Level::Info => L::Info,
            Level::Warn => L::Warn,
            Level::Error => L::Error,
        }
    }
}
