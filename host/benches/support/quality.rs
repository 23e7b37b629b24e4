//! Image quality measures shared by the benchmarks.

use fast_image_resize as fr;
use image::{DynamicImage, GrayImage};

/// Mean SSIM over 8x8 windows every 4 pixels (the usual constants), or `None` when sizes differ.
pub fn ssim(a: &GrayImage, b: &GrayImage) -> Option<f64> {
    if a.dimensions() != b.dimensions() || a.width() < 8 || a.height() < 8 {
        return None;
    }
    let (c1, c2) = ((0.01f64 * 255.0).powi(2), (0.03f64 * 255.0).powi(2));
    let (mut total, mut windows) = (0.0, 0u32);
    for y in (0..=a.height() - 8).step_by(4) {
        for x in (0..=a.width() - 8).step_by(4) {
            let (mut sa, mut sb, mut saa, mut sbb, mut sab) = (0.0, 0.0, 0.0, 0.0, 0.0);
            for dy in 0..8 {
                for dx in 0..8 {
                    let pa = f64::from(a.get_pixel(x + dx, y + dy).0[0]);
                    let pb = f64::from(b.get_pixel(x + dx, y + dy).0[0]);
                    sa += pa;
                    sb += pb;
                    saa += pa * pa;
                    sbb += pb * pb;
                    sab += pa * pb;
                }
            }
            let n = 64.0;
            let (ma, mb) = (sa / n, sb / n);
            let (va, vb, cov) = (saa / n - ma * ma, sbb / n - mb * mb, sab / n - ma * mb);
            total += ((2.0 * ma * mb + c1) * (2.0 * cov + c2)) / ((ma * ma + mb * mb + c1) * (va + vb + c2));
            windows += 1;
        }
    }
    Some(total / f64::from(windows))
}

/// The best the plugin could do: full-size decode, Lanczos3 to the fitted size, no encoding.
pub fn reference(input: &[u8], options: &imagekit::Options) -> GrayImage {
    let image = imagekit::decode(input, options).unwrap();
    let (w, h) = imagekit::fit(image.width(), image.height(), options);
    let src = DynamicImage::ImageRgb8(image.to_rgb8());
    let mut dst = DynamicImage::new_rgb8(w, h);
    fr::Resizer::new()
        .resize(
            &src,
            &mut dst,
            &fr::ResizeOptions::new().resize_alg(fr::ResizeAlg::Convolution(fr::FilterType::Lanczos3)),
        )
        .unwrap();
    dst.to_luma8()
}
