//! Colour management: pixels tagged with an ICC profile are converted to sRGB after decoding.
//!
//! Outputs carry no profile (the encoders write pixels only), and an untagged image is shown as
//! sRGB. A Display-P3 phone photo whose numbers were passed through unchanged would lose its
//! saturation; converted, its colours match the original's wherever sRGB can show them (colours
//! outside sRGB are clipped, relative colorimetric intent).

use image::DynamicImage;
use moxcms::{ColorProfile, DataColorSpace, Layout, TransformOptions, Xyzd};

use crate::error::Error;

/// How far (in XYZ) a profile's primaries may be from sRGB's and still count as sRGB; ICC stores
/// them as s15.16 fixed point, and profiles written by different tools round differently.
const SAME_PRIMARIES: f64 = 0.002;

/// `image` in sRGB. No profile, a profile that cannot be read (shown as stored, like a broken
/// EXIF block), a non-RGB profile or sRGB's own primaries leave the pixels as they are.
pub fn to_srgb(image: DynamicImage, icc: Option<&[u8]>) -> Result<DynamicImage, Error> {
    let Some(profile) = icc.and_then(|icc| ColorProfile::new_from_slice(icc).ok()) else { return Ok(image) };
    convert(image, profile)
}

/// `image` in sRGB, for pixels described by coding-independent code points (ISO/IEC 23091-2, as
/// HEIF's `nclx` colour box and video headers give them) rather than an ICC profile: Display P3
/// (primaries 12) with the sRGB tone curve (transfer 13, or 1 as phones also write it) is
/// converted; anything else is shown as stored, sRGB (primaries 1 or unspecified) included.
pub fn cicp_to_srgb(image: DynamicImage, primaries: u8, transfer: u8) -> Result<DynamicImage, Error> {
    match (primaries, transfer) {
        (12, 1 | 13) => convert(image, ColorProfile::new_display_p3()),
        _ => Ok(image),
    }
}

fn convert(image: DynamicImage, profile: ColorProfile) -> Result<DynamicImage, Error> {
    if profile.color_space != DataColorSpace::Rgb || is_srgb(&profile) {
        return Ok(image);
    }
    let (layout, channels) = match &image {
        DynamicImage::ImageRgb8(_) => (Layout::Rgb, 3),
        DynamicImage::ImageRgba8(_) => (Layout::Rgba, 4),
        // Gray pixels with an RGB profile, or 16-bit ones: rare enough to show as stored.
        _ => return Ok(image),
    };
    let srgb = ColorProfile::new_srgb();
    let Ok(transform) = profile.create_transform_8bit(layout, &srgb, layout, TransformOptions::default()) else {
        // A profile moxcms cannot build a transform for (an unusual LUT layout): as stored.
        return Ok(image);
    };
    let row_len = image.width() as usize * channels;
    let mut image = image;
    let pixels: &mut [u8] = match &mut image {
        DynamicImage::ImageRgb8(rgb) => rgb,
        DynamicImage::ImageRgba8(rgba) => rgba,
        _ => unreachable!("matched above"),
    };
    // Row by row through one row-sized buffer: the image is never held twice.
    let mut converted = vec![0u8; row_len];
    for row in pixels.chunks_exact_mut(row_len) {
        transform
            .transform(row, &mut converted)
            .map_err(|e| Error::Internal(format!("colour conversion failed: {e}")))?;
        row.copy_from_slice(&converted);
    }
    Ok(image)
}

/// Whether the profile has sRGB's primaries (its tone curves are taken to be sRGB's too).
fn is_srgb(profile: &ColorProfile) -> bool {
    let srgb = ColorProfile::new_srgb();
    let near = |a: &Xyzd, b: &Xyzd| {
        (a.x - b.x).abs() < SAME_PRIMARIES && (a.y - b.y).abs() < SAME_PRIMARIES && (a.z - b.z).abs() < SAME_PRIMARIES
    };
    profile.lut_a_to_b_colorimetric.is_none()
        && profile.lut_a_to_b_perceptual.is_none()
        && near(&profile.red_colorant, &srgb.red_colorant)
        && near(&profile.green_colorant, &srgb.green_colorant)
        && near(&profile.blue_colorant, &srgb.blue_colorant)
}
