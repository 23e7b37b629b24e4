//! A sample plugin that looks nothing like `resize`: a square, centre-cropped grayscale thumbnail.

wit_bindgen::generate!({ path: "../../wit", world: "plugin" });

use pixbox::transform::types::{Param, ParamSpec};

const DEFAULT_SIZE: u32 = 256;

struct Thumbnail;

impl Guest for Thumbnail {
    fn info() -> PluginInfo {
        let size = ParamSpec {
            name: "size".into(),
            description: "Side of the square thumbnail in pixels (1..=4096).".into(),
            default: Some(DEFAULT_SIZE.to_string()),
        };
        // The shared decode/encode options; the resize box does not apply here.
        let shared = imagekit::PARAMS
            .iter()
            .filter(|(name, ..)| !matches!(*name, "width" | "height" | "upscale" | "mode" | "gravity" | "background"))
            .map(|(name, description, default)| ParamSpec {
                name: (*name).into(),
                description: (*description).into(),
                default: Some((*default).into()),
            });
        PluginInfo {
            name: "thumbnail".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description: "Cuts a square from the centre of the image and turns it to grayscale.".into(),
            params: std::iter::once(size).chain(shared).collect(),
        }
    }

    /// One square per rendition (each decodes on its own: this sample keeps to the simple path).
    fn transform(input: Image, requests: Vec<RenditionRequest>) -> Result<Transformed, TransformError> {
        let renditions = requests.iter().map(|r| thumbnail(&input, &r.options)).collect::<Result<_, _>>()?;
        Ok(Transformed { renditions, placeholder: None })
    }
}

fn thumbnail(input: &Image, options: &[Param]) -> Result<Image, TransformError> {
    let mut size = DEFAULT_SIZE;
    let mut rest = Vec::new();
    for p in options {
        match p.name.as_str() {
            "size" => size = imagekit::parse_in("size", &p.value, 1..=4096).map_err(into_wit)?,
            "width" | "height" | "upscale" | "mode" | "gravity" | "background" => {
                return Err(TransformError::Unsupported(format!("unknown option {:?}", p.name)));
            }
            name => rest.push((name, p.value.as_str())),
        }
    }
    let options = imagekit::Options::parse(rest).map_err(into_wit)?;
    let out = imagekit::square_thumbnail(&input.bytes, size, &options).map_err(into_wit)?;
    Ok(Image { bytes: out.bytes, media_type: out.media_type.into() })
}

fn into_wit(e: imagekit::Error) -> TransformError {
    match e {
        imagekit::Error::BadInput(m) => TransformError::BadInput(m),
        imagekit::Error::Unsupported(m) => TransformError::Unsupported(m),
        imagekit::Error::Internal(m) => TransformError::Internal(m),
    }
}

export!(Thumbnail);
