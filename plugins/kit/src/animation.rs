//! Animated GIF and WebP: frames decoded one at a time on the file's canvas, and written back,
//! frame by frame, as an animated WebP or GIF. Memory follows one frame (the canvas, the frame
//! being made and the encoded output so far), never the whole animation; frame count and total
//! pixels are checked from the container before the first frame is decoded.

use std::io::Cursor;

use image::codecs::gif::GifDecoder;
use image::codecs::webp::WebPDecoder;
use image::{AnimationDecoder, Delay, DynamicImage, RgbaImage};

use crate::codec::{Format, PixelLimits};
use crate::container::{self, Scan};
use crate::error::Error;

/// One frame: the whole canvas as it shows at that point of the animation, and how long it shows.
#[derive(Debug, Clone)]
pub struct Frame {
    pub image: RgbaImage,
    pub delay_ms: u32,
}

/// An animation being decoded: the container's facts, then its frames in order.
pub struct Animation<'a> {
    pub format: Format,
    pub scan: Scan,
    frames: image::Frames<'a>,
    decoded: u32,
}

impl std::fmt::Debug for Animation<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Animation").field("format", &self.format).field("scan", &self.scan).finish()
    }
}

/// The frames of an animated GIF or WebP, or `None` for a still image (any other format, or one
/// frame). Refused as `bad-input` before any frame is decoded when the canvas, the frame count or
/// the pixels over all frames are over `limits`.
pub fn open(input: &[u8], limits: PixelLimits) -> Result<Option<Animation<'_>>, Error> {
    let format = Format::sniff(input);
    let scan = match format {
        Some(Format::Gif) => container::gif(input),
        Some(Format::Webp) => container::webp(input),
        _ => return Ok(None),
    }
    .map_err(|e| Error::BadInput(format!("cannot read the container: {e}")))?;
    if !scan.is_animated() {
        return Ok(None);
    }
    limits.check(scan.width, scan.height)?;
    limits.check_animation(scan.frames, scan.total_pixels())?;
    let frames = match format {
        Some(Format::Gif) => GifDecoder::new(Cursor::new(input))?.into_frames(),
        _ => WebPDecoder::new(Cursor::new(input))?.into_frames(),
    };
    Ok(Some(Animation { format: format.expect("GIF or WebP"), scan, frames, decoded: 0 }))
}

impl Iterator for Animation<'_> {
    type Item = Result<Frame, Error>;

    fn next(&mut self) -> Option<Self::Item> {
        // The container was counted; a decoder finding more frames stops at that count.
        if self.decoded == self.scan.frames {
            return None;
        }
        let frame = match self.frames.next()? {
            Ok(frame) => frame,
            Err(e) => return Some(Err(e.into())),
        };
        self.decoded += 1;
        let delay_ms = delay_ms(frame.delay());
        Some(Ok(Frame { image: frame.into_buffer(), delay_ms }))
    }
}

fn delay_ms(delay: Delay) -> u32 {
    let (numer, denom) = delay.numer_denom_ms();
    numer.checked_div(denom).unwrap_or(0)
}

/// An animated WebP assembled from still WebP files of one size (each frame encoded on its own,
/// lossy or lossless, by whichever encoder the caller uses): each file's image chunks go into an
/// ANMF chunk shown for its delay, replacing the previous frame whole (no blending, no disposal).
#[derive(Debug)]
pub struct WebpAnimation {
    out: Vec<u8>,
    loops: Option<u16>,
    /// The canvas: the first frame's size.
    size: Option<(u32, u32)>,
    alpha: bool,
}

/// ANMF's duration field is 24 bits of milliseconds.
const MAX_WEBP_DELAY_MS: u32 = (1 << 24) - 1;

impl WebpAnimation {
    /// An animation playing `loops` times (`None`: for ever), as large as its first frame.
    pub fn new(loops: Option<u16>) -> WebpAnimation {
        WebpAnimation { out: Vec::new(), loops, size: None, alpha: false }
    }

    /// The RIFF header, VP8X (the animation flag; alpha is flagged at the end, once a frame has
    /// it) and ANIM (a transparent background, the loop count: 0 is for ever).
    fn start(&mut self, width: u32, height: u32) {
        self.out.reserve(64 << 10);
        self.out.extend_from_slice(b"RIFF\0\0\0\0WEBP");
        self.out.extend_from_slice(b"VP8X\x0A\0\0\0\x02\0\0\0");
        self.out.extend_from_slice(&u24(width - 1));
        self.out.extend_from_slice(&u24(height - 1));
        self.out.extend_from_slice(b"ANIM\x06\0\0\0\0\0\0\0");
        self.out.extend_from_slice(&self.loops.unwrap_or(0).to_le_bytes());
        self.size = Some((width, height));
    }

    /// Appends one frame, `still` being a whole WebP file of the first frame's size.
    pub fn push(&mut self, still: &[u8], delay_ms: u32) -> Result<(), Error> {
        let frame_chunks = image_chunks(still)?;
        let scan = container::webp(still).map_err(Error::Internal)?;
        let (width, height) = match self.size {
            Some(size) => size,
            None => {
                self.start(scan.width, scan.height);
                (scan.width, scan.height)
            }
        };
        if (scan.width, scan.height) != (width, height) {
            return Err(Error::Internal(format!(
                "an animation's frames must all be {width}x{height}, this one is {}x{}",
                scan.width, scan.height
            )));
        }
        self.alpha |= frame_chunks.alpha;
        let size = 16 + frame_chunks.bytes.len();
        self.out.extend_from_slice(b"ANMF");
        self.out.extend_from_slice(&chunk_size(size)?);
        // At 0,0 (the offsets are stored halved), canvas-sized, shown for the delay, drawn
        // without blending (flags: bit 1) and not disposed.
        self.out.extend_from_slice(&[0; 6]);
        self.out.extend_from_slice(&u24(width - 1));
        self.out.extend_from_slice(&u24(height - 1));
        self.out.extend_from_slice(&u24(delay_ms.min(MAX_WEBP_DELAY_MS)));
        self.out.push(0b10);
        self.out.extend_from_slice(frame_chunks.bytes);
        Ok(())
    }

    /// The file; an error when no frame was pushed.
    pub fn finish(mut self) -> Result<Vec<u8>, Error> {
        if self.size.is_none() {
            return Err(Error::Internal("an animation without frames".into()));
        }
        if self.alpha {
            self.out[20] |= 0x10;
        }
        let riff = chunk_size(self.out.len() - 8)?;
        self.out[4..8].copy_from_slice(&riff);
        Ok(self.out)
    }
}

fn u24(n: u32) -> [u8; 3] {
    let [a, b, c, _] = n.to_le_bytes();
    [a, b, c]
}

fn chunk_size(n: usize) -> Result<[u8; 4], Error> {
    u32::try_from(n).map(u32::to_le_bytes).map_err(|_| Error::Internal("a WebP file is limited to 4 GiB".into()))
}

/// The image chunks (ALPH, VP8, VP8L) of a still WebP file, and whether it has alpha.
struct ImageChunks<'a> {
    bytes: &'a [u8],
    alpha: bool,
}

fn image_chunks(still: &[u8]) -> Result<ImageChunks<'_>, Error> {
    let bad = || Error::Internal("an encoder's WebP frame is not a still WebP file".into());
    if still.len() < 12 || &still[..4] != b"RIFF" || &still[8..12] != b"WEBP" {
        return Err(bad());
    }
    let (mut start, mut alpha, mut at) = (None, false, 12usize);
    while let Some(header) = still.get(at..at + 8) {
        let size = u32::from_le_bytes([header[4], header[5], header[6], header[7]]) as usize;
        let end = size.checked_add(8 + (size & 1)).and_then(|step| at.checked_add(step)).ok_or_else(bad)?;
        match &header[..4] {
            b"ALPH" => {
                alpha = true;
                start.get_or_insert(at);
            }
            b"VP8 " => {
                start.get_or_insert(at);
                return Ok(ImageChunks { bytes: still.get(start.unwrap_or(at)..end).ok_or_else(bad)?, alpha });
            }
            b"VP8L" => {
                // The header's alpha_is_used bit (bit 28 after the signature byte).
                alpha |= still.get(at + 12).is_some_and(|b| b & 0x10 != 0);
                return Ok(ImageChunks { bytes: still.get(at..end).ok_or_else(bad)?, alpha });
            }
            _ => {}
        }
        at = end;
    }
    Err(bad())
}

/// An animated GIF written frame by frame (each reduced to its own 256-colour palette).
pub struct GifAnimation {
    loops: Option<u16>,
    encoder: Option<gif::Encoder<Vec<u8>>>,
    /// The first frame's size, which every frame must have.
    size: Option<(u16, u16)>,
}

impl std::fmt::Debug for GifAnimation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GifAnimation").field("loops", &self.loops).finish_non_exhaustive()
    }
}

/// The quantiser's speed, 1 (best) to 30 (fastest): 10 is gifsicle's and ffmpeg's league of
/// quality at a fraction of speed 1's time.
const GIF_SPEED: i32 = 10;

impl GifAnimation {
    /// An animation playing `loops` times (`None`: for ever; once writes no loop extension, and
    /// GIF's NETSCAPE count is the repeats after the first play).
    pub fn new(loops: Option<u16>) -> GifAnimation {
        GifAnimation { loops, encoder: None, size: None }
    }

    /// Appends one frame (GIF keeps delays in hundredths of a second); the first sets the size.
    pub fn push(&mut self, image: &DynamicImage, delay_ms: u32) -> Result<(), Error> {
        let side =
            |n: u32| u16::try_from(n).map_err(|_| Error::Internal(format!("a GIF side is at most 65535, not {n}")));
        let (w, h) = (side(image.width())?, side(image.height())?);
        if let Some((first_w, first_h)) = self.size
            && (first_w, first_h) != (w, h)
        {
            return Err(Error::Internal(format!(
                "an animation's frames must all be {first_w}x{first_h}, this one is {w}x{h}"
            )));
        }
        self.size = Some((w, h));
        let encoder = match &mut self.encoder {
            Some(encoder) => encoder,
            empty => {
                let mut encoder = gif::Encoder::new(Vec::with_capacity(64 << 10), w, h, &[]).map_err(encoding)?;
                match self.loops {
                    Some(0 | 1) => {}
                    Some(plays) => encoder.set_repeat(gif::Repeat::Finite(plays - 1)).map_err(encoding)?,
                    None => encoder.set_repeat(gif::Repeat::Infinite).map_err(encoding)?,
                }
                empty.insert(encoder)
            }
        };
        let mut rgba = image.to_rgba8().into_raw();
        let mut frame = gif::Frame::from_rgba_speed(w, h, &mut rgba, GIF_SPEED);
        frame.delay = u16::try_from(delay_ms.div_ceil(10)).unwrap_or(u16::MAX);
        // Every frame covers the canvas: cleared after it shows, so its transparent pixels never
        // let the previous frame through.
        frame.dispose = gif::DisposalMethod::Background;
        encoder.write_frame(&frame).map_err(encoding)
    }

    /// The file (with the trailer); an error when no frame was pushed.
    pub fn finish(self) -> Result<Vec<u8>, Error> {
        let encoder = self.encoder.ok_or_else(|| Error::Internal("an animation without frames".into()))?;
        encoder.into_inner().map_err(encoding)
    }
}

fn encoding(e: gif::EncodingError) -> Error {
    Error::Internal(format!("encoding a GIF failed: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(n: u32, w: u32, h: u32) -> Vec<RgbaImage> {
        (0..n).map(|i| RgbaImage::from_pixel(w, h, image::Rgba([(i * 80) as u8, 40, 200, 255]))).collect()
    }

    #[test]
    fn a_gif_written_frame_by_frame_reads_back_with_its_frames_delays_and_loops() {
        let mut gif = GifAnimation::new(Some(3));
        for (i, frame) in frames(3, 8, 6).into_iter().enumerate() {
            gif.push(&DynamicImage::ImageRgba8(frame), 100 + 10 * i as u32).unwrap();
        }
        let bytes = gif.finish().unwrap();
        let scan = container::gif(&bytes).unwrap();
        assert_eq!(scan, Scan { width: 8, height: 6, frames: 3, loops: Some(3) });
        let read: Vec<Frame> =
            open(&bytes, PixelLimits::default()).unwrap().unwrap().collect::<Result<_, _>>().unwrap();
        assert_eq!(read.iter().map(|f| f.delay_ms).collect::<Vec<_>>(), [100, 110, 120]);
        assert_eq!(read[2].image.get_pixel(3, 3).0, [160, 40, 200, 255]);
    }

    #[test]
    fn a_webp_assembled_from_stills_reads_back_with_its_frames_delays_and_loops() {
        let mut webp = WebpAnimation::new(None);
        for (i, frame) in frames(3, 8, 6).into_iter().enumerate() {
            let mut still = Vec::new();
            DynamicImage::ImageRgba8(frame)
                .write_with_encoder(image::codecs::webp::WebPEncoder::new_lossless(&mut still))
                .unwrap();
            webp.push(&still, 40 * (i as u32 + 1)).unwrap();
        }
        let bytes = webp.finish().unwrap();
        let scan = container::webp(&bytes).unwrap();
        assert_eq!(scan, Scan { width: 8, height: 6, frames: 3, loops: None });
        let read: Vec<Frame> =
            open(&bytes, PixelLimits::default()).unwrap().unwrap().collect::<Result<_, _>>().unwrap();
        assert_eq!(read.iter().map(|f| f.delay_ms).collect::<Vec<_>>(), [40, 80, 120]);
        assert_eq!(read[1].image.get_pixel(2, 2).0, [80, 40, 200, 255]);
    }

    #[test]
    fn a_frame_of_another_size_is_refused() {
        let mut webp = WebpAnimation::new(None);
        let mut first = Vec::new();
        DynamicImage::new_rgb8(8, 6)
            .write_with_encoder(image::codecs::webp::WebPEncoder::new_lossless(&mut first))
            .unwrap();
        webp.push(&first, 10).unwrap();
        let mut still = Vec::new();
        DynamicImage::new_rgb8(4, 4)
            .write_with_encoder(image::codecs::webp::WebPEncoder::new_lossless(&mut still))
            .unwrap();
        assert!(webp.push(&still, 10).unwrap_err().to_string().contains("8x6"));
    }

    #[test]
    fn frame_count_and_total_pixels_are_refused_before_decoding() {
        let mut gif = GifAnimation::new(None);
        for frame in frames(4, 10, 10) {
            gif.push(&DynamicImage::ImageRgba8(frame), 10).unwrap();
        }
        let bytes = gif.finish().unwrap();
        let limits = |max_frames, max_animation_pixels| PixelLimits {
            max_frames,
            max_animation_pixels,
            ..PixelLimits::default()
        };
        assert!(open(&bytes, limits(4, 400)).unwrap().is_some());
        let frames = open(&bytes, limits(3, 400)).unwrap_err().to_string();
        assert!(frames.contains("4 frames"), "{frames}");
        let pixels = open(&bytes, limits(4, 399)).unwrap_err().to_string();
        assert!(pixels.contains("400 pixels"), "{pixels}");
    }
}
