//! JPEG decoding with libjpeg-turbo, compiled for the guest: a header read, then a decode at n/8
//! of the full size (n = 1..=8: libjpeg's scaled inverse DCTs, so a photo headed for a small box
//! is never decoded whole), into RGB or grey. (Its encoder was measured too: no faster than the
//! pure-Rust one the plugins use; BENCHMARKS.md.)
//!
//! A fatal libjpeg error (and a warning about damaged data) does not return: the C side calls the
//! [`Fatal`] function the caller gives [`Decoder::new`] with the [`Failure`]'s class, and that
//! must not return either (in a plugin it tells the host why, then traps; the instance ends with
//! the call anyway).

// The libjpeg calls are FFI; each says why it is sound.
#![allow(unsafe_code)]

use std::ffi::{CStr, c_char, c_int, c_void};
use std::marker::PhantomData;

#[repr(C)]
struct Raw {
    _private: [u8; 0],
}

unsafe extern "C" {
    fn pixbox_jpeg_open(data: *const u8, len: usize, handler: *mut c_void) -> *mut Raw;
    fn pixbox_jpeg_info(
        d: *const Raw,
        width: *mut u32,
        height: *mut u32,
        components: *mut c_int,
        color_space: *mut c_int,
        progressive: *mut c_int,
    );
    fn pixbox_jpeg_exif(d: *const Raw, len: *mut usize) -> *const u8;
    fn pixbox_jpeg_icc(d: *mut Raw, len: *mut usize) -> *mut u8;
    fn pixbox_jpeg_free(p: *mut c_void);
    fn pixbox_jpeg_start(d: *mut Raw, eighths: u32, gray: c_int, width: *mut u32, height: *mut u32);
    fn pixbox_jpeg_read(d: *mut Raw, pixels: *mut u8, stride: usize);
    fn pixbox_jpeg_close(d: *mut Raw);
}

/// Why libjpeg gave up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The data is damaged or truncated.
    BadInput,
    /// A legal JPEG this build does not decode (lossless, 12-bit samples).
    Unsupported,
    /// libjpeg was called wrongly or ran out of memory: not the input's fault.
    Internal,
}

/// What a decoder does when libjpeg gives up; called from C, so it must not return (and, built
/// natively, cannot unwind: a panic there aborts the process).
pub type Fatal = fn(Failure, &str) -> !;

/// Called by the C shim with the handler given to [`Decoder::new`], the class and libjpeg's
/// message; never returns.
#[unsafe(no_mangle)]
extern "C" fn pixbox_jpeg_fatal(handler: *mut c_void, kind: c_int, message: *const c_char) -> ! {
    // SAFETY: the shim passes a NUL-terminated buffer of libjpeg's message (JMSG_LENGTH_MAX).
    let text = unsafe { CStr::from_ptr(message) }.to_string_lossy();
    let kind = match kind {
        0 => Failure::BadInput,
        1 => Failure::Unsupported,
        _ => Failure::Internal,
    };
    // SAFETY: the shim passes back the `client_data` `Decoder::new` set: a `Fatal` fn pointer.
    let handler = unsafe { std::mem::transmute::<*mut c_void, Fatal>(handler) };
    handler(kind, &text)
}

/// The colour model of a JPEG's components, as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColorSpace {
    Gray,
    /// YCbCr or RGB: decoded to RGB.
    Rgb,
    /// CMYK or YCCK (Adobe), which libjpeg decodes only to CMYK.
    Cmyk,
    Other,
}

/// What the header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub width: u32,
    pub height: u32,
    pub color_space: ColorSpace,
    pub progressive: bool,
}

/// A JPEG whose header has been read.
pub struct Decoder<'a> {
    raw: *mut Raw,
    input: PhantomData<&'a [u8]>,
}

impl<'a> Decoder<'a> {
    /// Reads the header of `input`. A damaged or unsupported header, and any later failure of
    /// this decoder, calls `fatal` with libjpeg's message.
    pub fn new(input: &'a [u8], fatal: Fatal) -> Self {
        // SAFETY: `input` outlives the decoder (the lifetime says so); the handler travels in
        // libjpeg's `client_data`; errors leave through it, never back into the caller with a
        // half-built decoder.
        let raw = unsafe { pixbox_jpeg_open(input.as_ptr(), input.len(), fatal as *mut c_void) };
        Decoder { raw, input: PhantomData }
    }

    pub fn header(&self) -> Header {
        let (mut width, mut height, mut components, mut space, mut progressive) = (0, 0, 0, 0, 0);
        // SAFETY: `raw` is an open decoder; the shim writes the five out-parameters.
        unsafe { pixbox_jpeg_info(self.raw, &mut width, &mut height, &mut components, &mut space, &mut progressive) };
        // libjpeg's J_COLOR_SPACE: 1 grey, 2 RGB, 3 YCbCr, 4 CMYK, 5 YCCK.
        let color_space = match space {
            1 => ColorSpace::Gray,
            2 | 3 => ColorSpace::Rgb,
            4 | 5 => ColorSpace::Cmyk,
            _ => ColorSpace::Other,
        };
        Header { width, height, color_space, progressive: progressive != 0 }
    }

    /// The EXIF data (from its TIFF header on), when the file has an EXIF segment.
    pub fn exif(&self) -> Option<&[u8]> {
        let mut len = 0;
        // SAFETY: the shim returns a pointer into libjpeg's saved markers, valid while the decoder
        // lives (this borrow), and its length.
        let data = unsafe { pixbox_jpeg_exif(self.raw, &mut len) };
        (!data.is_null()).then(|| unsafe { std::slice::from_raw_parts(data, len) })
    }

    /// The ICC profile, when the file has a well-formed one.
    pub fn icc(&mut self) -> Option<Vec<u8>> {
        let mut len = 0;
        // SAFETY: on success the shim returns a malloc'd buffer of `len` bytes, copied and freed
        // here.
        let data = unsafe { pixbox_jpeg_icc(self.raw, &mut len) };
        if data.is_null() {
            return None;
        }
        let profile = unsafe { std::slice::from_raw_parts(data, len) }.to_vec();
        unsafe { pixbox_jpeg_free(data.cast()) };
        Some(profile)
    }

    /// The size a decode at `eighths`/8 makes, as libjpeg rounds it (up).
    pub fn scaled_size(&self, eighths: u32) -> (u32, u32) {
        let header = self.header();
        let scale = |len: u32| (u64::from(len) * u64::from(eighths)).div_ceil(8) as u32;
        (scale(header.width), scale(header.height))
    }

    /// Decodes at `eighths`/8 of the full size (1..=8) into grey or RGB rows; returns the size and
    /// the pixels. Damaged data calls the `fatal` function given to [`Decoder::new`].
    pub fn decode(self, eighths: u32, gray: bool) -> (u32, u32, Vec<u8>) {
        assert!((1..=8).contains(&eighths), "scale {eighths}/8");
        let (mut width, mut height) = (0, 0);
        // SAFETY: an open decoder whose header was read; errors leave through `fatal`.
        unsafe { pixbox_jpeg_start(self.raw, eighths, c_int::from(gray), &mut width, &mut height) };
        let channels = if gray { 1 } else { 3 };
        let stride = width as usize * channels;
        // 32-bit in the guest: a size past 4 GiB (only with pixel limits raised far past the
        // defaults) must not wrap into a short buffer libjpeg then writes past.
        let Some(len) = stride.checked_mul(height as usize) else {
            panic!("a {width}x{height} decode does not fit this machine's address space");
        };
        let mut pixels = vec![0; len];
        // SAFETY: `pixels` holds `height` rows of `stride` bytes, the size libjpeg said it makes.
        unsafe { pixbox_jpeg_read(self.raw, pixels.as_mut_ptr(), stride) };
        (width, height, pixels)
    }
}

impl Drop for Decoder<'_> {
    fn drop(&mut self) {
        // SAFETY: `raw` came from pixbox_jpeg_open and is closed once.
        unsafe { pixbox_jpeg_close(self.raw) }
    }
}
