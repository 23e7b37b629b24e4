//! Signed transform URLs in imgproxy's format, the subset that maps to pixbox's `resize`:
//! `/t/{signature}/{options}/plain/{key}@{ext}` (or `/{base64url(key)}.{ext}`), signed as imgproxy
//! signs (HMAC-SHA256 keyed with `key`, over `salt` followed by the path after the signature,
//! URL-safe base64 without padding). An application that builds imgproxy URLs with an existing
//! library, for the base URL `https://pixbox.example/t`, gets URLs pixbox serves; nobody without
//! the key can make pixbox render (and store) a variant.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::imaging::Format;

/// `[transform_urls]` of pixbox.toml: the signing pair, hex-encoded as imgproxy's `IMGPROXY_KEY`
/// and `IMGPROXY_SALT`. Both empty: `/t/...` is not served.
#[derive(Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TransformUrlSettings {
    pub key: String,
    pub salt: String,
}

impl std::fmt::Debug for TransformUrlSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The pair is a secret: never in logs.
        let set = |v: &str| if v.is_empty() { "" } else { "(set)" };
        f.debug_struct("TransformUrlSettings").field("key", &set(&self.key)).field("salt", &set(&self.salt)).finish()
    }
}

/// The checked signing pair.
#[derive(Clone)]
pub struct Signing {
    key: Vec<u8>,
    salt: Vec<u8>,
}

impl std::fmt::Debug for Signing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Signing(..)")
    }
}

/// Why a transform URL is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    #[error("the signature does not match the URL")]
    BadSignature,
    #[error("{0}")]
    Invalid(String),
}

impl Signing {
    /// The pair of `settings`, `None` when transform URLs are off; an error when only one is set
    /// or either is not hex.
    pub fn from_settings(settings: &TransformUrlSettings) -> Result<Option<Signing>, String> {
        match (settings.key.is_empty(), settings.salt.is_empty()) {
            (true, true) => return Ok(None),
            (false, false) => {}
            _ => return Err("[transform_urls] needs both key and salt (hex), or neither".into()),
        }
        let decode = |name: &str, text: &str| {
            hex::decode(text).map_err(|e| format!("[transform_urls] {name} must be hex-encoded: {e}"))
        };
        let key = decode("key", &settings.key)?;
        if key.len() < 16 {
            return Err("[transform_urls] key must be at least 16 bytes (32 hex digits)".into());
        }
        Ok(Some(Signing { key, salt: decode("salt", &settings.salt)? }))
    }

    /// The signature of `path` (what follows the signature, from its leading `/`).
    pub fn sign(&self, path: &str) -> String {
        URL_SAFE_NO_PAD.encode(self.mac(path).finalize().into_bytes())
    }

    /// Checks `signature` against `path`, in constant time.
    pub fn verify(&self, signature: &str, path: &str) -> Result<(), UrlError> {
        let given = URL_SAFE_NO_PAD.decode(signature.trim_end_matches('=')).map_err(|_| UrlError::BadSignature)?;
        self.mac(path).verify_slice(&given).map_err(|_| UrlError::BadSignature)
    }

    fn mac(&self, path: &str) -> Hmac<Sha256> {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC takes any key length");
        mac.update(&self.salt);
        mac.update(path.as_bytes());
        mac
    }
}

/// What a transform URL asks for: the image, `resize`'s options and the output format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transform {
    pub key: String,
    /// `resize`'s options, sorted by name.
    pub options: Vec<(String, String)>,
    /// `None`: the image's own format.
    pub format: Option<Format>,
}

impl Transform {
    /// A short name for the variant, the same for the same options in any order or spelling:
    /// where it is stored (`{key}/t/{id}.{ext}`).
    pub fn id(&self) -> String {
        let canonical: Vec<String> = self.options.iter().map(|(k, v)| format!("{k}={v}")).collect();
        hex::encode(&Sha256::digest(canonical.join("&").as_bytes())[..12])
    }
}

/// A side left free: resize's largest box side.
const FREE_SIDE: &str = "10000";

/// Most processing options one URL may carry.
const MAX_OPTIONS: usize = 16;

/// Reads a transform path (what follows the signature): processing options, then the source.
pub fn parse(path: &str) -> Result<Transform, UrlError> {
    let invalid = |message: String| UrlError::Invalid(message);
    let path = path.strip_prefix('/').ok_or_else(|| invalid("the path must start with /".into()))?;
    // Options come first, each `name:args`; the source follows: `plain/{key}@{ext}`, or the key
    // in URL-safe base64 (which may be cut in pieces by `/`) with `.{ext}`.
    let parts: Vec<&str> = path.split('/').collect();
    let first_source = parts.iter().position(|p| !p.contains(':')).unwrap_or(parts.len());
    let (options, rest) = parts.split_at(first_source);
    let source = match rest.split_first() {
        Some((&"plain", plain)) => {
            let plain = plain.join("/");
            let (key, ext) = match plain.rsplit_once('@') {
                Some((key, ext)) => (key.to_string(), Some(ext.to_string())),
                None => (plain, None),
            };
            let key = crate::storage::percent_decode(&key)
                .ok_or_else(|| invalid(format!("the source {key:?} is not percent-encoded UTF-8")))?;
            (key, ext)
        }
        Some(_) => {
            let encoded = rest.concat();
            let (encoded, ext) = match encoded.split_once('.') {
                Some((encoded, ext)) => (encoded.to_string(), Some(ext.to_string())),
                None => (encoded, None),
            };
            let bytes = URL_SAFE_NO_PAD
                .decode(encoded.trim_end_matches('='))
                .map_err(|_| invalid(format!("the source {encoded:?} is not URL-safe base64")))?;
            let key = String::from_utf8(bytes).map_err(|_| invalid("the source is not UTF-8".into()))?;
            (key, ext)
        }
        None => return Err(invalid("the URL names no source image".into())),
    };
    let (key, ext) = source;
    let mut resize: Vec<(String, String)> = Vec::new();
    let mut set = |name: &str, value: String| {
        resize.retain(|(n, _)| n != name);
        resize.push((name.to_string(), value));
    };
    let mut format = ext.as_deref().map(format_named).transpose()?;
    if options.len() > MAX_OPTIONS {
        return Err(invalid(format!("{} processing options; at most {MAX_OPTIONS}", options.len())));
    }
    for part in options {
        let mut args = part.split(':');
        let name = args.next().unwrap_or_default();
        let args: Vec<&str> = args.collect();
        let arg = |i: usize| args.get(i).copied().filter(|a| !a.is_empty());
        match name {
            "rs" | "resize" => {
                if let Some(kind) = arg(0) {
                    set("mode", mode(kind)?);
                }
                size(&mut set, arg(1), arg(2), arg(3))?;
            }
            "s" | "size" => size(&mut set, arg(0), arg(1), arg(2))?,
            "rt" | "resizing_type" => set("mode", mode(arg(0).unwrap_or("fit"))?),
            "w" | "width" => size(&mut set, arg(0), None, None)?,
            "h" | "height" => size(&mut set, None, arg(0), None)?,
            "el" | "enlarge" => set("upscale", flag(arg(0))?.to_string()),
            "g" | "gravity" => set("gravity", gravity(arg(0).unwrap_or("ce"))?),
            "q" | "quality" => {
                let q: u8 = number(arg(0).unwrap_or(""), "quality")?;
                if q > 0 {
                    set("quality", q.min(100).to_string());
                }
            }
            "f" | "format" | "ext" => format = Some(format_named(arg(0).unwrap_or(""))?),
            _ => return Err(invalid(format!("processing option {name:?} is not one pixbox serves"))),
        }
    }
    if let Some(format) = format {
        set("format", format.extension().to_string());
    }
    // A side left out is free, as a 0 is (imgproxy's meaning): resize's largest box side; a
    // fill with a free side is a fit by the other (there is no box to fill).
    let has = |resize: &[(String, String)], name: &str| resize.iter().any(|(n, _)| n == name);
    for (side, other) in [("width", "height"), ("height", "width")] {
        if has(&resize, side) && !has(&resize, other) {
            resize.push((other.to_string(), FREE_SIDE.to_string()));
        }
    }
    let free = resize.iter().any(|(n, v)| (n == "width" || n == "height") && v == FREE_SIDE);
    if free && resize.iter().any(|(n, v)| n == "mode" && v == "cover") {
        resize.retain(|(n, _)| n != "mode");
        resize.push(("mode".into(), "fit".into()));
    }
    resize.sort();
    Ok(Transform { key, options: resize, format })
}

/// Width, height and enlarge of `rs`/`s`: 0 (or nothing) leaves a side free.
fn size(
    set: &mut impl FnMut(&str, String),
    width: Option<&str>,
    height: Option<&str>,
    enlarge: Option<&str>,
) -> Result<(), UrlError> {
    for (name, value) in [("width", width), ("height", height)] {
        if let Some(value) = value {
            let n: u32 = number(value, name)?;
            // 0: the side follows from the other and the aspect ratio.
            set(name, if n == 0 { FREE_SIDE.into() } else { n.min(10_000).to_string() });
        }
    }
    if enlarge.is_some() {
        set("upscale", flag(enlarge)?.to_string());
    }
    Ok(())
}

fn number<T: std::str::FromStr>(text: &str, what: &str) -> Result<T, UrlError> {
    text.parse().map_err(|_| UrlError::Invalid(format!("{what} must be a whole number, got {text:?}")))
}

fn flag(value: Option<&str>) -> Result<bool, UrlError> {
    match value.unwrap_or("1") {
        "1" | "t" | "true" => Ok(true),
        "0" | "f" | "false" => Ok(false),
        other => Err(UrlError::Invalid(format!("enlarge must be 1 or 0, got {other:?}"))),
    }
}

/// imgproxy's resizing types as resize's modes.
fn mode(kind: &str) -> Result<String, UrlError> {
    Ok(match kind {
        "fit" | "auto" => "fit",
        "fill" | "fill-down" => "cover",
        other => {
            return Err(UrlError::Invalid(format!("resizing type {other:?} is not one pixbox serves (fit, fill)")));
        }
    }
    .into())
}

/// imgproxy's gravities as resize's.
fn gravity(kind: &str) -> Result<String, UrlError> {
    Ok(match kind {
        "ce" => "centre",
        "no" => "north",
        "so" => "south",
        "ea" => "east",
        "we" => "west",
        "noea" => "north-east",
        "nowe" => "north-west",
        "soea" => "south-east",
        "sowe" => "south-west",
        "sm" => "smart",
        other => return Err(UrlError::Invalid(format!("gravity {other:?} is not one pixbox serves"))),
    }
    .into())
}

fn format_named(name: &str) -> Result<Format, UrlError> {
    match name.to_ascii_lowercase().as_str() {
        "jpg" | "jpeg" => Ok(Format::Jpeg),
        "png" => Ok(Format::Png),
        "webp" => Ok(Format::Webp),
        "avif" => Ok(Format::Avif),
        other => Err(UrlError::Invalid(format!("format {other:?} is not one pixbox serves (jpg, png, webp, avif)"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// imgproxy's documented example (docs, "Signing a URL"): key `secret`, salt `hello`.
    #[test]
    fn signs_as_imgproxy_documents() {
        let settings = TransformUrlSettings { key: hex::encode("a key of 16 bytes"), salt: "68656C6C6F".into() };
        let read = Signing::from_settings(&settings).unwrap().unwrap();
        assert_eq!(read.salt, b"hello", "hex-encoded, as IMGPROXY_SALT");
        // The documented key is shorter than pixbox accepts; the scheme is the same.
        let documented = Signing { key: b"secret".to_vec(), salt: read.salt };
        let path = "/rs:fill:300:400:0/g:sm/aHR0cDovL2V4YW1w/bGUuY29tL2ltYWdl/cy9jdXJpb3NpdHku/anBn.png";
        assert_eq!(documented.sign(path), "oKfUtW34Dvo2BGQehJFR4Nr0_rIjOtdtzJ3QFsUcXH8");
        assert_eq!(documented.verify("oKfUtW34Dvo2BGQehJFR4Nr0_rIjOtdtzJ3QFsUcXH8", path), Ok(()));
        assert_eq!(documented.verify("oKfUtW34Dvo2BGQehJFR4Nr0_rIjOtdtzJ3QFsUcXH9", path), Err(UrlError::BadSignature));
        assert_eq!(
            documented.verify("oKfUtW34Dvo2BGQehJFR4Nr0_rIjOtdtzJ3QFsUcXH8", &path.replace("300", "301")),
            Err(UrlError::BadSignature)
        );
        // The example's source, base64 in pieces: read as the key it names.
        let t = parse(path).unwrap();
        assert_eq!(t.key, "http://example.com/images/curiosity.jpg");
        assert_eq!(t.format, Some(Format::Png));
    }

    #[test]
    fn options_map_to_resize_and_name_the_variant_alike() {
        let a = parse("/rs:fill:300:200/g:sm/q:80/plain/shop/0193.jpg@webp").unwrap();
        assert_eq!(a.key, "shop/0193.jpg");
        assert_eq!(a.format, Some(Format::Webp));
        let options: Vec<(&str, &str)> = a.options.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(
            options,
            [
                ("format", "webp"),
                ("gravity", "smart"),
                ("height", "200"),
                ("mode", "cover"),
                ("quality", "80"),
                ("width", "300")
            ]
        );
        let b = parse("/q:80/resize:fill:300:200/gravity:sm/plain/shop%2F0193.jpg@webp").unwrap();
        assert_eq!(a.id(), b.id(), "the same options in another order and spelling");
        assert_ne!(a.id(), parse("/rs:fill:301:200/g:sm/q:80/plain/shop/0193.jpg@webp").unwrap().id());
        // A side left out or 0 is free; a fill with a free side is a fit.
        let free = |path: &str| parse(path).unwrap().options;
        let pairs = |o: Vec<(String, String)>| o.into_iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>();
        assert_eq!(pairs(free("/w:300/plain/a.png")), ["height=10000", "width=300"]);
        assert_eq!(pairs(free("/rs:fill:0:200/plain/a.png")), ["height=200", "mode=fit", "width=10000"]);
        let plain = parse("/plain/a.png").unwrap();
        assert_eq!((plain.key.as_str(), plain.format, plain.options.len()), ("a.png", None, 0));
        for bad in ["/rs:force:10:10/plain/a.png", "/blur:5/plain/a.png", "/w:wide/plain/a.png", "/plain/a.png@tiff"] {
            assert!(matches!(parse(bad), Err(UrlError::Invalid(_))), "{bad}");
        }
    }
}
