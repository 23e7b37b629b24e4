//! A sample plugin written on pixbox-kit: a square, centre-cropped grayscale thumbnail. The kit
//! checks the options, decodes (any accepted format, EXIF orientation applied) and encodes; HEIC,
//! which the kit does not decode, goes to the default plugins' decoder (`Plugin::decode`).

use pixbox_kit::image::imageops::FilterType;
use pixbox_kit::{DynamicImage, Error, Format, Info, Options, PixelLimits, Plugin};

struct Thumbnail;

impl Plugin for Thumbnail {
    fn info() -> Info {
        Info::new(
            "thumbnail",
            env!("CARGO_PKG_VERSION"),
            "Cuts a square from the centre of the image and turns it to grayscale.",
        )
        .option("size", "Side of the square thumbnail in pixels (1..=4096).", "256")
    }

    fn transform(image: DynamicImage, options: &Options) -> Result<DynamicImage, Error> {
        let size: u32 = options.get_in("size", 1..=4096)?;
        // Never enlarged: a smaller image gives a square as large as its shorter side.
        let side = size.min(image.width()).min(image.height());
        Ok(image.resize_to_fill(side, side, FilterType::Lanczos3).grayscale())
    }

    fn decode(input: &[u8], limits: PixelLimits) -> Result<(DynamicImage, Format), Error> {
        match Format::sniff(input) {
            Some(Format::Heic) => Ok((imagekit::heif::decode(input, limits)?, Format::Heic)),
            _ => pixbox_kit::decode(input, limits),
        }
    }
}

pixbox_kit::plugin!(Thumbnail);

#[cfg(test)]
mod tests {
    use pixbox_kit::Format;
    use pixbox_kit::testing::{run, sample};

    use super::Thumbnail;

    #[test]
    fn a_grayscale_square_in_the_input_format() {
        for format in [Format::Jpeg, Format::Png, Format::Webp] {
            let out = run::<Thumbnail>(&sample(format, 300, 200), &[("size", "64")]).unwrap();
            assert_eq!((out.image.width(), out.image.height()), (64, 64));
            assert_eq!(out.media_type, format.media_type());
            // Gray pixels (WebP stores them as RGB, losslessly: equal channels).
            let rgb = out.image.to_rgb8();
            assert!(rgb.pixels().all(|p| p[0] == p[1] && p[1] == p[2]), "{format:?} came out in colour");
        }
    }

    /// HEIC through the plugin's own decoder; written as JPEG (`same`: HEIC is read, not written).
    #[test]
    fn a_heic_photo_becomes_a_jpeg_thumbnail() {
        let heic = include_bytes!("../../../tests/fixtures/cups.heic");
        let out = run::<Thumbnail>(heic, &[("size", "64")]).unwrap();
        assert_eq!((out.image.width(), out.image.height(), out.media_type), (64, 64, "image/jpeg"));
    }

    #[test]
    fn never_enlarged_and_options_checked() {
        let out = run::<Thumbnail>(&sample(Format::Gif, 40, 30), &[]).unwrap();
        assert_eq!((out.image.width(), out.media_type), (30, "image/png"));
        let err = run::<Thumbnail>(&sample(Format::Png, 40, 30), &[("width", "10")]).unwrap_err();
        assert!(err.to_string().contains("unknown option \"width\""), "{err}");
        let err = run::<Thumbnail>(&sample(Format::Png, 40, 30), &[("size", "0")]).unwrap_err();
        assert!(matches!(err, pixbox_kit::Error::Unsupported(_)), "{err}");
    }
}
