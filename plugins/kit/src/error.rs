//! Why a plugin call did not give an image, in the three cases the contract knows.

/// Why a transform did not give an image; the host decides on retries by the case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// The input can never be processed (broken, truncated, too large): failed for good.
    BadInput(String),
    /// An option, or the input or output format, is not supported: the configuration must change.
    Unsupported(String),
    /// Anything else; the host may retry.
    Internal(String),
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::BadInput(m) => write!(f, "bad input: {m}"),
            Error::Unsupported(m) => write!(f, "unsupported: {m}"),
            Error::Internal(m) => write!(f, "internal: {m}"),
        }
    }
}

impl std::error::Error for Error {}

/// Decoder errors are about the input, except a feature the decoder lacks or a size limit.
impl From<image::ImageError> for Error {
    fn from(e: image::ImageError) -> Self {
        match e {
            image::ImageError::Unsupported(e) => Error::Unsupported(e.to_string()),
            image::ImageError::Limits(e) => Error::BadInput(format!("image too large: {e}")),
            e => Error::BadInput(format!("cannot decode image: {e}")),
        }
    }
}
