//! The default pixbox plugin: bring an image to a box (fit, cover, pad or crop; see
//! `imagekit::renditions`), every rendition from one decode, as a component. It implements the
//! contract by hand (pixbox-kit's bindings) to decode once at the size the largest rendition needs.

use pixbox_kit::bindings::pixbox::transform::types::{Param, ParamSpec, Placeholder};
use pixbox_kit::bindings::{Guest, Image, PluginInfo, RenditionRequest, TransformError, Transformed};

struct Resize;

impl Guest for Resize {
    fn info() -> PluginInfo {
        PluginInfo {
            name: "resize".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description: "Brings an image to a width x height box keeping its aspect ratio (fit inside, \
                          cover and cut, pad, or crop), applies EXIF orientation and drops metadata; \
                          every rendition from one decode."
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

    /// Every rendition from one decode (see `imagekit::renditions`).
    fn transform(input: Image, requests: Vec<RenditionRequest>) -> Result<Transformed, TransformError> {
        let options = requests
            .iter()
            .map(|r| imagekit::Options::parse(r.options.iter().map(|p: &Param| (p.name.as_str(), p.value.as_str()))))
            .collect::<Result<Vec<_>, _>>()
            .map_err(into_wit)?;
        let (out, placeholder) =
            imagekit::renditions_with_placeholder(&input.bytes, &options, true).map_err(into_wit)?;
        let renditions = out.into_iter().map(|e| Image { bytes: e.bytes, media_type: e.media_type.into() }).collect();
        let placeholder = placeholder.map(|p| Placeholder { dominant_color: p.dominant_color, thumbhash: p.thumbhash });
        Ok(Transformed { renditions, placeholder })
    }
}

fn into_wit(e: imagekit::Error) -> TransformError {
    match e {
        imagekit::Error::BadInput(m) => TransformError::BadInput(m),
        imagekit::Error::Unsupported(m) => TransformError::Unsupported(m),
        imagekit::Error::Internal(m) => TransformError::Internal(m),
    }
}

// The exports wit-bindgen generates are unsafe FFI glue.
#[allow(unsafe_code)]
const _: () = {
    pixbox_kit::bindings::export!(Resize with_types_in pixbox_kit::bindings);
};
