//! What an animated file's container says without decoding a pixel: the canvas, the number of
//! frames and the loop count of a GIF (its blocks walked, image data skipped) or a WebP (its RIFF
//! chunks). The host's header probe and the plugins' decode both read it from this one file (the
//! host includes it by path), so they count frames the same way. Standard library only.

/// The animation facts of one file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scan {
    /// The canvas every frame is drawn on.
    pub width: u32,
    pub height: u32,
    /// Frames in the file (1 for a still image).
    pub frames: u32,
    /// How many times the animation plays: `None` for ever, `Some(n)` n times. GIF's NETSCAPE
    /// extension and WebP's ANIM chunk both store 0 for ever; a GIF without the extension plays once.
    pub loops: Option<u16>,
}

impl Scan {
    /// Whether there is more than one frame to keep.
    pub fn is_animated(&self) -> bool {
        self.frames > 1
    }

    /// Pixels decoded over the whole animation: every frame is composed on the full canvas.
    pub fn total_pixels(&self) -> u64 {
        u64::from(self.width) * u64::from(self.height) * u64::from(self.frames)
    }
}

/// Walks a GIF's blocks: frames are counted and their LZW data skipped, never decoded. A file
/// that ends before its trailer is scanned up to where it ends (truncation is judged elsewhere),
/// and one with bytes after its last block (found in the wild) up to them.
pub fn gif(bytes: &[u8]) -> Result<Scan, String> {
    if bytes.len() < 13 || !(bytes.starts_with(b"GIF87a") || bytes.starts_with(b"GIF89a")) {
        return Err("not a GIF header".into());
    }
    let width = u32::from(u16::from_le_bytes([bytes[6], bytes[7]]));
    let height = u32::from(u16::from_le_bytes([bytes[8], bytes[9]]));
    let mut at = 13 + colour_table(bytes[10]);
    let mut frames = 0u32;
    // No NETSCAPE extension: the animation plays once.
    let mut loops = Some(1);
    while let Some(&block) = bytes.get(at) {
        match block {
            // Image descriptor: 9 bytes, a local colour table, the LZW code size, data sub-blocks.
            0x2C => {
                let packed = *bytes.get(at + 9).ok_or("a frame's descriptor is cut off")?;
                frames = frames.saturating_add(1);
                at = skip_sub_blocks(bytes, at + 10 + colour_table(packed) + 1);
            }
            // Extension: a label, then sub-blocks; the application extension NETSCAPE2.0 holds
            // the loop count.
            0x21 => {
                let label = bytes.get(at + 1).copied();
                let first = bytes.get(at + 2).map(|&n| usize::from(n));
                if label == Some(0xFF)
                    && first == Some(11)
                    && bytes.get(at + 3..at + 14) == Some(b"NETSCAPE2.0")
                    && let Some(&[3, 1, lo, hi]) = bytes.get(at + 14..at + 18)
                {
                    let count = u16::from_le_bytes([lo, hi]);
                    loops = (count != 0).then_some(count);
                }
                at = skip_sub_blocks(bytes, at + 2);
            }
            // The trailer, or bytes that are no block: decoders (the gif crate's as browsers')
            // stop there, and so does the count.
            _ => break,
        }
    }
    Ok(Scan { width, height, frames, loops })
}

/// The size of the colour table a GIF packed-fields byte announces.
fn colour_table(packed: u8) -> usize {
    if packed & 0x80 != 0 { 3 << ((packed & 7) + 1) } else { 0 }
}

/// The offset after a run of sub-blocks starting at `at` (each a length byte and that many bytes,
/// ended by a zero length); past the end of `bytes` when the run is cut off.
fn skip_sub_blocks(bytes: &[u8], mut at: usize) -> usize {
    while let Some(&len) = bytes.get(at) {
        at += 1 + usize::from(len);
        if len == 0 {
            return at;
        }
    }
    usize::MAX
}

/// Reads a WebP's chunks: the canvas from VP8X (or the one image's own header), the frames from
/// ANMF chunks, the loop count from ANIM. A still WebP is one frame.
pub fn webp(bytes: &[u8]) -> Result<Scan, String> {
    if bytes.len() < 12 || &bytes[..4] != b"RIFF" || &bytes[8..12] != b"WEBP" {
        return Err("not a WebP header".into());
    }
    let u24 = |b: &[u8]| u32::from(b[0]) | u32::from(b[1]) << 8 | u32::from(b[2]) << 16;
    let (mut canvas, mut frames, mut loops, mut animated) = (None, 0u32, None, false);
    let mut still = None;
    let mut at = 12usize;
    while let Some(header) = bytes.get(at..at + 8) {
        let size = u32::from_le_bytes([header[4], header[5], header[6], header[7]]) as usize;
        let body = bytes.get(at + 8..).unwrap_or_default();
        let body = &body[..size.min(body.len())];
        match &header[..4] {
            b"VP8X" if body.len() >= 10 => {
                animated = body[0] & 0x02 != 0;
                canvas = Some((u24(&body[4..7]) + 1, u24(&body[7..10]) + 1));
            }
            b"ANIM" if body.len() >= 6 => {
                let count = u16::from_le_bytes([body[4], body[5]]);
                loops = (count != 0).then_some(count);
            }
            b"ANMF" => frames = frames.saturating_add(1),
            // A still image's own size, for files without VP8X.
            b"VP8 " if body.len() >= 10 => {
                still = Some((
                    u32::from(u16::from_le_bytes([body[6], body[7]]) & 0x3FFF),
                    u32::from(u16::from_le_bytes([body[8], body[9]]) & 0x3FFF),
                ))
            }
            b"VP8L" if body.len() >= 5 => {
                let bits = u32::from_le_bytes([body[1], body[2], body[3], body[4]]);
                still = Some(((bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1));
            }
            _ => {}
        }
        // Chunks are padded to an even size. Checked: a size near the top of u32 would wrap on
        // wasm32 and never move on.
        let Some(next) = size.checked_add(8 + (size & 1)).and_then(|step| at.checked_add(step)) else { break };
        at = next;
    }
    let (width, height) = canvas.or(still).ok_or("no VP8X, VP8 or VP8L chunk")?;
    if !animated {
        return Ok(Scan { width, height, frames: 1, loops: Some(1) });
    }
    Ok(Scan { width, height, frames, loops })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A GIF of `frames` 2x2 frames, looping `loops` times (`None`: no NETSCAPE extension).
    fn gif_file(frames: u32, loops: Option<u16>) -> Vec<u8> {
        let mut out = b"GIF89a\x02\x00\x02\x00\x80\x00\x00".to_vec();
        out.extend_from_slice(&[0, 0, 0, 255, 255, 255]);
        if let Some(n) = loops {
            out.extend_from_slice(b"\x21\xFF\x0BNETSCAPE2.0\x03\x01");
            out.extend_from_slice(&n.to_le_bytes());
            out.push(0);
        }
        for _ in 0..frames {
            out.extend_from_slice(b"\x21\xF9\x04\x00\x0A\x00\x00\x00");
            out.extend_from_slice(b"\x2C\x00\x00\x00\x00\x02\x00\x02\x00\x00\x02\x02\x44\x01\x00");
        }
        out.push(0x3B);
        out
    }

    #[test]
    fn gif_frames_and_loops_are_counted_without_decoding() {
        let scan = gif(&gif_file(3, Some(0))).unwrap();
        assert_eq!(scan, Scan { width: 2, height: 2, frames: 3, loops: None });
        assert_eq!(gif(&gif_file(1, Some(5))).unwrap().loops, Some(5));
        assert_eq!(gif(&gif_file(2, None)).unwrap().loops, Some(1));
        assert_eq!(gif(&gif_file(4, None)).unwrap().total_pixels(), 16);
    }

    #[test]
    fn a_cut_off_gif_counts_what_is_there_and_the_count_stops_at_what_is_no_block() {
        let whole = gif_file(3, None);
        assert_eq!(gif(&whole[..whole.len() - 20]).unwrap().frames, 2);
        let mut garbage = whole.clone();
        let second_frame = 13 + 6 + 23 + 8;
        garbage[second_frame] = 0x47;
        assert_eq!(gif(&garbage).unwrap().frames, 1);
        assert!(gif(b"GIF89a").is_err());
    }

    #[test]
    fn a_webp_with_a_chunk_size_near_u32_max_ends_the_scan() {
        let mut file = b"RIFF\0\0\0\0WEBPVP8X\x0A\0\0\0\x02\0\0\0\x09\0\0\x04\0\0".to_vec();
        file.extend_from_slice(b"ANMF\xFF\xFF\xFF\xFF");
        let scan = webp(&file).unwrap();
        assert_eq!((scan.width, scan.height, scan.frames), (10, 5, 1));
    }
}
