//! What the host may know about an image without decoding it: its format (from magic bytes) and
//! its dimensions (from the header). Pixels are only ever decoded inside the sandbox.

use std::io::Cursor;

use serde::{Deserialize, Serialize};

/// The image formats pixbox accepts, and AVIF, which plugins may write but uploads may not be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Jpeg,
    Png,
    Webp,
    Gif,
    Avif,
}

impl Format {
    pub fn media_type(self) -> &'static str {
        match self {
            Format::Jpeg => "image/jpeg",
            Format::Png => "image/png",
            Format::Webp => "image/webp",
            Format::Gif => "image/gif",
            Format::Avif => "image/avif",
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
        }
    }

    /// The format of a media type pixbox writes.
    pub fn from_media_type(media_type: &str) -> Option<Format> {
        [Format::Jpeg, Format::Png, Format::Webp, Format::Gif, Format::Avif]
            .into_iter()
            .find(|f| f.media_type() == media_type)
    }

    fn image_format(self) -> image::ImageFormat {
        match self {
            Format::Jpeg => image::ImageFormat::Jpeg,
            Format::Png => image::ImageFormat::Png,
            Format::Webp => image::ImageFormat::WebP,
            Format::Gif => image::ImageFormat::Gif,
            Format::Avif => image::ImageFormat::Avif,
        }
    }
}

/// Format and size read from an image's header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    pub format: Format,
    pub width: u32,
    pub height: u32,
}

impl Header {
    pub fn pixels(&self) -> u64 {
        u64::from(self.width) * u64::from(self.height)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HeaderError {
    #[error("not a supported image: expected JPEG, PNG, WebP or GIF")]
    UnknownFormat,
    #[error("unreadable {} header: {reason}", format.media_type())]
    Unreadable { format: Format, reason: String },
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
    let (width, height) = image::ImageReader::with_format(Cursor::new(bytes), format.image_format())
        .into_dimensions()
        .map_err(|e| HeaderError::Unreadable { format, reason: e.to_string() })?;
    Ok(Header { format, width, height })
}

/// [`probe`] for what a plugin returns: the input formats and AVIF (whose header the image crate
/// cannot read without its C decoder; imagesize reads the `ispe` box).
pub fn probe_output(bytes: &[u8]) -> Result<Header, HeaderError> {
    if !matches!(imagesize::image_type(bytes), Ok(imagesize::ImageType::Heif(imagesize::Compression::Av1))) {
        return probe(bytes);
    }
    let size = imagesize::blob_size(bytes)
        .map_err(|e| HeaderError::Unreadable { format: Format::Avif, reason: e.to_string() })?;
    let side = |n: usize| u32::try_from(n).ok().filter(|&n| n > 0);
    match (side(size.width), side(size.height)) {
        (Some(width), Some(height)) => Ok(Header { format: Format::Avif, width, height }),
        _ => Err(HeaderError::Unreadable { format: Format::Avif, reason: format!("{}x{}", size.width, size.height) }),
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
    }
}

/// Size limits checked against the header before any plugin runs (`[limits]` in pixbox.toml).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PixelLimits {
    /// Most pixels (width x height) an input may have.
    pub max_pixels: u64,
    /// Longest side an input may have, in pixels.
    pub max_side: u32,
}

impl Default for PixelLimits {
    fn default() -> Self {
        // 40 MP (as pict-rs ships) covers any camera photo and bounds the memory a decode takes.
        // The side limit is JPEG's own largest side: phones make panoramas of 12 000 px and more,
        // far under the pixel limit, and a long thin image costs no more than its pixels.
        PixelLimits { max_pixels: 40_000_000, max_side: 65_535 }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LimitError {
    #[error("image is {width}x{height}, wider or taller than the limit of {max_side} pixels per side")]
    SideTooLong { width: u32, height: u32, max_side: u32 },
    #[error("image is {width}x{height} = {pixels} pixels, over the limit of {max_pixels} pixels")]
    TooManyPixels { width: u32, height: u32, pixels: u64, max_pixels: u64 },
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
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::{Format, Header, PixelLimits};

    /// The host refuses an upload from its header; the plugins' decode (the kit's, which the
    /// default plugin uses too) refuses it again before decoding. Both must draw the line at the
    /// same place, with the same defaults, or an image passes one and fails the other.
    #[test]
    fn the_host_and_the_plugins_refuse_the_same_sizes() {
        let defaults = PixelLimits::default();
        let kit = pixbox_kit::PixelLimits::default();
        assert_eq!((defaults.max_pixels, defaults.max_side), (kit.max_pixels, kit.max_side));
        let plugin = imagekit::Options::default().limits();
        assert_eq!((defaults.max_pixels, defaults.max_side), (plugin.max_pixels, plugin.max_side));
        let limits =
            [defaults, PixelLimits { max_pixels: 100, max_side: 20 }, PixelLimits { max_pixels: 1, max_side: 1 }];
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
            let kit = pixbox_kit::PixelLimits { max_pixels: limits.max_pixels, max_side: limits.max_side };
            for (width, height) in sizes {
                let host = limits.check(&Header { format: Format::Png, width, height }).is_ok();
                let guest = kit.check(width, height).is_ok();
                assert_eq!(host, guest, "{width}x{height} under {limits:?}: host {host}, plugins {guest}");
            }
        }
    }
}
