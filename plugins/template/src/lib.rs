//! A pixbox plugin: makes images brighter (or darker). The kit (pixbox-kit) checks the options
//! against `info()`, decodes any accepted format with its size checked first, applies EXIF
//! orientation and encodes like the input; this file is only the image logic.

use pixbox_kit::image::imageops::colorops::brighten_in_place;
use pixbox_kit::{DynamicImage, Error, Info, Level, Options, Plugin, log};

struct Brighten;

impl Plugin for Brighten {
    fn info() -> Info {
        Info::new(env!("CARGO_PKG_NAME"), env!("CARGO_PKG_VERSION"), "Makes images brighter or darker.")
            .option("amount", "What to add to every colour channel, -255..=255 (below 0 darkens).", "40")
            // Every frame of an animated GIF or WebP, one call each (else: the first frame only).
            .animated()
    }

    fn transform(mut image: DynamicImage, options: &Options) -> Result<DynamicImage, Error> {
        let amount = options.get_in("amount", -255..=255)?;
        log(Level::Debug, &format!("brightening {}x{} by {amount}", image.width(), image.height()));
        // In place: a second copy of a 40-megapixel image would not fit the default 256 MiB.
        brighten_in_place(&mut image, amount);
        Ok(image)
    }
}

pixbox_kit::plugin!(Brighten);

/// `cargo test-native` runs these on this machine, through the same option checks, decoding and
/// encoding as in pixbox.
#[cfg(test)]
mod tests {
    use pixbox_kit::testing::{animated_sample, picture, run, sample};
    use pixbox_kit::{Error, Format};

    use super::Brighten;

    #[test]
    fn brightens_every_accepted_format() {
        for format in [Format::Jpeg, Format::Png, Format::Webp, Format::Gif] {
            let out = run::<Brighten>(&sample(format, 64, 48), &[("amount", "60")]).unwrap();
            assert_eq!((out.image.width(), out.image.height()), (64, 48), "{format:?}");
            let before = picture(64, 48).to_rgb8().get_pixel(5, 5)[2];
            assert!(out.image.to_rgb8().get_pixel(5, 5)[2] > before, "{format:?} got brighter");
        }
    }

    #[test]
    fn keeps_every_frame_of_an_animation() {
        for format in [Format::Gif, Format::Webp] {
            let input = animated_sample(format, 40, 30, 3);
            let out = run::<Brighten>(&input, &[]).unwrap();
            let scan = pixbox_kit::container::webp(&out.bytes).unwrap();
            assert_eq!((scan.width, scan.height, scan.frames), (40, 30, 3), "{format:?}");
            let first = run::<Brighten>(&input, &[("animation", "first-frame")]).unwrap();
            assert_eq!(pixbox_kit::container::webp(&first.bytes).map(|s| s.frames).unwrap_or(1), 1, "{format:?}");
        }
    }

    #[test]
    fn writes_like_the_input_unless_told() {
        let out = run::<Brighten>(&sample(Format::Jpeg, 32, 32), &[]).unwrap();
        assert_eq!(out.media_type, "image/jpeg");
        let out = run::<Brighten>(&sample(Format::Jpeg, 32, 32), &[("format", "png")]).unwrap();
        assert_eq!(out.media_type, "image/png");
    }

    #[test]
    fn refuses_what_it_cannot_do() {
        let input = sample(Format::Png, 16, 16);
        assert!(matches!(run::<Brighten>(&input, &[("amount", "999")]), Err(Error::Unsupported(_))));
        assert!(matches!(run::<Brighten>(&input, &[("colour", "red")]), Err(Error::Unsupported(_))));
        assert!(matches!(run::<Brighten>(&input[..40], &[]), Err(Error::BadInput(_))));
        assert!(matches!(run::<Brighten>(&input, &[("max-pixels", "100")]), Err(Error::BadInput(_))));
    }
}
