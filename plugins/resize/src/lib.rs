//! The default pixbox plugin: fit an image inside a box (see `imagekit::resize`), as a component.

wit_bindgen::generate!({ path: "../../wit", world: "plugin" });

use pixbox::transform::types::ParamSpec;

struct Resize;

impl Guest for Resize {
    fn info() -> PluginInfo {
        PluginInfo {
            name: "resize".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description: "Fits an image inside a width x height box keeping its aspect ratio, \
                          applies EXIF orientation and drops metadata."
                .into(),
            params: imagekit::PARAMS
                .iter()
                .map(|(name, description, default)| ParamSpec {
                    name: (*name).into(),
                    description: (*description).into(),
                    default: Some((*default).into()),
                })
                .collect(),
        }
    }

    fn transform(input: Image, options: Vec<Param>) -> Result<Image, TransformError> {
        let options =
            imagekit::Options::parse(options.iter().map(|p| (p.name.as_str(), p.value.as_str()))).map_err(into_wit)?;
        let out = imagekit::resize(&input.bytes, &options).map_err(into_wit)?;
        Ok(Image { bytes: out.bytes, media_type: out.media_type.into() })
    }
}

fn into_wit(e: imagekit::Error) -> TransformError {
    match e {
        imagekit::Error::BadInput(m) => TransformError::BadInput(m),
        imagekit::Error::Unsupported(m) => TransformError::Unsupported(m),
        imagekit::Error::Internal(m) => TransformError::Internal(m),
    }
}

export!(Resize);
