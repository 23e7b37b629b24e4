//! Reading a plugin's answer out of guest memory without copying more than the host allows.
//!
//! wasmtime lifts a call's results and then runs the guest's post-return (which frees them)
//! before the host sees them, so a lazily lifted `WasmList`/`WasmStr` would point at freed
//! memory. These types check the length *while lifting* and copy only what is within bounds: the
//! output images up to the job's cap ([`OUTPUT_LIMIT`], set around the calls; no cap set is an
//! error, never "unlimited"), texts up to a fixed size in every string encoding a component may
//! declare. They implement wasmtime's lifting traits by hand through its `__internal` module,
//! which is not covered by its API stability promise: `Cargo.toml` pins the exact wasmtime
//! version this was written against, and the tests below fail if lifting stops happening before
//! the guest's post-return.

// Lifting is an unsafe trait: each impl below says why its reads stay in bounds.
#![allow(unsafe_code)]

use wasmtime::ValRaw;
use wasmtime::component::__internal::wasmtime_environ::component::StringEncoding;
use wasmtime::component::__internal::{CanonicalAbiInfo, InstanceType, InterfaceType, LiftContext};
use wasmtime::component::{ComponentType, Lift, WasmList};

tokio::task_local! {
    /// What is left of the output cap of the job being lifted (the sandbox sets it around a job's
    /// calls): every image a job's calls return shares one cap. Lifting an image outside its
    /// scope fails: a missing cap must not read as no cap.
    pub static OUTPUT_LIMIT: std::cell::Cell<usize>;
}

/// The error of an image lifted where no output cap is set.
pub const NO_OUTPUT_LIMIT: &str = "an output image was lifted outside a job's output budget";

/// wasmtime's tag on a `latin1+utf16` string's length that says the string is UTF-16.
const UTF16_TAG: usize = 1 << 31;

/// The `bytes` of a returned image: copied when within what is left of [`OUTPUT_LIMIT`], else
/// only its length.
#[derive(Debug)]
pub enum OutputBytes {
    Kept(Vec<u8>),
    TooLarge(usize),
}

/// A returned string, copied up to `MAX` bytes (cut at a character boundary).
#[derive(Debug)]
pub struct BoundedText<const MAX: usize> {
    pub text: String,
    /// True when the guest's string was longer than `MAX`.
    pub cut: bool,
}

fn pointer_pair_from_flat(src: &[ValRaw; 2]) -> (usize, usize) {
    (src[0].get_u32() as usize, src[1].get_u32() as usize)
}

fn pointer_pair_from_memory(bytes: &[u8]) -> (usize, usize) {
    let word = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
    (word(0), word(4))
}

/// The guest memory range `ptr..ptr + len`, or an error (as wasmtime's own lifting gives).
fn range<'a>(cx: &LiftContext<'a>, ptr: usize, len: usize) -> wasmtime::Result<&'a [u8]> {
    let memory = cx.memory();
    ptr.checked_add(len)
        .and_then(|end| memory.get(ptr..end))
        .ok_or_else(|| wasmtime::Error::msg("pointer/length out of bounds of memory"))
}

unsafe impl ComponentType for OutputBytes {
    type Lower = [ValRaw; 2];
    const ABI: CanonicalAbiInfo = CanonicalAbiInfo::POINTER_PAIR;

    fn typecheck(ty: &InterfaceType, types: &InstanceType<'_>) -> wasmtime::Result<()> {
        <WasmList<u8> as ComponentType>::typecheck(ty, types)
    }
}

impl OutputBytes {
    fn take(cx: &LiftContext<'_>, ptr: usize, len: usize) -> wasmtime::Result<Self> {
        let bytes = range(cx, ptr, len)?;
        let left = OUTPUT_LIMIT
            .try_with(|left| left.replace(left.get().saturating_sub(len)))
            .map_err(|_| wasmtime::Error::msg(NO_OUTPUT_LIMIT))?;
        Ok(if len > left { OutputBytes::TooLarge(len) } else { OutputBytes::Kept(bytes.to_vec()) })
    }
}

/// `Lift` for a pointer-pair type read by its own `take(cx, ptr, len)`.
macro_rules! lift_by_take {
    ([$($generics:tt)*] $ty:ty) => {
        // SAFETY: the type's lowered form and ABI are a pointer pair, checked by its
        // `typecheck`; `take` reads only within the guest memory's bounds.
        unsafe impl<$($generics)*> Lift for $ty {
            fn linear_lift_from_flat(
                cx: &mut LiftContext<'_>,
                _ty: InterfaceType,
                src: &Self::Lower,
            ) -> wasmtime::Result<Self> {
                let (ptr, len) = pointer_pair_from_flat(src);
                Self::take(cx, ptr, len)
            }

            fn linear_lift_from_memory(
                cx: &mut LiftContext<'_>,
                _ty: InterfaceType,
                bytes: &[u8],
            ) -> wasmtime::Result<Self> {
                let (ptr, len) = pointer_pair_from_memory(bytes);
                Self::take(cx, ptr, len)
            }
        }
    };
}

// `list<u8>`: copied whole while the output budget lasts.
lift_by_take!([] OutputBytes);

unsafe impl<const MAX: usize> ComponentType for BoundedText<MAX> {
    type Lower = [ValRaw; 2];
    const ABI: CanonicalAbiInfo = CanonicalAbiInfo::POINTER_PAIR;

    fn typecheck(ty: &InterfaceType, types: &InstanceType<'_>) -> wasmtime::Result<()> {
        <String as ComponentType>::typecheck(ty, types)
    }
}

impl<const MAX: usize> BoundedText<MAX> {
    /// Reads at most `MAX` bytes' worth of the string, whatever its encoding: UTF-8 (what Rust
    /// and C guests use) is copied up to `MAX` bytes; UTF-16 and latin1 are decoded one code unit
    /// at a time until `MAX` bytes of UTF-8 are made. The whole length is only bounds-checked.
    /// Invalid text within the bound is replaced (U+FFFD), so a bad log line never fails a call.
    fn take(cx: &LiftContext<'_>, ptr: usize, len: usize) -> wasmtime::Result<Self> {
        match cx.options().string_encoding {
            StringEncoding::Utf8 => {
                let kept = &range(cx, ptr, len)?[..len.min(MAX)];
                let text = match std::str::from_utf8(kept) {
                    Ok(text) => text.to_string(),
                    // A character cut in two at MAX is dropped, not replaced.
                    Err(e) if e.error_len().is_none() => std::str::from_utf8(&kept[..e.valid_up_to()]).unwrap().into(),
                    Err(_) => String::from_utf8_lossy(kept).into_owned(),
                };
                Ok(BoundedText { text, cut: len > MAX })
            }
            StringEncoding::Utf16 => Self::utf16(cx, ptr, len),
            StringEncoding::CompactUtf16 if len & UTF16_TAG != 0 => Self::utf16(cx, ptr, len ^ UTF16_TAG),
            StringEncoding::CompactUtf16 => {
                let bytes = range(cx, ptr, len)?;
                Ok(Self::collect(bytes.iter().map(|&b| char::from(b))))
            }
        }
    }

    fn utf16(cx: &LiftContext<'_>, ptr: usize, units: usize) -> wasmtime::Result<Self> {
        if !ptr.is_multiple_of(2) {
            return Err(wasmtime::Error::msg("string pointer not aligned to 2"));
        }
        let bytes = range(cx, ptr, units.saturating_mul(2))?;
        let units_iter = bytes.chunks_exact(2).map(|pair| u16::from_le_bytes([pair[0], pair[1]]));
        let chars = char::decode_utf16(units_iter).map(|c| c.unwrap_or(char::REPLACEMENT_CHARACTER));
        Ok(Self::collect(chars))
    }

    /// Takes characters while they fit in `MAX` bytes of UTF-8 (the iterator is lazy: nothing
    /// past them is read).
    fn collect(chars: impl Iterator<Item = char>) -> Self {
        let mut text = String::new();
        for c in chars {
            if text.len() + c.len_utf8() > MAX {
                return BoundedText { text, cut: true };
            }
            text.push(c);
        }
        BoundedText { text, cut: false }
    }
}

// `string`: at most `MAX` bytes of UTF-8 (or the code units that make them) are read.
lift_by_take!([const MAX: usize] BoundedText<MAX>);

/// A returned list of at most `MAX` elements: a longer one fails the lift before anything is
/// allocated for it (wasmtime's own `Vec` lift allocates what the guest's length says).
#[derive(Debug)]
pub struct BoundedList<T, const MAX: usize>(pub Vec<T>);

unsafe impl<T: ComponentType, const MAX: usize> ComponentType for BoundedList<T, MAX> {
    type Lower = [ValRaw; 2];
    const ABI: CanonicalAbiInfo = CanonicalAbiInfo::POINTER_PAIR;

    fn typecheck(ty: &InterfaceType, types: &InstanceType<'_>) -> wasmtime::Result<()> {
        <Vec<T> as ComponentType>::typecheck(ty, types)
    }
}

fn check_count<const MAX: usize>(len: usize) -> wasmtime::Result<()> {
    if len > MAX {
        return Err(wasmtime::Error::msg(format!("a returned list holds {len} items, over the limit of {MAX}")));
    }
    Ok(())
}

// SAFETY: the lowered form and ABI are those of `list<T>` (a pointer pair), checked by
// `typecheck`; after the length check, wasmtime's own `Vec<T>` lift reads the elements.
unsafe impl<T: Lift, const MAX: usize> Lift for BoundedList<T, MAX> {
    fn linear_lift_from_flat(cx: &mut LiftContext<'_>, ty: InterfaceType, src: &Self::Lower) -> wasmtime::Result<Self> {
        check_count::<MAX>(pointer_pair_from_flat(src).1)?;
        Vec::<T>::linear_lift_from_flat(cx, ty, src).map(BoundedList)
    }

    fn linear_lift_from_memory(cx: &mut LiftContext<'_>, ty: InterfaceType, bytes: &[u8]) -> wasmtime::Result<Self> {
        check_count::<MAX>(pointer_pair_from_memory(bytes).1)?;
        Vec::<T>::linear_lift_from_memory(cx, ty, bytes).map(BoundedList)
    }
}

#[cfg(test)]
mod tests {
    //! Each lift against a hand-written component, so what wasmtime does around it (when the
    //! guest's post-return runs, which string encoding arrives) is the real thing.

    use std::cell::Cell;

    use wasmtime::component::{Component, Linker};
    use wasmtime::{Config, Engine, Store};

    use super::*;

    /// `image` returns 6 bytes ("pixels") and its post-return overwrites them, as a guest's
    /// allocator reusing freed memory would. `text` returns `units` code units of U+4141 in the
    /// encoding asked for (a 3-byte character in UTF-8; in latin1, `units` bytes of 'A').
    fn component(encoding: &str, units: u32) -> Vec<u8> {
        let tagged = if encoding == "latin1+utf16-as-utf16" { units | (1 << 31) } else { units };
        let encoding = encoding.trim_end_matches("-as-utf16");
        let pages = (units * 2).div_ceil(65536) + 2;
        wat::parse_str(format!(
            r#"(component
  (core module $m
    (memory (export "memory") {pages})
    (data (i32.const 64) "pixels")
    (func (export "image") (result i32)
      (i32.store (i32.const 0) (i32.const 64))
      (i32.store (i32.const 4) (i32.const 6))
      (i32.const 0))
    (func (export "free") (param i32)
      (memory.fill (i32.const 64) (i32.const 88) (i32.const 6)))
    (func (export "text") (result i32)
      (memory.fill (i32.const 65536) (i32.const 65) (i32.const {bytes}))
      (i32.store (i32.const 8) (i32.const 65536))
      (i32.store (i32.const 12) (i32.const {tagged}))
      (i32.const 8)))
  (core instance $i (instantiate $m))
  (func (export "image") (result (list u8))
    (canon lift (core func $i "image") (memory (core memory $i "memory")) (post-return (core func $i "free"))))
  (func (export "text") (result string)
    (canon lift (core func $i "text") (memory (core memory $i "memory")) string-encoding={encoding}))
)"#,
            bytes = units * 2,
        ))
        .expect("valid WAT")
    }

    fn instance(bytes: &[u8]) -> (Store<()>, wasmtime::component::Instance) {
        let mut config = Config::new();
        config.wasm_component_model(true);
        let engine = Engine::new(&config).unwrap();
        let component = Component::new(&engine, bytes).unwrap();
        let mut store = Store::new(&engine, ());
        let instance = Linker::new(&engine).instantiate(&mut store, &component).unwrap();
        (store, instance)
    }

    fn image(limit: Option<usize>) -> wasmtime::Result<OutputBytes> {
        let (mut store, instance) = instance(&component("utf8", 0));
        let func = instance.get_typed_func::<(), (OutputBytes,)>(&mut store, "image")?;
        match limit {
            Some(limit) => OUTPUT_LIMIT.sync_scope(Cell::new(limit), || func.call(&mut store, ())),
            None => func.call(&mut store, ()),
        }
        .map(|(out,)| out)
    }

    #[test]
    fn results_are_lifted_before_the_guests_post_return_frees_them() {
        match image(Some(1024)).unwrap() {
            OutputBytes::Kept(bytes) => assert_eq!(bytes, b"pixels", "lifted after post-return overwrote it"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn an_output_over_what_is_left_is_not_copied() {
        assert!(matches!(image(Some(5)).unwrap(), OutputBytes::TooLarge(6)));
    }

    #[test]
    fn an_output_lifted_outside_a_budget_is_refused() {
        let err = image(None).unwrap_err();
        assert!(format!("{err:#}").contains(NO_OUTPUT_LIMIT), "{err:#}");
    }

    fn text(encoding: &str, units: u32) -> BoundedText<1024> {
        let (mut store, instance) = instance(&component(encoding, units));
        let func = instance.get_typed_func::<(), (BoundedText<1024>,)>(&mut store, "text").unwrap();
        func.call(&mut store, ()).unwrap().0
    }

    #[test]
    fn strings_are_read_up_to_their_bound_in_every_encoding() {
        // 1 Mi code units (2 MiB of UTF-16, 3 MiB as UTF-8): 341 characters fit in 1024 bytes.
        for encoding in ["utf16", "latin1+utf16-as-utf16"] {
            let long = text(encoding, 1 << 20);
            assert!(long.cut, "{encoding}");
            assert_eq!(long.text, "\u{4141}".repeat(341), "{encoding}");
            let short = text(encoding, 10);
            assert!(!short.cut, "{encoding}");
            assert_eq!(short.text, "\u{4141}".repeat(10), "{encoding}");
        }
        let latin1 = text("latin1+utf16", 1 << 20);
        assert!(latin1.cut);
        assert_eq!(latin1.text, "A".repeat(1024));
        let utf8 = text("utf8", 1 << 20);
        assert!(utf8.cut);
        assert_eq!(utf8.text, "A".repeat(1024));
    }
}
