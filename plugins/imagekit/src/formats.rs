//! The modern output formats: lossy WebP (VP8, libwebp's C encoder built for wasm32-wasip2) and
//! AVIF (AV1, through rav1e, pure Rust).

use image::DynamicImage;

use crate::Error;

/// rav1e's speed preset (1 slowest .. 10 fastest). Inside the sandbox, without SIMD, 10 keeps a
/// 1024-pixel AVIF within a few times a JPEG's encode time; BENCHMARKS.md has the figures.
pub const AVIF_SPEED: u8 = 10;

/// Lossy WebP at `quality` (1..=100), with alpha when the image has it: libwebp's encoder with
/// the settings `cwebp -q <quality>` uses, so bytes and error match what libwebp users expect
/// (BENCHMARKS.md compares the two).
// libwebp is C: each call below says why it is sound.
#[allow(unsafe_code)]
pub fn webp_lossy(image: &DynamicImage, quality: u8, out: &mut Vec<u8>) -> Result<(), Error> {
    use libwebp_sys as webp;

    /// Appends each piece libwebp writes to the `Vec` behind `custom_ptr`, so the encoded file is
    /// built in place instead of in a second buffer libwebp allocates.
    unsafe extern "C" fn append(data: *const u8, size: usize, picture: *const webp::WebPPicture) -> i32 {
        // SAFETY: libwebp passes the picture `webp_lossy` set up, whose `custom_ptr` is the
        // `&mut Vec<u8>` borrowed for the whole `WebPEncode` call, and `size` readable bytes at
        // `data` (none when `size` is 0).
        unsafe {
            let out = &mut *(*picture).custom_ptr.cast::<Vec<u8>>();
            if size > 0 {
                out.extend_from_slice(std::slice::from_raw_parts(data, size));
            }
        }
        1
    }

    let failed = |what: &str| Error::Internal(format!("WebP encoding failed: {what}"));
    let config =
        webp::WebPConfig::new_with_preset(webp::WebPPreset::WEBP_PRESET_DEFAULT, f32::from(quality.clamp(1, 100)))
            .map_err(|()| failed("libwebp rejected its own default configuration"))?;
    let mut picture = webp::WebPPicture::new().map_err(|()| failed("libwebp version mismatch"))?;
    let (w, h) = (image.width(), image.height());
    picture.width = i32::try_from(w).map_err(|_| failed("image too wide"))?;
    picture.height = i32::try_from(h).map_err(|_| failed("image too tall"))?;
    // The resized image is already 8-bit RGB(A) as a rule: borrowed, not copied.
    let pixels = match image {
        DynamicImage::ImageRgb8(_) | DynamicImage::ImageRgba8(_) => std::borrow::Cow::Borrowed(image),
        other if other.color().has_alpha() => std::borrow::Cow::Owned(DynamicImage::ImageRgba8(other.to_rgba8())),
        other => std::borrow::Cow::Owned(DynamicImage::ImageRgb8(other.to_rgb8())),
    };
    let stride = i32::try_from(w as usize * usize::from(pixels.color().bytes_per_pixel()))
        .map_err(|_| failed("row too long"))?;
    // SAFETY: `picture` was initialised by libwebp and sized above; `pixels` holds `h` rows of
    // `stride` bytes and outlives the import, which copies them into the picture's own planes.
    let imported = unsafe {
        match &*pixels {
            DynamicImage::ImageRgba8(p) => webp::WebPPictureImportRGBA(&mut picture, p.as_ptr(), stride),
            _ => webp::WebPPictureImportRGB(&mut picture, pixels.as_bytes().as_ptr(), stride),
        }
    };
    drop(pixels);
    picture.writer = Some(append);
    picture.custom_ptr = std::ptr::from_mut(out).cast();
    // SAFETY: `config` and `picture` are initialised; `custom_ptr` points at `out`, which is not
    // touched elsewhere until `WebPEncode` returns; `WebPPictureFree` releases the planes the
    // import allocated, whatever the outcome.
    let encoded = unsafe {
        let encoded = imported != 0 && webp::WebPEncode(&config, &mut picture) != 0;
        webp::WebPPictureFree(&mut picture);
        encoded
    };
    if encoded { Ok(()) } else { Err(failed(&format!("libwebp error {:?}", picture.error_code))) }
}

/// AVIF at `quality` (1..=100, ravif's scale), 8-bit, with alpha when the image has it.
pub fn avif(image: &DynamicImage, quality: u8, out: &mut Vec<u8>) -> Result<(), Error> {
    let (w, h) = (image.width() as usize, image.height() as usize);
    let encoder = ravif::Encoder::new()
        .with_quality(f32::from(quality.clamp(1, 100)))
        .with_speed(AVIF_SPEED)
        // 8-bit: 10-bit is rav1e's advice for quality but costs time the sandbox budget needs.
        .with_bit_depth(ravif::BitDepth::Eight)
        .with_num_threads(Some(1));
    let encoded = if image.color().has_alpha() {
        let rgba = image.to_rgba8();
        let pixels: Vec<ravif::RGBA8> =
            rgba.as_raw().chunks_exact(4).map(|p| ravif::RGBA8::new(p[0], p[1], p[2], p[3])).collect();
        drop(rgba);
        encoder.encode_rgba(ravif::Img::new(&pixels[..], w, h))
    } else {
        let pixels: Vec<ravif::RGB8> = match image {
            DynamicImage::ImageRgb8(rgb) => {
                rgb.as_raw().chunks_exact(3).map(|p| ravif::RGB8::new(p[0], p[1], p[2])).collect()
            }
            other => other.to_rgb8().as_raw().chunks_exact(3).map(|p| ravif::RGB8::new(p[0], p[1], p[2])).collect(),
        };
        encoder.encode_rgb(ravif::Img::new(&pixels[..], w, h))
    };
    let encoded = encoded.map_err(|e| Error::Internal(format!("AVIF encoding failed: {e}")))?;
    out.extend_from_slice(&encoded.avif_file);
    Ok(())
}
