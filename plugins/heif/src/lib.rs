//! HEIC/HEIF decoding for pixbox plugins: libheif with libde265, compiled into the plugin (see
//! build.rs), behind one safe call. Inside the sandbox the decoder runs under the plugin's memory
//! cap and time budget like any Rust code; a C fault traps the instance, which ends with the call.

use std::ffi::{c_char, c_int};

/// A decoded primary image: 8-bit interleaved RGB, or RGBA when `has_alpha`, in display
/// orientation (HEIF's rotation, mirroring and crop applied), rows without padding.
#[derive(Debug)]
pub struct Decoded {
    pub width: u32,
    pub height: u32,
    pub has_alpha: bool,
    pub pixels: Vec<u8>,
    /// The image's ICC profile, when it has one.
    pub icc: Option<Vec<u8>>,
    /// Its nclx colour description instead: (colour primaries, transfer characteristics) as
    /// ISO/IEC 23091-2 code points.
    pub cicp: Option<(u8, u8)>,
}

/// Why a file did not decode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// The file is broken or is not HEIF.
    BadInput(String),
    /// A valid file using something the decoder does not have (another codec, a feature).
    Unsupported(String),
    /// The size is over what the caller allows (checked before any pixel is decoded).
    TooLarge {
        width: u32,
        height: u32,
    },
    /// The decoder asked for memory and got none.
    OutOfMemory,
    Internal(String),
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::BadInput(m) => write!(f, "cannot decode the HEIF image: {m}"),
            Error::Unsupported(m) => write!(f, "HEIF image not supported: {m}"),
            Error::TooLarge { width, height } => write!(f, "HEIF image of {width}x{height} is too large"),
            Error::OutOfMemory => write!(f, "out of memory decoding the HEIF image"),
            Error::Internal(m) => write!(f, "HEIF decoder: {m}"),
        }
    }
}

impl std::error::Error for Error {}

/// Decodes the primary image of a HEIC/HEIF file. Any image in it (a grid's tiles included) wider
/// or taller than `max_side` is refused while the container is read; `allow(width, height)` then
/// sees the primary image's size in display orientation, before any pixel is decoded, and false
/// refuses it.
pub fn decode(input: &[u8], max_side: u32, allow: impl FnOnce(u32, u32) -> bool) -> Result<Decoded, Error> {
    let mut heif = Handle::open(input, max_side)?;
    let (width, height, has_alpha) = heif.size();
    if !allow(width, height) {
        return Err(Error::TooLarge { width, height });
    }
    let icc = heif.icc()?;
    let cicp = heif.nclx();
    heif.decode(has_alpha)?;
    let channels = if has_alpha { 4 } else { 3 };
    let len = (width as usize).checked_mul(height as usize).and_then(|n| n.checked_mul(channels));
    let mut pixels = vec![0u8; len.ok_or(Error::TooLarge { width, height })?];
    heif.copy(&mut pixels, width, height, channels as u32)?;
    Ok(Decoded { width, height, has_alpha, pixels, icc, cicp })
}

/// The C shim's outcomes (csrc/pixbox_heif.c).
const OK: c_int = 0;
const BAD_INPUT: c_int = 1;
const UNSUPPORTED: c_int = 2;
const OUT_OF_MEMORY: c_int = 3;

/// Room for libheif's error message.
const MESSAGE_LEN: usize = 256;

#[repr(C)]
struct RawHeif {
    _opaque: [u8; 0],
}

#[allow(unsafe_code)] // The shim's functions; each is called through `Handle` below only.
unsafe extern "C" {
    fn pixbox_heif_open(
        data: *const u8,
        len: usize,
        max_side: u32,
        out: *mut *mut RawHeif,
        message: *mut c_char,
        message_len: usize,
    ) -> c_int;
    fn pixbox_heif_size(heif: *const RawHeif, width: *mut u32, height: *mut u32, has_alpha: *mut c_int);
    fn pixbox_heif_icc_size(heif: *const RawHeif) -> usize;
    fn pixbox_heif_icc(heif: *const RawHeif, out: *mut u8, message: *mut c_char, message_len: usize) -> c_int;
    fn pixbox_heif_nclx(heif: *const RawHeif, primaries: *mut u8, transfer: *mut u8) -> c_int;
    fn pixbox_heif_decode(heif: *mut RawHeif, alpha: c_int, message: *mut c_char, message_len: usize) -> c_int;
    fn pixbox_heif_copy(
        heif: *const RawHeif,
        out: *mut u8,
        out_len: usize,
        width: u32,
        height: u32,
        channels: u32,
    ) -> c_int;
    fn pixbox_heif_close(heif: *mut RawHeif);
}

/// An open file: the shim's handle, closed on drop. It borrows the input, which libheif reads in
/// place.
struct Handle<'a> {
    raw: *mut RawHeif,
    _input: std::marker::PhantomData<&'a [u8]>,
}

#[allow(unsafe_code)] // Every call passes the live handle and buffers of the lengths it states.
impl<'a> Handle<'a> {
    fn open(input: &'a [u8], max_side: u32) -> Result<Handle<'a>, Error> {
        let mut raw = std::ptr::null_mut();
        let mut message = [0 as c_char; MESSAGE_LEN];
        // SAFETY: `input` outlives the handle (the lifetime says so); `raw` receives the handle
        // even on failure, and it is closed by drop.
        let result = unsafe {
            pixbox_heif_open(input.as_ptr(), input.len(), max_side, &mut raw, message.as_mut_ptr(), MESSAGE_LEN)
        };
        let handle = Handle { raw, _input: std::marker::PhantomData };
        check(result, &message)?;
        Ok(handle)
    }

    fn size(&self) -> (u32, u32, bool) {
        let (mut width, mut height, mut alpha) = (0, 0, 0);
        // SAFETY: an open handle with a primary image (open succeeded).
        unsafe { pixbox_heif_size(self.raw, &mut width, &mut height, &mut alpha) };
        (width, height, alpha != 0)
    }

    fn icc(&self) -> Result<Option<Vec<u8>>, Error> {
        // SAFETY: an open handle.
        let len = unsafe { pixbox_heif_icc_size(self.raw) };
        if len == 0 {
            return Ok(None);
        }
        let mut icc = vec![0u8; len];
        let mut message = [0 as c_char; MESSAGE_LEN];
        // SAFETY: `icc` holds the size the shim reported.
        let result = unsafe { pixbox_heif_icc(self.raw, icc.as_mut_ptr(), message.as_mut_ptr(), MESSAGE_LEN) };
        check(result, &message)?;
        Ok(Some(icc))
    }

    fn nclx(&self) -> Option<(u8, u8)> {
        let (mut primaries, mut transfer) = (0, 0);
        // SAFETY: an open handle.
        let found = unsafe { pixbox_heif_nclx(self.raw, &mut primaries, &mut transfer) };
        (found != 0).then_some((primaries, transfer))
    }

    fn decode(&mut self, alpha: bool) -> Result<(), Error> {
        let mut message = [0 as c_char; MESSAGE_LEN];
        // SAFETY: an open handle; the decoded image stays inside it.
        let result = unsafe { pixbox_heif_decode(self.raw, c_int::from(alpha), message.as_mut_ptr(), MESSAGE_LEN) };
        check(result, &message)
    }

    fn copy(&self, out: &mut [u8], width: u32, height: u32, channels: u32) -> Result<(), Error> {
        // SAFETY: `out` is writable for its length; the shim checks that length and the image's size.
        let result = unsafe { pixbox_heif_copy(self.raw, out.as_mut_ptr(), out.len(), width, height, channels) };
        match result {
            OK => Ok(()),
            _ => {
                Err(Error::Internal(format!("libheif decoded something other than {width}x{height}x{channels} bytes")))
            }
        }
    }
}

#[allow(unsafe_code)]
impl Drop for Handle<'_> {
    fn drop(&mut self) {
        // SAFETY: the shim accepts null and a handle in any state; it is closed once.
        unsafe { pixbox_heif_close(self.raw) }
    }
}

fn check(result: c_int, message: &[c_char]) -> Result<(), Error> {
    let text = || {
        let bytes: Vec<u8> = message.iter().take_while(|&&c| c != 0).map(|&c| c as u8).collect();
        String::from_utf8_lossy(&bytes).into_owned()
    };
    match result {
        OK => Ok(()),
        BAD_INPUT => Err(Error::BadInput(text())),
        UNSUPPORTED => Err(Error::Unsupported(text())),
        OUT_OF_MEMORY => Err(Error::OutOfMemory),
        _ => Err(Error::Internal(text())),
    }
}
