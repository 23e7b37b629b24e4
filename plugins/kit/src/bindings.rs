//! The generated bindings of the contract (`wit/transform.wit`), and the kit's errors in its terms.

wit_bindgen::generate!({
    path: "wit",
    world: "plugin",
    pub_export_macro: true,
    default_bindings_module: "pixbox_kit::bindings",
});

use crate::error::Error;

impl From<Error> for TransformError {
    fn from(e: Error) -> Self {
        match e {
            Error::BadInput(m) => TransformError::BadInput(m),
            Error::Unsupported(m) => TransformError::Unsupported(m),
            Error::Internal(m) => TransformError::Internal(m),
        }
    }
}
