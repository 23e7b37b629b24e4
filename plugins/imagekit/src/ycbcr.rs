//! RGB to YCbCr for the JPEG encoder, 16 pixels at a time in WebAssembly SIMD (simd128), with
//! 4:2:2 chroma averaged here rather than in the encoder.
//!
//! jpeg-encoder converts one pixel at a time and averages chroma with a division per sample;
//! in the sandbox the two took a quarter of a resize's encode. The encoder's public
//! `ImageBuffer` lets a caller fill its rows: this fills them with the encoder's own arithmetic
//! (`jpeg_encoder::rgb_to_ycbcr`), so the file written is byte for byte the one the encoder
//! writes by itself (`the_encoder_writes_the_same_bytes_from_this_buffer`).

use jpeg_encoder::{ImageBuffer, JpegColorType};

/// 8-bit RGB pixels, to be written as YCbCr, chroma halved horizontally or not.
pub(crate) struct Rgb<'a> {
    pixels: &'a [u8],
    width: u16,
    height: u16,
    halve_chroma: bool,
}

impl<'a> Rgb<'a> {
    /// `pixels` starts with `width` x `height` RGB pixels (the rest is ignored, as the encoder
    /// does). With `halve_chroma`, the encoder must be set to 4:2:2 (`SamplingFactor::F_2_1`) and
    /// to `ChromaSubsamplingMethod::Nearest`: it then reads the averages this writes instead of
    /// averaging itself.
    pub(crate) fn new(pixels: &'a [u8], width: u16, height: u16, halve_chroma: bool) -> Self {
        let len = usize::from(width) * usize::from(height) * 3;
        assert!(pixels.len() >= len, "fewer than {width}x{height} RGB pixels");
        Rgb { pixels: &pixels[..len], width, height, halve_chroma }
    }
}

impl ImageBuffer for Rgb<'_> {
    fn get_jpeg_color_type(&self) -> JpegColorType {
        JpegColorType::Ycbcr
    }

    fn width(&self) -> u16 {
        self.width
    }

    fn height(&self) -> u16 {
        self.height
    }

    /// Appends row `y` to the component buffers (the encoder collects a block row's worth).
    fn fill_buffers(&self, y: u16, buffers: &mut [Vec<u8>; 4]) {
        let width = usize::from(self.width);
        let row = &self.pixels[usize::from(y) * width * 3..][..width * 3];
        let [luma, cb, cr, _] = buffers;
        let start = luma.len();
        for plane in [&mut *luma, &mut *cb, &mut *cr] {
            plane.resize(start + width, 0);
        }
        let (luma, cb, cr) = (&mut luma[start..], &mut cb[start..], &mut cr[start..]);
        convert(row, luma, cb, cr);
        if self.halve_chroma {
            average_pairs(cb);
            average_pairs(cr);
        }
    }
}

/// Each pair of samples' average goes where the encoder's `Nearest` sampling reads it, the first
/// of the pair, rounded as jpeg-encoder's (and libjpeg's) `Average` does: down for even pairs,
/// up for odd ones. The second keeps its own value: it is what the encoder copies into the
/// padding past the right edge, whose pairs must average to the last pixel as before. A lone
/// last sample (odd width) pairs with its own copy in the padding: its average is itself.
fn average_pairs(samples: &mut [u8]) {
    for (k, pair) in samples.chunks_exact_mut(2).enumerate() {
        pair[0] = ((u16::from(pair[0]) + u16::from(pair[1]) + (k & 1) as u16) >> 1) as u8;
    }
}

/// The whole row: SIMD for runs of 16 pixels where the target has it, then one pixel at a time.
fn convert(rgb: &[u8], luma: &mut [u8], cb: &mut [u8], cr: &mut [u8]) {
    #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
    let done = simd::convert(rgb, luma, cb, cr);
    #[cfg(not(all(target_arch = "wasm32", target_feature = "simd128")))]
    let done = 0;
    for (i, pixel) in rgb.chunks_exact(3).enumerate().skip(done) {
        (luma[i], cb[i], cr[i]) = jpeg_encoder::rgb_to_ycbcr(pixel[0], pixel[1], pixel[2]);
    }
}

#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
mod simd {
    use core::arch::wasm32::*;

    /// Converts the row's whole runs of 16 pixels; returns how many pixels that was.
    pub(super) fn convert(rgb: &[u8], luma: &mut [u8], cb: &mut [u8], cr: &mut [u8]) -> usize {
        let runs = rgb.len() / 48;
        for run in 0..runs {
            let input = &rgb[run * 48..][..48];
            let [in0, in1, in2] = [0, 16, 32].map(|at| load(&input[at..at + 16]));
            // Deinterleave: channel c of pixel p is byte 3p + c of the 48.
            let r = u8x16_shuffle::<0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 17, 20, 23, 26, 29>(
                u8x16_shuffle::<0, 3, 6, 9, 12, 15, 18, 21, 24, 27, 30, 0, 0, 0, 0, 0>(in0, in1),
                in2,
            );
            let g = u8x16_shuffle::<0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 18, 21, 24, 27, 30>(
                u8x16_shuffle::<1, 4, 7, 10, 13, 16, 19, 22, 25, 28, 31, 0, 0, 0, 0, 0>(in0, in1),
                in2,
            );
            let b = u8x16_shuffle::<0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 16, 19, 22, 25, 28, 31>(
                u8x16_shuffle::<2, 5, 8, 11, 14, 17, 20, 23, 26, 29, 0, 0, 0, 0, 0, 0>(in0, in1),
                in2,
            );
            let (r, g, b) = (widen(r), widen(g), widen(b));
            // jpeg_encoder::rgb_to_ycbcr's fixed point: 16 fraction bits, rounded; every result
            // is within 0..=255, so the saturating narrowing changes nothing.
            let channel = |kr: i32, kg: i32, kb: i32, offset: i32| {
                narrow(std::array::from_fn(|i| {
                    let sum = i32x4_add(
                        i32x4_add(i32x4_mul(r[i], i32x4_splat(kr)), i32x4_mul(g[i], i32x4_splat(kg))),
                        i32x4_add(i32x4_mul(b[i], i32x4_splat(kb)), i32x4_splat(offset + 0x7FFF)),
                    );
                    i32x4_shr(sum, 16)
                }))
            };
            store(&mut luma[run * 16..][..16], channel(19595, 38470, 7471, 0));
            store(&mut cb[run * 16..][..16], channel(-11059, -21709, 32768, 128 << 16));
            store(&mut cr[run * 16..][..16], channel(32768, -27439, -5329, 128 << 16));
        }
        runs * 16
    }

    fn load(bytes: &[u8]) -> v128 {
        assert_eq!(bytes.len(), 16);
        // SAFETY: 16 readable bytes (checked above); v128.load has no alignment requirement.
        #[allow(unsafe_code)]
        unsafe {
            v128_load(bytes.as_ptr().cast())
        }
    }

    fn store(bytes: &mut [u8], value: v128) {
        assert_eq!(bytes.len(), 16);
        // SAFETY: 16 writable bytes (checked above); v128.store has no alignment requirement.
        #[allow(unsafe_code)]
        unsafe {
            v128_store(bytes.as_mut_ptr().cast(), value)
        }
    }

    /// 16 bytes as four vectors of four 32-bit lanes.
    fn widen(bytes: v128) -> [v128; 4] {
        let (low, high) = (u16x8_extend_low_u8x16(bytes), u16x8_extend_high_u8x16(bytes));
        [
            u32x4_extend_low_u16x8(low),
            u32x4_extend_high_u16x8(low),
            u32x4_extend_low_u16x8(high),
            u32x4_extend_high_u16x8(high),
        ]
    }

    /// Four vectors of 32-bit lanes back to 16 bytes.
    fn narrow(lanes: [v128; 4]) -> v128 {
        u8x16_narrow_i16x8(i16x8_narrow_i32x4(lanes[0], lanes[1]), i16x8_narrow_i32x4(lanes[2], lanes[3]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jpeg_encoder::{ChromaSubsamplingMethod, ColorType, Encoder, SamplingFactor};

    /// Pixels with edges, gradients and noise in every channel.
    fn pixels(width: u16, height: u16) -> Vec<u8> {
        let mut state = 0x2545_f491_u32;
        (0..usize::from(width) * usize::from(height) * 3)
            .map(|i| {
                state ^= state << 13;
                state ^= state >> 17;
                state ^= state << 5;
                let (x, y) = ((i / 3) % usize::from(width), (i / 3) / usize::from(width));
                let smooth = (x * 7 + y * 3 + (i % 3) * 60) as u32;
                if (x / 5 + y / 7) % 3 == 0 { (state & 0xFF) as u8 } else { (smooth & 0xFF) as u8 }
            })
            .collect()
    }

    #[test]
    fn the_encoder_writes_the_same_bytes_from_this_buffer() {
        // Widths: whole 16-pixel runs, an odd width, one that leaves a tail; 4:2:2 and 4:4:4.
        for (width, height) in [(64, 16), (37, 9), (130, 21), (1, 1), (2, 3)] {
            let rgb = pixels(width, height);
            for halve in [true, false] {
                let sampling = if halve { SamplingFactor::F_2_1 } else { SamplingFactor::F_1_1 };
                let mut own = Vec::new();
                let mut encoder = Encoder::new(&mut own, 85);
                encoder.set_sampling_factor(sampling);
                encoder.set_chroma_subsampling_method(ChromaSubsamplingMethod::Average);
                encoder.encode(&rgb, width, height, ColorType::Rgb).unwrap();

                let mut ours = Vec::new();
                let mut encoder = Encoder::new(&mut ours, 85);
                encoder.set_sampling_factor(sampling);
                encoder.set_chroma_subsampling_method(ChromaSubsamplingMethod::Nearest);
                encoder.encode_image(Rgb::new(&rgb, width, height, halve)).unwrap();
                assert!(own == ours, "{width}x{height}, chroma halved: {halve}: the files differ");
            }
        }
    }
}
