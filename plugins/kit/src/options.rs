//! What a plugin says about itself ([`Info`]) and the options of one rendition ([`Options`]),
//! checked against it: an option the plugin did not declare is refused, as the contract requires.

use std::fmt::Display;
use std::ops::RangeInclusive;
use std::str::FromStr;

use crate::bindings;
use crate::codec::{Format, PixelLimits};
use crate::error::Error;

/// One option a plugin accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OptionSpec {
    pub name: String,
    pub description: String,
    /// Used when a route does not set the option; `None` when leaving it out has its own meaning.
    pub default: Option<String>,
}

/// Options every kit plugin takes, handled by the kit: (name, description, default).
pub const STANDARD_OPTIONS: &[(&str, &str, &str)] = &[
    (
        "format",
        "Output format: same, jpeg, png, webp (lossless) or gif. `same` writes the input's format \
         (a still GIF as PNG, every colour kept; JPEG XL, which pixbox reads but does not write, as JPEG).",
        "same",
    ),
    ("quality", "JPEG quality, 1..=100.", "85"),
    (
        "max-pixels",
        "Refuse inputs with more pixels than this (width x height), checked from the header before \
         decoding. pixbox refuses larger uploads itself ([limits] max_pixels, same default).",
        "40000000",
    ),
    ("max-side", "Refuse inputs wider or taller than this many pixels ([limits] max_side, same default).", "65535"),
    (
        "max-frames",
        "Refuse animations with more frames than this, counted from the container before decoding \
         ([limits] max_frames, same default).",
        "1000",
    ),
    (
        "max-animation-pixels",
        "Refuse animations with more pixels than this over all frames (canvas x frames), before \
         decoding ([limits] max_animation_pixels, same default).",
        "50000000",
    ),
];

/// The option a plugin gets by asking for frames ([`Info::animated`]).
const ANIMATION_OPTION: (&str, &str, &str) = (
    "animation",
    "What an animated GIF or WebP becomes: keep (every frame made by the plugin, delays and loop \
     count kept, written as an animated WebP, or GIF with format = gif) or first-frame (a still).",
    "keep",
);

/// Name, version, description and options of a plugin: what `pixbox plugin info` prints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Info {
    pub name: String,
    pub version: String,
    pub description: String,
    /// The plugin's own options, then [`STANDARD_OPTIONS`] (those the plugin did not declare).
    pub options: Vec<OptionSpec>,
    /// Whether the plugin is given every frame of an animation ([`Info::animated`]).
    pub frames: bool,
}

impl Info {
    pub fn new(name: &str, version: &str, description: &str) -> Info {
        let standard = STANDARD_OPTIONS.iter().map(|(name, description, default)| OptionSpec {
            name: (*name).into(),
            description: (*description).into(),
            default: Some((*default).into()),
        });
        Info {
            name: name.into(),
            version: version.into(),
            description: description.into(),
            options: standard.collect(),
            frames: false,
        }
    }

    /// Asks for every frame of an animated GIF or WebP: `transform` is called once per frame (on
    /// the whole canvas, in order), and the results are written as an animation with the input's
    /// delays and loop count. Adds the option `animation` (keep, or first-frame for a still).
    /// Without it, a plugin is given the first frame only.
    pub fn animated(mut self) -> Info {
        let (name, description, default) = ANIMATION_OPTION;
        self.frames = true;
        self.declare(OptionSpec { name: name.into(), description: description.into(), default: Some(default.into()) })
    }

    /// Declares an option with a default value (listed before the standard ones).
    pub fn option(self, name: &str, description: &str, default: &str) -> Info {
        self.declare(OptionSpec { name: name.into(), description: description.into(), default: Some(default.into()) })
    }

    /// Declares an option without a default: leaving it out means something of its own, which
    /// the description says; read it with [`Options::text`].
    pub fn optional(self, name: &str, description: &str) -> Info {
        self.declare(OptionSpec { name: name.into(), description: description.into(), default: None })
    }

    fn declare(mut self, spec: OptionSpec) -> Info {
        // A plugin's own declaration replaces a standard option of the same name.
        self.options.retain(|o| o.name != spec.name);
        let own = self.options.iter().take_while(|o| !is_standard(&o.name)).count();
        self.options.insert(own, spec);
        self
    }

    fn spec(&self, name: &str) -> Option<&OptionSpec> {
        self.options.iter().find(|o| o.name == name)
    }
}

fn is_standard(name: &str) -> bool {
    STANDARD_OPTIONS.iter().any(|(n, ..)| *n == name)
}

impl From<Info> for bindings::PluginInfo {
    fn from(info: Info) -> Self {
        bindings::PluginInfo {
            name: info.name,
            version: info.version,
            description: info.description,
            params: info
                .options
                .into_iter()
                .map(|o| bindings::pixbox::transform::types::ParamSpec {
                    name: o.name,
                    description: o.description,
                    default: o.default,
                })
                .collect(),
        }
    }
}

/// The options of one rendition: those the route set, over the declared defaults.
#[derive(Debug, Clone)]
pub struct Options {
    given: Vec<(String, String)>,
    specs: Vec<OptionSpec>,
}

impl Options {
    /// Checks every name against `info` (unknown names are `unsupported`, naming the known ones)
    /// and the standard options' values, so a bad route fails before any decoding.
    pub fn parse(info: &Info, given: &[(String, String)]) -> Result<Options, Error> {
        for (name, _) in given {
            if info.spec(name).is_none() {
                let known: Vec<&str> = info.options.iter().map(|o| o.name.as_str()).collect();
                return Err(Error::Unsupported(format!(
                    "unknown option {name:?}; {} takes: {}",
                    info.name,
                    known.join(", ")
                )));
            }
        }
        let options = Options { given: given.to_vec(), specs: info.options.clone() };
        options.pixel_limits_checked()?;
        options.keeps_animation()?;
        options.output_format(Format::Png)?;
        options.quality()?;
        Ok(options)
    }

    /// The value set by the route, else the declared default; `None` for an option without a
    /// default that was not set.
    pub fn text(&self, name: &str) -> Option<&str> {
        let given = self.given.iter().rev().find(|(n, _)| n == name).map(|(_, v)| v.as_str());
        given.or_else(|| self.specs.iter().find(|o| o.name == name)?.default.as_deref())
    }

    /// Whether the route set this option.
    pub fn is_set(&self, name: &str) -> bool {
        self.given.iter().any(|(n, _)| n == name)
    }

    /// The option parsed as `T` (`u32`, `f32`, `bool`, ...); a value that does not parse is
    /// `unsupported`, with the option's description in the message.
    pub fn get<T: FromStr>(&self, name: &str) -> Result<T, Error> {
        let Some(spec) = self.specs.iter().find(|o| o.name == name) else {
            return Err(Error::Internal(format!("option {name:?} is read but not declared in info()")));
        };
        let value = self
            .text(name)
            .ok_or_else(|| Error::Unsupported(format!("option {name} must be set: {}", spec.description)))?;
        value
            .trim()
            .parse()
            .map_err(|_| Error::Unsupported(format!("option {name} = {value:?} is not valid: {}", spec.description)))
    }

    /// [`Options::get`], and the value must lie in `range`.
    pub fn get_in<T>(&self, name: &str, range: RangeInclusive<T>) -> Result<T, Error>
    where
        T: FromStr + PartialOrd + Display,
    {
        let value: T = self.get(name)?;
        if range.contains(&value) {
            Ok(value)
        } else {
            Err(Error::Unsupported(format!(
                "option {name} must be from {} to {}, got {value}",
                range.start(),
                range.end()
            )))
        }
    }

    pub(crate) fn pixel_limits(&self) -> PixelLimits {
        self.pixel_limits_checked().unwrap_or_default()
    }

    fn pixel_limits_checked(&self) -> Result<PixelLimits, Error> {
        Ok(PixelLimits {
            max_pixels: self.standard("max-pixels", 1..=u64::MAX, 40_000_000)?,
            max_side: self.standard("max-side", 1..=u32::MAX, 65_535)?,
            max_frames: self.standard("max-frames", 1..=u32::MAX, crate::codec::DEFAULT_MAX_FRAMES)?,
            max_animation_pixels: self.standard(
                "max-animation-pixels",
                1..=u64::MAX,
                crate::codec::DEFAULT_MAX_ANIMATION_PIXELS,
            )?,
        })
    }

    /// Whether an animation keeps its frames (the plugin asked for them and `animation` is keep).
    pub(crate) fn keeps_animation(&self) -> Result<bool, Error> {
        let (name, description, _) = ANIMATION_OPTION;
        match self.specs.iter().find(|o| o.name == name) {
            Some(spec) if spec.description == description => match self.text(name).unwrap_or("keep") {
                "keep" => Ok(true),
                "first-frame" => Ok(false),
                other => {
                    Err(Error::Unsupported(format!("option animation must be keep or first-frame, got {other:?}")))
                }
            },
            _ => Ok(false),
        }
    }

    /// The format an animation of `input` format is written in: WebP (lossless, as the kit writes
    /// WebP) unless `format` asks for GIF; `None` when `format` names a format without animation
    /// (JPEG, PNG), which gets the first frame.
    pub(crate) fn animation_format(&self, input: Format) -> Result<Option<Format>, Error> {
        Ok(match self.output_format(input)? {
            Format::Gif => Some(Format::Gif),
            Format::Webp => Some(Format::Webp),
            _ if self.text("format").unwrap_or("same").eq_ignore_ascii_case("same") => Some(Format::Webp),
            _ => None,
        })
    }

    pub(crate) fn quality(&self) -> Result<u8, Error> {
        self.standard("quality", 1..=100, 85)
    }

    /// The format to write for an input of `input` format.
    pub(crate) fn output_format(&self, input: Format) -> Result<Format, Error> {
        let value = self.text("format").unwrap_or("same");
        Ok(match value.to_ascii_lowercase().as_str() {
            "same" if input == Format::Gif => Format::Png,
            // Photos: JPEG XL and HEIC, which pixbox does not write, are written as JPEG.
            "same" if input == Format::Jxl || input == Format::Heic => Format::Jpeg,
            "same" => input,
            "jpeg" | "jpg" => Format::Jpeg,
            "png" => Format::Png,
            "webp" => Format::Webp,
            "gif" => Format::Gif,
            _ => {
                return Err(Error::Unsupported(format!(
                    "option format must be same, jpeg, png, webp or gif, got {value:?}"
                )));
            }
        })
    }

    /// A standard option's value; when the plugin replaced the standard option with its own
    /// meaning, the kit uses the standard default.
    fn standard<T>(&self, name: &str, range: RangeInclusive<T>, default: T) -> Result<T, Error>
    where
        T: FromStr + PartialOrd + Display,
    {
        let standard = STANDARD_OPTIONS.iter().find(|(n, ..)| *n == name).map(|(_, d, _)| *d);
        match self.specs.iter().find(|o| o.name == name) {
            Some(spec) if Some(spec.description.as_str()) == standard => self.get_in(name, range),
            _ => Ok(default),
        }
    }
}
