//! What the host may know about an image without decoding it: its format (from magic bytes) and
//! its dimensions (from the header). Pixels are only ever decoded inside the sandbox.

use std::io::Cursor;

use serde::{Deserialize, Serialize};

/// GIF's and WebP's frame counts, JPEG XL's size and whether a file is HEIC, read by the same code
/// the plugins' decode reads them with.
#[path = "../../plugins/kit/src/container.rs"]
pub mod container;

/// The image formats pixbox accepts (JPEG XL and HEIC are read, never written), and AVIF, which
/// plugins may write but uploads may not be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Jpeg,
    Png,
    Webp,
    Gif,
    Avif,
    Jxl,
    Heic,
}

impl Format {
    pub fn media_type(self) -> &'static str {
        match self {
            Format::Jpeg => "image/jpeg",
            Format::Png => "image/png",
            Format::Webp => "image/webp",
            Format::Gif => "image/gif",
            Format::Avif => "image/avif",
            Format::Jxl => "image/jxl",
            Format::Heic => "image/heic",
        }
    }

    /// The file extension used in keys.
    pub fn extension(self) -> &'static str {
        match self {
            Format::Jpeg => "jpg",
            Format::Png => "png",
            Format::Webp => "webp",
            Format::Gif => "gif",
            Format::Avif => "avif",
            Format::Jxl => "jxl",
            Format::Heic => "heic",
        }
    }

    /// The format of a media type pixbox writes.
    pub fn from_media_type(media_type: &str) -> Option<Format> {
        [Format::Jpeg, Format::Png, Format::Webp, Format::Gif, Format::Avif, Format::Jxl, Format::Heic]
            .into_iter()
            .find(|f| f.media_type() == media_type)
    }

    /// The image crate's name for it; `None` for JPEG XL, whose header `container::jxl` reads, and
    /// HEIC, whose size imagesize reads.
    fn image_format(self) -> Option<image::ImageFormat> {
        match self {
            Format::Jpeg => Some(image::ImageFormat::Jpeg),
            Format::Png => Some(image::ImageFormat::Png),
            Format::Webp => Some(image::ImageFormat::WebP),
            Format::Gif => Some(image::ImageFormat::Gif),
            Format::Avif => Some(image::ImageFormat::Avif),
            Format::Jxl | Format::Heic => None,
        }
    }
}

/// Format and size read from an image's header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    pub format: Format,
    pub width: u32,
    pub height: u32,
    /// Frames of an animated GIF or WebP; 1 for a still image.
    #[serde(default = "one_frame")]
    pub frames: u32,
}

fn one_frame() -> u32 {
    1
}

impl Header {
    pub fn pixels(&self) -> u64 {
        u64::from(self.width) * u64::from(self.height)
    }

    /// Pixels decoded over all frames (each frame is the whole canvas).
    pub fn total_pixels(&self) -> u64 {
        self.pixels() * u64::from(self.frames)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HeaderError {
    #[error("not a supported image: expected JPEG, PNG, WebP, GIF, JPEG XL or HEIC")]
    UnknownFormat,
    #[error("unreadable {} header: {reason}", format.media_type())]
    Unreadable { format: Format, reason: String },
    #[error("{} is read, never written: a plugin may not return it", .0.media_type())]
    NotAnOutput(Format),
}

impl HeaderError {
    /// A short reason for clients: the decoder's own words stay in the server's log.
    pub fn public_reason(&self) -> String {
        match self {
            HeaderError::Unreadable { format, .. } => {
                format!("the {} header cannot be read (the file is damaged or not what it claims)", format.media_type())
            }
            e => e.to_string(),
        }
    }
}

/// Recognises a supported format from the first bytes; names and declared types are ignored.
pub fn sniff(bytes: &[u8]) -> Option<Format> {
    // JPEG XL: a bare codestream, or the ISO-BMFF container's signature box.
    if bytes.starts_with(&[0xFF, 0x0A]) || bytes.starts_with(b"\0\0\0\x0CJXL \r\n\x87\n") {
        return Some(Format::Jxl);
    }
    if container::is_heic(bytes) {
        return Some(Format::Heic);
    }
    match image::guess_format(bytes).ok()? {
        image::ImageFormat::Jpeg => Some(Format::Jpeg),
        image::ImageFormat::Png => Some(Format::Png),
        image::ImageFormat::WebP => Some(Format::Webp),
        image::ImageFormat::Gif => Some(Format::Gif),
        _ => None,
    }
}

/// Reads format and dimensions from the header only; no pixel buffer is allocated, so a tiny file
/// that claims to be 100000x100000 costs microseconds. Input formats only (see [`probe_output`]).
pub fn probe(bytes: &[u8]) -> Result<Header, HeaderError> {
    let format = sniff(bytes).ok_or(HeaderError::UnknownFormat)?;
    let (width, height) = match format.image_format() {
        Some(image_format) => image::ImageReader::with_format(Cursor::new(bytes), image_format)
            .into_dimensions()
            .map_err(|e| HeaderError::Unreadable { format, reason: e.to_string() })?,
        // The largest image in the file (the primary one; tiles, thumbnails and gain maps are
        // smaller), rotated as its `irot` box says.
        None if format == Format::Heic => sides(format, bytes)?,
        None => container::jxl(bytes).map_err(|reason| HeaderError::Unreadable { format, reason })?,
    };
    let scan = match format {
        Format::Gif => Some(container::gif(bytes)),
        Format::Webp => Some(container::webp(bytes)),
        _ => None,
    };
    // The container's canvas: a GIF's frames may reach past its logical screen.
    let (width, height, frames) = match scan {
        Some(scan) => {
            let scan = scan.map_err(|reason| HeaderError::Unreadable { format, reason })?;
            (width.max(scan.width), height.max(scan.height), scan.frames.max(1))
        }
        None => (width, height, 1),
    };
    Ok(Header { format, width, height, frames })
}

/// [`probe`] for what a plugin returns: the formats pixbox writes (JPEG XL and HEIC are read
/// only: pixbox serves no such file) and AVIF (whose header the image crate cannot read without
/// its C decoder; imagesize reads the `ispe` box).
pub fn probe_output(bytes: &[u8]) -> Result<Header, HeaderError> {
    if !matches!(imagesize::image_type(bytes), Ok(imagesize::ImageType::Heif(imagesize::Compression::Av1))) {
        let header = probe(bytes)?;
        return match header.format {
            Format::Jxl | Format::Heic => Err(HeaderError::NotAnOutput(header.format)),
            _ => Ok(header),
        };
    }
    let (width, height) = sides(Format::Avif, bytes)?;
    Ok(Header { format: Format::Avif, width, height, frames: 1 })
}

/// Width and height from imagesize, for AVIF and HEIC (the image crate reads their `ispe` boxes
/// only with its C decoders).
fn sides(format: Format, bytes: &[u8]) -> Result<(u32, u32), HeaderError> {
    let size = imagesize::blob_size(bytes).map_err(|e| HeaderError::Unreadable { format, reason: e.to_string() })?;
    let side = |n: usize| u32::try_from(n).ok().filter(|&n| n > 0);
    match (side(size.width), side(size.height)) {
        (Some(width), Some(height)) => Ok((width, height)),
        _ => Err(HeaderError::Unreadable { format, reason: format!("{}x{}", size.width, size.height) }),
    }
}

/// Whether the file ends the way a complete file of its format ends, checked without decoding:
/// JPEG's end-of-image marker, PNG's IEND chunk, GIF's trailer, or WebP's RIFF length. Catches
/// uploads cut off in transfer before they are queued.
pub fn is_complete(bytes: &[u8], format: Format) -> bool {
    match format {
        // Some encoders pad after the marker; tolerate trailing zero bytes.
        Format::Jpeg => {
            let end = bytes.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
            bytes[..end].ends_with(&[0xFF, 0xD9])
        }
        Format::Png => bytes.ends_with(b"IEND\xAE\x42\x60\x82"),
        Format::Gif => bytes.last() == Some(&0x3B),
        Format::Webp => bytes
            .get(4..8)
            .map(|n| u32::from_le_bytes(n.try_into().expect("4 bytes")) as usize + 8)
            .is_some_and(|riff| bytes.len() >= riff),
        // Never uploaded (not sniffed); outputs are checked by `probe_output`.
        Format::Avif => false,
        // A codestream has no end marker, and the container's last box may run to the end of the
        // file: a cut-off JPEG XL is found by the plugin's decoder (`bad-input`).
        Format::Jxl => true,
        // ISO-BMFF: the top-level boxes must add up to the file (the last may run to its end).
        Format::Heic => bmff_complete(bytes),
    }
}

/// Whether an ISO-BMFF file's top-level boxes reach exactly its end: each box starts with its size
/// (32 bits, or 1 and a 64-bit size after the type, or 0 for "to the end of the file").
fn bmff_complete(bytes: &[u8]) -> bool {
    let mut at = 0usize;
    while at < bytes.len() {
        let Some(head) = bytes.get(at..at + 8) else { return false };
        let size = match u32::from_be_bytes([head[0], head[1], head[2], head[3]]) {
            0 => return true,
            1 => match bytes.get(at + 8..at + 16) {
                Some(large) => u64::from_be_bytes(large.try_into().expect("8 bytes")),
                None => return false,
            },
            size => u64::from(size),
        };
        let Some(next) = usize::try_from(size).ok().filter(|&s| s >= 8).and_then(|s| at.checked_add(s)) else {
            return false;
        };
        at = next;
    }
    at == bytes.len()
}

/// Input formats an operator may turn off (`[formats]`); the others are always read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FormatSettings {
    /// Read HEIC (HEIF with HEVC) uploads: the default plugin decodes them with libheif and
    /// libde265. Off: refused at upload with 415 `unsupported-format`, and queued ones fail with
    /// `unsupported` (HEVC decoding may need a patent licence in some places; see the README).
    pub heic: bool,
}

impl Default for FormatSettings {
    fn default() -> Self {
        FormatSettings { heic: true }
    }
}

impl FormatSettings {
    /// Why an input of `format` is refused, if it is.
    pub fn refusal(&self, format: Format) -> Option<String> {
        (format == Format::Heic && !self.heic)
            .then(|| "HEIC images are turned off on this server (formats.heic = false)".to_string())
    }
}

/// Size limits checked against the header before any plugin runs (`[limits]` in pixbox.toml).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PixelLimits {
    /// Most pixels (width x height) an input may have.
    pub max_pixels: u64,
    /// Longest side an input may have, in pixels.
    pub max_side: u32,
    /// Most frames an animation may have.
    pub max_frames: u32,
    /// Most pixels over all frames of an animation (canvas x frames).
    pub max_animation_pixels: u64,
}

impl Default for PixelLimits {
    fn default() -> Self {
        // 40 MP (as pict-rs ships) covers any camera photo and bounds the memory a decode takes.
        // The side limit is JPEG's own largest side: phones make panoramas of 12 000 px and more,
        // far under the pixel limit, and a long thin image costs no more than its pixels.
        // Animations: their time grows with every frame, their memory with one (the plugins decode,
        // resize and encode a frame at a time). 50 million pixels over all frames (24 frames of
        // 1080p, 650 of 320x240) is what the default plugin makes into the default 1024-pixel box
        // in about 4 s, within the default 10 s budget with room for a busy machine
        // (BENCHMARKS.md); imgproxy counts all frames against its 16.8 MP source limit.
        PixelLimits { max_pixels: 40_000_000, max_side: 65_535, max_frames: 1_000, max_animation_pixels: 50_000_000 }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LimitError {
    #[error("image is {width}x{height}, wider or taller than the limit of {max_side} pixels per side")]
    SideTooLong { width: u32, height: u32, max_side: u32 },
    #[error("image is {width}x{height} = {pixels} pixels, over the limit of {max_pixels} pixels")]
    TooManyPixels { width: u32, height: u32, pixels: u64, max_pixels: u64 },
    #[error("animation has {frames} frames, over the limit of {max_frames} frames")]
    TooManyFrames { frames: u32, max_frames: u32 },
    #[error(
        "animation has {frames} frames of {width}x{height} = {pixels} pixels over all frames, over the limit of \
         {max_animation_pixels} pixels"
    )]
    AnimationTooLarge { width: u32, height: u32, frames: u32, pixels: u64, max_animation_pixels: u64 },
}

impl LimitError {
    /// Whether the animation limits (frames, pixels over all frames) refused it.
    pub fn is_animation(&self) -> bool {
        matches!(self, LimitError::TooManyFrames { .. } | LimitError::AnimationTooLarge { .. })
    }
}

impl PixelLimits {
    pub fn check(&self, header: &Header) -> Result<(), LimitError> {
        let Header { width, height, .. } = *header;
        if width > self.max_side || height > self.max_side {
            return Err(LimitError::SideTooLong { width, height, max_side: self.max_side });
        }
        if header.pixels() > self.max_pixels {
            return Err(LimitError::TooManyPixels {
                width,
                height,
                pixels: header.pixels(),
                max_pixels: self.max_pixels,
            });
        }
        // Stills pass whatever the frame limit: 0 or 1 refuses animations only.
        if header.frames > 1 && header.frames > self.max_frames {
            return Err(LimitError::TooManyFrames { frames: header.frames, max_frames: self.max_frames });
        }
        if header.frames > 1 && header.total_pixels() > self.max_animation_pixels {
            return Err(LimitError::AnimationTooLarge {
                width,
                height,
                frames: header.frames,
                pixels: header.total_pixels(),
                max_animation_pixels: self.max_animation_pixels,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::{Format, Header, HeaderError, PixelLimits};

    /// HEIC's size comes from its header; it is complete when its boxes reach the end of the file
    /// exactly; a plugin may not return it (pixbox reads HEIC, never writes it).
    #[test]
    fn heic_is_probed_checked_for_its_end_and_never_an_output() {
        let heic = include_bytes!("../../tests/fixtures/cups.heic");
        let header = super::probe(heic).unwrap();
        assert_eq!((header.format, header.width, header.height), (Format::Heic, 320, 200));
        assert!(super::is_complete(heic, Format::Heic));
        assert!(!super::is_complete(&heic[..heic.len() - 1], Format::Heic));
        let mut longer = heic.to_vec();
        longer.extend_from_slice(b"\0\0\0\x08free");
        assert!(super::is_complete(&longer, Format::Heic));
        longer.push(0);
        assert!(!super::is_complete(&longer, Format::Heic));
        assert_eq!(super::probe_output(heic), Err(HeaderError::NotAnOutput(Format::Heic)));
    }

    /// The host refuses an upload from its header; the plugins' decode (the kit's, which the
    /// default plugin uses too) refuses it again before decoding. Both must draw the line at the
    /// same place, with the same defaults, or an image passes one and fails the other.
    #[test]
    fn the_host_and_the_plugins_refuse_the_same_sizes() {
        let defaults = PixelLimits::default();
        let in_kit = |l: PixelLimits| pixbox_kit::PixelLimits {
            max_pixels: l.max_pixels,
            max_side: l.max_side,
            max_frames: l.max_frames,
            max_animation_pixels: l.max_animation_pixels,
        };
        assert_eq!(in_kit(defaults), pixbox_kit::PixelLimits::default());
        assert_eq!(in_kit(defaults), imagekit::Options::default().limits());
        let small = PixelLimits { max_pixels: 100, max_side: 20, max_frames: 3, max_animation_pixels: 250 };
        let no_animations = PixelLimits { max_frames: 0, ..small };
        let limits = [defaults, small, no_animations, PixelLimits { max_pixels: 1, max_side: 1, ..small }];
        let sizes = [
            (1, 1),
            (10, 10),
            (10, 11),
            (20, 5),
            (21, 1),
            (5, 20),
            (6_000, 4_000),
            (12_000, 600),
            (65_535, 610),
            (65_536, 1),
            (6_325, 6_325),
            (6_325, 6_324),
        ];
        for limits in limits {
            let kit = in_kit(limits);
            for (width, height) in sizes {
                for frames in [1, 2, 3, 4, 1_000, 1_001] {
                    let header = Header { format: Format::Gif, width, height, frames };
                    let host = limits.check(&header).is_ok();
                    // The kit reads a one-frame file as a still: no animation limits.
                    let guest = kit.check(width, height).is_ok()
                        && (frames == 1 || kit.check_animation(frames, header.total_pixels()).is_ok());
                    assert_eq!(host, guest, "{width}x{height}x{frames} under {limits:?}: host {host}, plugins {guest}");
                }
            }
        }
    }
}
