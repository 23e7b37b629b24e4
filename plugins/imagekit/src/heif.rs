//! HEIC in: the default plugins' decoder for what phones save (libheif with libde265, built into
//! the plugin by the pixbox-heif crate), giving what the kit's decode layer gives for every other
//! format: size checked before any pixel is decoded, display orientation, 8 bits, sRGB.

use pixbox_kit::{DynamicImage, Error, PixelLimits};

/// Decodes the primary image at full size. HEIF's own rotation and mirroring are applied by
/// libheif (they win over an EXIF orientation, which is not applied again).
pub fn decode(input: &[u8], limits: PixelLimits) -> Result<DynamicImage, Error> {
    let mut refused = None;
    let decoded = pixbox_heif::decode(input, limits.max_side, |width, height| match limits.check(width, height) {
        Ok(()) => true,
        Err(e) => {
            refused = Some(e);
            false
        }
    });
    let decoded = match (decoded, refused) {
        (_, Some(refusal)) => return Err(refusal),
        (Ok(decoded), None) => decoded,
        (Err(pixbox_heif::Error::BadInput(m)), None) => {
            return Err(Error::BadInput(format!("cannot decode the HEIC image: {m}")));
        }
        (Err(pixbox_heif::Error::Unsupported(m)), None) => {
            return Err(Error::Unsupported(format!("HEIC image not supported: {m}")));
        }
        // The same end as Rust code running out: the allocator's failure traps the instance and
        // the host reports the plugin's memory cap.
        (Err(pixbox_heif::Error::OutOfMemory), None) => std::alloc::handle_alloc_error(std::alloc::Layout::new::<u8>()),
        (Err(e), None) => return Err(Error::Internal(e.to_string())),
    };
    let (width, height) = (decoded.width, decoded.height);
    let image = match decoded.has_alpha {
        true => image::RgbaImage::from_raw(width, height, decoded.pixels).map(DynamicImage::ImageRgba8),
        false => image::RgbImage::from_raw(width, height, decoded.pixels).map(DynamicImage::ImageRgb8),
    }
    .ok_or_else(|| Error::Internal(format!("libheif's pixels do not fill {width}x{height}")))?;
    match (decoded.icc, decoded.cicp) {
        (Some(icc), _) => pixbox_kit::to_srgb(image, Some(&icc)),
        (None, Some((primaries, transfer))) => pixbox_kit::cicp_to_srgb(image, primaries, transfer),
        (None, None) => Ok(image),
    }
}
