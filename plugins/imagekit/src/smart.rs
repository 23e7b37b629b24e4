//! `gravity = "smart"`: the crop window chosen from the image's content, for `cover` and `crop`.
//!
//! In the spirit of libvips' "attention" strategy (imgproxy's smart gravity), on a copy of at
//! most 128 pixels on its long side: every pixel scores how much its colour stands out from the
//! rest of the picture (histogram contrast in CIELAB, top decile only), more when vivid, plus skin
//! tones; the window of the requested shape holding the most interest wins, the most central one
//! among equals, so a flat image is cropped at its centre. BENCHMARKS.md ("Smart crops") measures
//! how much of a hand-marked subject it keeps on real photos, against a centre crop.

use image::DynamicImage;

use crate::Error;

/// Long side of the analysed copy: enough for subjects, cheap to score every window of.
const SIDE: u32 = 128;
/// Weight of a skin-toned pixel, relative to the rarest colour (1.0).
const SKIN_WEIGHT: f32 = 0.5;
/// How strongly a window's distance from the centre counts against it: enough to pick the
/// centre among equals, far too little to beat a real difference in content.
const CENTRE_BIAS: f64 = 1e-3;

/// The centre, as fractions of the width and height, of the `window_w` x `window_h` (in the
/// image's pixels) window of `image` with the most interest.
pub fn focus(image: &DynamicImage, window_w: f64, window_h: f64) -> Result<(f64, f64), Error> {
    let (w, h) = (image.width(), image.height());
    let scale = (f64::from(SIDE) / f64::from(w.max(h))).min(1.0);
    let sw = ((f64::from(w) * scale).round() as u32).max(1);
    let sh = ((f64::from(h) * scale).round() as u32).max(1);
    let interest = interest_map(&crate::shrink_cheaply(image, sw, sh)?.to_rgb8());
    let (ww, wh) = (
        ((window_w * scale).round() as usize).clamp(1, sw as usize),
        ((window_h * scale).round() as usize).clamp(1, sh as usize),
    );
    let (x, y) = best_window(&interest, sw as usize, sh as usize, ww, wh);
    let centre = |start: usize, len: usize, whole: u32| (start as f64 + len as f64 / 2.0) / f64::from(whole);
    Ok((centre(x, ww, sw), centre(y, wh, sh)))
}

/// Interest per pixel: how rare its colour is in the image (histogram contrast: the distance in
/// CIELAB to every other colour, weighted by how often that colour occurs), kept only where it
/// stands out (above the 90th percentile, squared), plus skin tones. A subject is usually what
/// differs from the rest of the picture; texture that fills the frame (moss, clouds, leaves) is
/// common, so it scores low however detailed it is.
fn interest_map(rgb: &image::RgbImage) -> Vec<f32> {
    const LEVELS: usize = 8;
    let bin = |p: &image::Rgb<u8>| {
        let q = |c: u8| usize::from(c) * LEVELS / 256;
        (q(p[0]) * LEVELS + q(p[1])) * LEVELS + q(p[2])
    };
    let mut counts = vec![0u32; LEVELS * LEVELS * LEVELS];
    for p in rgb.pixels() {
        counts[bin(p)] += 1;
    }
    let centre = |level: usize| ((level * 256 + 128) / LEVELS) as u8;
    let lab: Vec<[f32; 3]> = (0..counts.len())
        .map(|b| to_lab([centre(b / (LEVELS * LEVELS)), centre(b / LEVELS % LEVELS), centre(b % LEVELS)]))
        .collect();
    let used: Vec<usize> = (0..counts.len()).filter(|&b| counts[b] > 0).collect();
    let total = rgb.pixels().len().max(1) as f32;
    let mut rarity = vec![0.0f32; counts.len()];
    for &i in &used {
        rarity[i] = used
            .iter()
            .map(|&j| {
                let d = (0..3).map(|k| (lab[i][k] - lab[j][k]).powi(2)).sum::<f32>().sqrt();
                counts[j] as f32 / total * d
            })
            .sum();
    }
    let mut interest: Vec<f32> = rgb.pixels().map(|p| rarity[bin(p)]).collect();
    let mut sorted = interest.clone();
    sorted.sort_by(f32::total_cmp);
    let threshold = sorted[sorted.len() * 9 / 10];
    let top = sorted.last().copied().unwrap_or(0.0).max(f32::EPSILON);
    for (value, p) in interest.iter_mut().zip(rgb.pixels()) {
        let stands_out = ((*value - threshold) / top).max(0.0);
        let [r, g, b] = p.0.map(f32::from);
        let (max, min) = (r.max(g).max(b), r.min(g).min(b));
        // Skin (Kovač et al.'s daylight rule), a strong hint of people.
        let skin = r > 95.0 && g > 40.0 && b > 20.0 && max - min > 15.0 && (r - g).abs() > 15.0 && r > g && r > b;
        // Vivid colour counts more than pale: white clouds are as rare in a blue sky as a kite.
        let saturation = if max > 0.0 { (max - min) / max } else { 0.0 };
        *value = stands_out * stands_out * (0.25 + saturation) + if skin { SKIN_WEIGHT } else { 0.0 };
    }
    interest
}

/// CIELAB (D65) of an sRGB colour.
fn to_lab(rgb: [u8; 3]) -> [f32; 3] {
    let linear = |c: u8| {
        let c = f32::from(c) / 255.0;
        if c <= 0.04045 { c / 12.92 } else { ((c + 0.055) / 1.055).powf(2.4) }
    };
    let [r, g, b] = rgb.map(linear);
    let x = (0.4124 * r + 0.3576 * g + 0.1805 * b) / 0.95047;
    let y = 0.2126 * r + 0.7152 * g + 0.0722 * b;
    let z = (0.0193 * r + 0.1192 * g + 0.9505 * b) / 1.08883;
    let f = |t: f32| if t > 216.0 / 24389.0 { t.cbrt() } else { (24389.0 / 27.0 * t + 16.0) / 116.0 };
    let (fx, fy, fz) = (f(x), f(y), f(z));
    [116.0 * fy - 16.0, 500.0 * (fx - fy), 200.0 * (fy - fz)]
}

/// Top-left corner of the `ww` x `wh` window with the largest sum (a summed-area table makes
/// each window O(1)); the most central of equal windows.
fn best_window(interest: &[f32], w: usize, h: usize, ww: usize, wh: usize) -> (usize, usize) {
    // table[(y) * (w + 1) + x] = sum of interest[..y][..x].
    let mut table = vec![0.0f64; (w + 1) * (h + 1)];
    for y in 0..h {
        let mut row = 0.0;
        for x in 0..w {
            row += f64::from(interest[y * w + x]);
            table[(y + 1) * (w + 1) + x + 1] = table[y * (w + 1) + x + 1] + row;
        }
    }
    let sum = |x: usize, y: usize| {
        table[(y + wh) * (w + 1) + x + ww] - table[y * (w + 1) + x + ww] - table[(y + wh) * (w + 1) + x]
            + table[y * (w + 1) + x]
    };
    let (cx, cy) = ((w - ww) as f64 / 2.0, (h - wh) as f64 / 2.0);
    let total = table[h * (w + 1) + w].max(1.0);
    let mut best = ((cx.round() as usize, cy.round() as usize), f64::MIN);
    for y in 0..=h - wh {
        for x in 0..=w - ww {
            let off_centre = ((x as f64 - cx).powi(2) + (y as f64 - cy).powi(2)).sqrt() / (w.max(h) as f64);
            let score = sum(x, y) / total - CENTRE_BIAS * off_centre;
            if score > best.1 {
                best = ((x, y), score);
            }
        }
    }
    best.0
}
