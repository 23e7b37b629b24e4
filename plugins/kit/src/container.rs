//! What an animated file's container says without decoding a pixel: the canvas, the number of
//! frames and the loop count of a GIF (its blocks walked, image data skipped) or a WebP (its RIFF
//! chunks). The host's header probe and the plugins' decode both read it from this one file (the
//! host includes it by path), so they count frames the same way. Also JPEG XL's size header and
//! whether a file is HEIC, for the same reason. Standard library only.

/// HEIF brands of HEVC-coded images (`heic`, `heix`: still images; `hevc`, `hevx`: sequences;
/// `heim`, `heis`: multi-layer), as the `ftyp` box names them.
const HEIC_BRANDS: [&[u8; 4]; 6] = [b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis"];

/// Whether the file is HEIC: an ISO-BMFF `ftyp` box whose major brand is a HEVC brand of HEIF, or
/// whose major brand is HEIF's generic one (`mif1`, `msf1`) with a HEVC brand among the compatible
/// ones and no AVIF brand (AVIF shares the container; pixbox does not read it).
pub fn is_heic(bytes: &[u8]) -> bool {
    if bytes.get(4..8) != Some(b"ftyp") {
        return false;
    }
    let Some(size) = bytes.get(0..4).map(|n| u32::from_be_bytes([n[0], n[1], n[2], n[3]]) as usize) else {
        return false;
    };
    let Some(major) = bytes.get(8..12) else { return false };
    if HEIC_BRANDS.iter().any(|brand| major == *brand) {
        return true;
    }
    if major != b"mif1" && major != b"msf1" {
        return false;
    }
    // Compatible brands follow the major brand and its 4-byte version, to the box's end.
    let compatible = bytes.get(16..size.min(bytes.len())).unwrap_or(&[]);
    let brands = || compatible.chunks_exact(4);
    brands().any(|b| HEIC_BRANDS.iter().any(|brand| b == *brand)) && !brands().any(|b| b == b"avif" || b == b"avis")
}

/// The animation facts of one file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scan {
    /// The canvas every frame is drawn on.
    pub width: u32,
    pub height: u32,
    /// Frames in the file (1 for a still image).
    pub frames: u32,
    /// How many times the animation plays: `None` for ever, `Some(n)` n times. WebP's ANIM chunk
    /// stores the plays (0: for ever); GIF's NETSCAPE extension the repeats after the first play
    /// (0: for ever), as browsers read it, and a GIF without the extension plays once.
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

/// Walks a GIF's blocks: frames are counted and their LZW data skipped, never decoded. The canvas
/// is the logical screen, grown to hold any frame that reaches past it (decoders allocate a frame
/// at its own size, so a small screen must not hide a large frame from the limits). A file
/// that ends before its trailer is scanned up to where it ends (truncation is judged elsewhere),
/// and one with bytes after its last block (found in the wild) up to them.
pub fn gif(bytes: &[u8]) -> Result<Scan, String> {
    if bytes.len() < 13 || !(bytes.starts_with(b"GIF87a") || bytes.starts_with(b"GIF89a")) {
        return Err("not a GIF header".into());
    }
    let mut width = u32::from(u16::from_le_bytes([bytes[6], bytes[7]]));
    let mut height = u32::from(u16::from_le_bytes([bytes[8], bytes[9]]));
    let mut at = 13 + colour_table(bytes[10]);
    let mut frames = 0u32;
    // No NETSCAPE extension: the animation plays once.
    let mut loops = Some(1);
    while let Some(&block) = bytes.get(at) {
        match block {
            // Image descriptor: 9 bytes, a local colour table, the LZW code size, data sub-blocks.
            0x2C => {
                let descriptor = bytes.get(at + 1..at + 10).ok_or("a frame's descriptor is cut off")?;
                let field = |i: usize| u32::from(u16::from_le_bytes([descriptor[i], descriptor[i + 1]]));
                width = width.max(field(0) + field(4));
                height = height.max(field(2) + field(6));
                let packed = descriptor[8];
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
                    let repeats = u16::from_le_bytes([lo, hi]);
                    loops = (repeats != 0).then_some(repeats.saturating_add(1));
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
    while let Some(header) = bytes.get(at..at.saturating_add(8)) {
        let size = u32::from_le_bytes([header[4], header[5], header[6], header[7]]) as usize;
        let body = bytes.get(at + 8..).unwrap_or_default();
        let body = &body[..size.min(body.len())];
        match &header[..4] {
            // Only where VP8X must stand: the first chunk.
            b"VP8X" if at == 12 && body.len() >= 10 => {
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

/// A JPEG XL's size in display orientation, from its codestream's size header and orientation
/// field (as jxl-oxide reports it), in a bare codestream or inside the container's `jxlc` or first
/// `jxlp` box.
pub fn jxl(bytes: &[u8]) -> Result<(u32, u32), String> {
    let codestream = jxl_codestream(bytes)?;
    let mut bits =
        Bits { bytes: codestream.strip_prefix(&[0xFF, 0x0A]).ok_or("no JPEG XL codestream signature")?, at: 0 };
    let cut = |_| "the JPEG XL size header is cut off".to_string();
    let small = bits.read(1).map_err(cut)? == 1;
    let dimension = |bits: &mut Bits<'_>| -> Result<u32, ()> {
        if small {
            return Ok((bits.read(5)? + 1) * 8);
        }
        let width = [9, 13, 18, 30][bits.read(2)? as usize];
        Ok(bits.read(width)? + 1)
    };
    let height = dimension(&mut bits).map_err(cut)?;
    let ratio = bits.read(3).map_err(cut)?;
    let h = u64::from(height);
    let width = match ratio {
        0 => u64::from(dimension(&mut bits).map_err(cut)?),
        1 => h,
        2 => h * 12 / 10,
        3 => h * 4 / 3,
        4 => h * 3 / 2,
        5 => h * 16 / 9,
        6 => h * 5 / 4,
        _ => h * 2,
    };
    let width = u32::try_from(width).map_err(|_| format!("a JPEG XL {width} pixels wide"))?;
    // ImageMetadata: all_default, then extra_fields, then the orientation (1-8; 5-8 turn it).
    let orientation = match bits.read(1) {
        Ok(0) if bits.read(1) == Ok(1) => bits.read(3).map_err(cut)? + 1,
        Ok(_) => 1,
        Err(()) => return Err(cut(())),
    };
    Ok(if orientation > 4 { (height, width) } else { (width, height) })
}

/// The start of a JPEG XL's codestream: the file itself, or the payload of the container's `jxlc`
/// box or first `jxlp` box (after its 4-byte index).
fn jxl_codestream(bytes: &[u8]) -> Result<&[u8], String> {
    if bytes.starts_with(&[0xFF, 0x0A]) {
        return Ok(bytes);
    }
    let mut at = 0usize;
    while let Some(header) = bytes.get(at..at.saturating_add(8)) {
        let size = u32::from_be_bytes([header[0], header[1], header[2], header[3]]) as usize;
        let (start, end) = match size {
            0 => (at + 8, bytes.len()),
            1 => {
                let large = bytes.get(at + 8..at + 16).ok_or("a JPEG XL box is cut off")?;
                let large = usize::try_from(u64::from_be_bytes(large.try_into().expect("8 bytes")))
                    .map_err(|_| "a JPEG XL box past the address space")?;
                (at + 16, at.saturating_add(large))
            }
            2..=7 => return Err(format!("a JPEG XL box of {size} bytes")),
            _ => (at + 8, at.saturating_add(size)),
        };
        let payload = bytes.get(start..end.min(bytes.len())).unwrap_or_default();
        match &header[4..8] {
            b"jxlc" => return Ok(payload),
            b"jxlp" => return payload.get(4..).ok_or_else(|| "a cut-off jxlp box".to_string()),
            _ => {}
        }
        at = end;
    }
    Err("no codestream box in the JPEG XL container".into())
}

/// Bits read least significant first, as JPEG XL writes them.
struct Bits<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Bits<'_> {
    fn read(&mut self, count: u32) -> Result<u32, ()> {
        let mut value = 0;
        for i in 0..count {
            let byte = *self.bytes.get(self.at / 8).ok_or(())?;
            value |= u32::from((byte >> (self.at % 8)) & 1) << i;
            self.at += 1;
        }
        Ok(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ftyp(major: &[u8; 4], compatible: &[&[u8; 4]]) -> Vec<u8> {
        let size = 16 + 4 * compatible.len() as u32;
        let mut out = size.to_be_bytes().to_vec();
        out.extend_from_slice(b"ftyp");
        out.extend_from_slice(major);
        out.extend_from_slice(&[0; 4]);
        compatible.iter().for_each(|brand| out.extend_from_slice(*brand));
        out.extend_from_slice(b"\0\0\0\x08meta");
        out
    }

    /// HEIC by its major brand, or HEIF's generic brand with a HEVC one among the compatible
    /// brands; AVIF (the same container) is not HEIC.
    #[test]
    fn heic_is_known_by_its_brands() {
        assert!(is_heic(&ftyp(b"heic", &[b"mif1", b"heic"])));
        assert!(is_heic(&ftyp(b"mif1", &[b"mif1", b"heic", b"hevc"])));
        assert!(!is_heic(&ftyp(b"avif", &[b"mif1", b"avif"])));
        assert!(!is_heic(&ftyp(b"mif1", &[b"mif1", b"avif", b"heic"])));
        assert!(!is_heic(&ftyp(b"mif1", &[b"mif1", b"miaf"])));
        // The compatible brands end with the box, not with the file.
        let mut cut = ftyp(b"mif1", &[b"mif1"]);
        cut.extend_from_slice(b"heic");
        assert!(!is_heic(&cut));
        assert!(!is_heic(b"\0\0\0\x0Cftyphe"));
    }

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
        // NETSCAPE counts repeats: 5 more after the first play.
        assert_eq!(gif(&gif_file(1, Some(5))).unwrap().loops, Some(6));
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

    /// A bare codestream's size header, bits least significant first: `small`, then the height
    /// (a selector: 0 for 9 bits + 1, 1 for 13 bits + 1), the ratio, and maybe the width, then
    /// ImageMetadata's first bits.
    fn jxl_header(fields: &[(u32, u32)]) -> Vec<u8> {
        let mut out = vec![0xFF, 0x0A];
        let mut at = 0usize;
        for &(value, count) in fields {
            for i in 0..count {
                if at / 8 == out.len() - 2 {
                    out.push(0);
                }
                let last = out.len() - 1;
                out[last] |= (((value >> i) & 1) as u8) << (at % 8);
                at += 1;
            }
        }
        out
    }

    #[test]
    fn jpeg_xl_sizes_follow_the_ratios_and_the_orientation() {
        // 1000 high at 4:3 is 1333 wide (1000 * 4 / 3, as libjxl and jxl-oxide compute it).
        let four_thirds = jxl_header(&[(0, 1), (1, 2), (999, 13), (3, 3), (1, 1)]);
        assert_eq!(jxl(&four_thirds), Ok((1333, 1000)));
        // Small: 8 high at 16:9 is 14 wide.
        assert_eq!(jxl(&jxl_header(&[(1, 1), (0, 5), (5, 3), (1, 1)])), Ok((14, 8)));
        // 320x200 given, turned by orientation 6 (all_default 0, extra_fields 1, 5 = 6 - 1).
        let turned = jxl_header(&[(0, 1), (0, 2), (199, 9), (0, 3), (0, 2), (319, 9), (0, 1), (1, 1), (5, 3)]);
        assert_eq!(jxl(&turned), Ok((200, 320)));
        assert!(jxl(&[0xFF, 0x0A]).is_err());
    }

    #[test]
    fn a_frame_larger_than_the_screen_grows_the_canvas() {
        let mut file = gif_file(1, None);
        // The frame's descriptor: 2x2 at 0,0 becomes 4096x300 at 10,20.
        let descriptor = 13 + 6 + 8 + 1;
        file[descriptor..descriptor + 8].copy_from_slice(&[10, 0, 20, 0, 0, 16, 44, 1]);
        let scan = gif(&file).unwrap();
        assert_eq!((scan.width, scan.height), (4106, 320));
    }

    #[test]
    fn a_webp_with_a_chunk_size_near_u32_max_ends_the_scan() {
        let mut file = b"RIFF\0\0\0\0WEBPVP8X\x0A\0\0\0\x02\0\0\0\x09\0\0\x04\0\0".to_vec();
        file.extend_from_slice(b"ANMF\xFF\xFF\xFF\xFF");
        let scan = webp(&file).unwrap();
        assert_eq!((scan.width, scan.height, scan.frames), (10, 5, 1));
    }
}
