//! PNG input read as libpng and browsers read it, where the png crate differs.

use std::borrow::Cow;

/// A grey PNG's transparency key wider than its bit depth (a 1-bit image keyed on 255): libpng
/// masks the key to the depth (255 -> 1, so white is transparent) and browsers follow; the png
/// crate compares it whole, so no pixel matches and the image comes out opaque. Returns the file
/// with the key masked and its chunk's checksum redone, or the file as it is.
pub fn mask_grey_key(input: &[u8]) -> Cow<'_, [u8]> {
    // The signature, then IHDR: length, type, width, height, bit depth, colour type.
    if input.len() < 33 || !input.starts_with(b"\x89PNG\r\n\x1a\n") || &input[12..16] != b"IHDR" {
        return Cow::Borrowed(input);
    }
    let (depth, colour_type) = (input[24], input[25]);
    if colour_type != 0 || !matches!(depth, 1 | 2 | 4 | 8) {
        return Cow::Borrowed(input);
    }
    let max = (1u16 << depth) - 1;
    let mut at = 8;
    while let Some(header) = input.get(at..at + 8) {
        let length = u32::from_be_bytes([header[0], header[1], header[2], header[3]]) as usize;
        match &header[4..8] {
            // tRNS comes before the image data, or not at all.
            b"IDAT" => break,
            b"tRNS" if length == 2 && input.len() >= at + 14 => {
                let key = u16::from_be_bytes([input[at + 8], input[at + 9]]);
                if key <= max {
                    break;
                }
                let mut fixed = input.to_vec();
                fixed[at + 8..at + 10].copy_from_slice(&(key & max).to_be_bytes());
                let crc = crc32fast::hash(&fixed[at + 4..at + 10]);
                fixed[at + 10..at + 14].copy_from_slice(&crc.to_be_bytes());
                return Cow::Owned(fixed);
            }
            _ => {}
        }
        // A length near the top of u32 would wrap on wasm32: such a file has no tRNS to fix.
        let Some(next) = length.checked_add(12).and_then(|step| at.checked_add(step)) else { break };
        at = next;
    }
    Cow::Borrowed(input)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The chunks of a 1x1 grey PNG at `depth` with transparency key `key` (no image data).
    fn grey_png(depth: u8, key: u16) -> Vec<u8> {
        // Built by hand: the encoders write no tRNS for grey.
        let chunk = |kind: &[u8], data: &[u8]| {
            let mut c = (data.len() as u32).to_be_bytes().to_vec();
            c.extend_from_slice(kind);
            c.extend_from_slice(data);
            let crc = crc32fast::hash(&c[4..]);
            c.extend_from_slice(&crc.to_be_bytes());
            c
        };
        let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
        png.extend(chunk(b"IHDR", &[0, 0, 0, 1, 0, 0, 0, 1, depth, 0, 0, 0, 0]));
        png.extend(chunk(b"tRNS", &key.to_be_bytes()));
        png.extend(chunk(b"IEND", &[]));
        png
    }

    #[test]
    fn a_key_wider_than_the_depth_is_masked() {
        let keyed = grey_png(1, 255);
        let fixed = mask_grey_key(&keyed);
        assert!(matches!(fixed, Cow::Owned(_)));
        let at = fixed.windows(4).position(|w| w == b"tRNS").unwrap();
        assert_eq!(&fixed[at + 4..at + 6], &[0, 1]);
        assert_eq!(&fixed[at + 6..at + 10], &crc32fast::hash(&fixed[at..at + 6]).to_be_bytes());
    }

    #[test]
    fn a_key_within_the_depth_and_other_files_are_left_alone() {
        let (within, eight_bit) = (grey_png(1, 1), grey_png(8, 255));
        assert!(matches!(mask_grey_key(&within), Cow::Borrowed(_)));
        assert!(matches!(mask_grey_key(&eight_bit), Cow::Borrowed(_)));
        assert!(matches!(mask_grey_key(b"not a png at all, but long enough to look"), Cow::Borrowed(_)));
    }
}
