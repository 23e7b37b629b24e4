//! Reading a plugin's answer out of guest memory without copying more than the host allows.
//!
//! wasmtime lifts a call's results and then runs the guest's post-return (which frees them)
//! before the host sees them, so a lazily lifted `WasmList`/`WasmStr` would point at freed
//! memory. These types check the length *while lifting* and copy only what is within bounds: the
//! output image up to the per-call cap ([`OUTPUT_LIMIT`], set around the call), texts up to a
//! fixed size. They implement wasmtime's lifting traits by hand through its `__internal`
//! module, which is not covered by its API stability promise: this file is tied to the wasmtime
//! version in Cargo.lock (48) and checked by the sandbox tests.

use wasmtime::ValRaw;
use wasmtime::component::__internal::wasmtime_environ::component::StringEncoding;
use wasmtime::component::__internal::{CanonicalAbiInfo, InstanceType, InterfaceType, LiftContext};
use wasmtime::component::{ComponentType, Lift, WasmList};

tokio::task_local! {
    /// What is left of the output cap of the call being lifted (the sandbox sets it around each
    /// call): the images one call returns share one cap.
    pub static OUTPUT_LIMIT: std::cell::Cell<usize>;
}

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
        let left = OUTPUT_LIMIT.try_with(|left| left.replace(left.get().saturating_sub(len))).unwrap_or(usize::MAX);
        Ok(if len > left { OutputBytes::TooLarge(len) } else { OutputBytes::Kept(bytes.to_vec()) })
    }
}

// SAFETY: the lowered form and ABI are those of `list<u8>` (a pointer pair), checked by
// `typecheck`; lifting reads only within the guest memory's bounds.
unsafe impl Lift for OutputBytes {
    fn linear_lift_from_flat(
        cx: &mut LiftContext<'_>,
        _ty: InterfaceType,
        src: &Self::Lower,
    ) -> wasmtime::Result<Self> {
        let (ptr, len) = pointer_pair_from_flat(src);
        Self::take(cx, ptr, len)
    }

    fn linear_lift_from_memory(cx: &mut LiftContext<'_>, _ty: InterfaceType, bytes: &[u8]) -> wasmtime::Result<Self> {
        let (ptr, len) = pointer_pair_from_memory(bytes);
        Self::take(cx, ptr, len)
    }
}

unsafe impl<const MAX: usize> ComponentType for BoundedText<MAX> {
    type Lower = [ValRaw; 2];
    const ABI: CanonicalAbiInfo = CanonicalAbiInfo::POINTER_PAIR;

    fn typecheck(ty: &InterfaceType, types: &InstanceType<'_>) -> wasmtime::Result<()> {
        <String as ComponentType>::typecheck(ty, types)
    }
}

impl<const MAX: usize> BoundedText<MAX> {
    /// UTF-8 (what Rust and C guests use): copies at most `MAX` bytes. Other encodings are lifted
    /// by wasmtime (bounded by the guest's memory, which is within the call's budget) and cut.
    fn take(cx: &LiftContext<'_>, ptr: usize, len: usize) -> wasmtime::Result<Self> {
        let kept = &range(cx, ptr, len)?[..len.min(MAX)];
        let text = match std::str::from_utf8(kept) {
            Ok(text) => text,
            // A character cut in two at MAX is fine; invalid UTF-8 before it is not.
            Err(e) if e.error_len().is_none() => std::str::from_utf8(&kept[..e.valid_up_to()]).unwrap(),
            Err(e) => return Err(wasmtime::Error::msg(format!("string is not valid UTF-8: {e}"))),
        };
        Ok(BoundedText { text: text.to_string(), cut: len > MAX })
    }

    fn cut(text: String) -> Self {
        let mut end = text.len().min(MAX);
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        BoundedText { cut: end < text.len(), text: text[..end].to_string() }
    }

    fn utf8(cx: &LiftContext<'_>) -> bool {
        cx.options().string_encoding == StringEncoding::Utf8
    }
}

// SAFETY: the lowered form and ABI are those of `string` (a pointer pair), checked by
// `typecheck`; UTF-8 strings are read only within the guest memory's bounds, others are lifted by
// wasmtime's own `String` implementation.
unsafe impl<const MAX: usize> Lift for BoundedText<MAX> {
    fn linear_lift_from_flat(cx: &mut LiftContext<'_>, ty: InterfaceType, src: &Self::Lower) -> wasmtime::Result<Self> {
        if Self::utf8(cx) {
            let (ptr, len) = pointer_pair_from_flat(src);
            return Self::take(cx, ptr, len);
        }
        String::linear_lift_from_flat(cx, ty, src).map(Self::cut)
    }

    fn linear_lift_from_memory(cx: &mut LiftContext<'_>, ty: InterfaceType, bytes: &[u8]) -> wasmtime::Result<Self> {
        if Self::utf8(cx) {
            let (ptr, len) = pointer_pair_from_memory(bytes);
            return Self::take(cx, ptr, len);
        }
        String::linear_lift_from_memory(cx, ty, bytes).map(Self::cut)
    }
}

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
