//! How values become bytes and back: serde values through bincode 2, and
//! slices of plain numbers (`bytemuck::Pod`) as their raw bytes, as are
//! vectors and slices of numbers sent as serde values.

use std::any::type_name;

use bytemuck::Pod;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{Error, Result};
use crate::matching::Envelope;
use crate::wire::Kind;

fn config() -> impl bincode::config::Config {
    bincode::config::standard().with_fixed_int_encoding()
}

/// Turns `value` into a message body: its format and bytes. A vector or
/// slice of plain numbers travels as its raw bytes (see [`as_raw`]); any
/// other value through bincode.
pub(crate) fn encode<T: Serialize + ?Sized>(value: &T) -> Result<(Kind, Vec<u8>)> {
    if let Some(bytes) = as_raw(value) {
        return Ok((Kind::Raw, crate::pool::copy_of(bytes)));
    }
    let bytes = bincode::serde::encode_to_vec(value, config()).map_err(|e| Error::Encode {
        type_name: type_name::<T>(),
        reason: e.to_string(),
    })?;
    Ok((Kind::Serde, bytes))
}

/// Calls `$apply!(E)` for every plain-number type whose vectors and slices
/// a serde send carries as raw bytes.
macro_rules! for_each_number {
    ($apply:ident) => {
        $apply!(u8);
        $apply!(i8);
        $apply!(u16);
        $apply!(i16);
        $apply!(u32);
        $apply!(i32);
        $apply!(u64);
        $apply!(i64);
        $apply!(f32);
        $apply!(f64);
    };
}

/// The bytes of `value` if it is a `Vec` or a slice of plain numbers
/// (integers of 8 to 64 bits, `f32`, `f64`): such a value is sent as its
/// raw bytes, like [`World::send_slice`](crate::World::send_slice) would,
/// instead of element by element through serde.
pub(crate) fn as_raw<T: ?Sized>(value: &T) -> Option<&[u8]> {
    let id = typeid::of::<T>();
    macro_rules! check {
        ($e:ty) => {
            if id == typeid::of::<Vec<$e>>() {
                // SAFETY: `T` is `Vec<$e>`: the same type id, and neither
                // type has a lifetime the id could have erased.
                let v = unsafe { &*(value as *const T).cast::<Vec<$e>>() };
                return Some(bytemuck::cast_slice(v.as_slice()));
            }
            if id == typeid::of::<[$e]>() {
                // SAFETY: `T` is `[$e]`, whose bytes are all initialized
                // plain numbers, `size_of_val` of them.
                return Some(unsafe {
                    std::slice::from_raw_parts((value as *const T).cast::<u8>(), std::mem::size_of_val(value))
                });
            }
        };
    }
    for_each_number!(check);
    None
}

/// The element size and alignment of `T` if it is a `Vec` of plain numbers
/// (what [`as_raw`] sends as raw bytes), so that a receive can have the
/// message land in a vector allocated for it.
pub(crate) fn raw_vec_layout<T>() -> Option<(usize, usize)> {
    let id = typeid::of::<T>();
    macro_rules! check {
        ($e:ty) => {
            if id == typeid::of::<Vec<$e>>() {
                return Some((std::mem::size_of::<$e>(), std::mem::align_of::<$e>()));
            }
        };
    }
    for_each_number!(check);
    None
}

/// A raw message, owned or borrowed, that can become a vector of numbers.
trait RawMessage {
    fn into_numbers<E: Pod>(self) -> Result<Vec<E>>;
}

impl RawMessage for Envelope {
    fn into_numbers<E: Pod>(self) -> Result<Vec<E>> {
        into_vec(self)
    }
}

impl RawMessage for &Envelope {
    fn into_numbers<E: Pod>(self) -> Result<Vec<E>> {
        to_vec(self)
    }
}

/// A raw message decoded as a `T` if `T` is a `Vec` of plain numbers (the
/// receiving side of [`as_raw`]); the message back for any other `T`.
fn from_raw<T, M: RawMessage>(message: M) -> std::result::Result<Result<T>, M> {
    let id = typeid::of::<T>();
    macro_rules! check {
        ($e:ty) => {
            if id == typeid::of::<Vec<$e>>() {
                return Ok(message.into_numbers::<$e>().map(|v| {
                    let v = std::mem::ManuallyDrop::new(v);
                    // SAFETY: `T` is `Vec<$e>` (as in `as_raw`); the value
                    // moves out of the ManuallyDrop, so it is dropped once.
                    unsafe { std::ptr::read((&*v as *const Vec<$e>).cast::<T>()) }
                }));
            }
        };
    }
    for_each_number!(check);
    Err(message)
}

/// [`decode`] for a message the caller owns: a vector of numbers that
/// landed in a buffer allocated for it is taken as it is.
pub(crate) fn decode_owned<T: DeserializeOwned>(env: Envelope) -> Result<T> {
    if env.kind != Kind::Raw {
        return decode(&env);
    }
    from_raw::<T, _>(env).unwrap_or_else(|env| decode(&env))
}

/// A copy of a plain-number slice's bytes, for a send that must not borrow
/// it.
pub(crate) fn pod_copy<T: Pod>(data: &[T]) -> Vec<u8> {
    crate::pool::copy_of(pod_bytes(data))
}

/// Deserializes a received message as a `T`, checking that it was sent as a
/// serde value and that every byte was used.
pub(crate) fn decode<T: DeserializeOwned>(env: &Envelope) -> Result<T> {
    if env.kind == Kind::Raw {
        if let Ok(value) = from_raw::<T, _>(env) {
            return value;
        }
    }
    if env.kind != Kind::Serde {
        return Err(Error::FormatMismatch {
            sender: env.source,
            tag: env.tag,
            sent_as: "as plain numbers (send_slice, or send of a Vec or slice of plain numbers)",
            received_as: "as a serde value other than a Vec of plain numbers; use receive_into, receive_vec or the Vec type sent",
        });
    }
    let fail = |reason: String| Error::Decode {
        type_name: type_name::<T>(),
        sender: env.source,
        tag: env.tag,
        len: env.payload.len() as u64,
        reason,
    };
    let (value, used) = bincode::serde::decode_from_slice(&env.payload, config()).map_err(|e| fail(e.to_string()))?;
    if used != env.payload.len() {
        return Err(fail(format!(
            "only {used} of {} bytes were used; the sender sent a different type",
            env.payload.len()
        )));
    }
    Ok(value)
}

/// The raw bytes of a plain-number slice.
pub(crate) fn pod_bytes<T: Pod>(data: &[T]) -> &[u8] {
    bytemuck::cast_slice(data)
}

/// Checks a message that landed in the caller's buffer: a whole number of
/// elements (the buffer was big enough, or it would not have landed).
pub(crate) fn check_landed<T: Pod>(env: &Envelope) -> Result<()> {
    check_elements::<T>(env, env.status().len(), None)
}

fn check_raw<T: Pod>(env: &Envelope, buffer_bytes: Option<usize>) -> Result<()> {
    if env.kind != Kind::Raw {
        return Err(Error::FormatMismatch {
            sender: env.source,
            tag: env.tag,
            sent_as: "as a serde value (send)",
            received_as: "as a plain-number slice (receive_into/receive_vec); use receive",
        });
    }
    check_elements::<T>(env, env.payload.len() as u64, buffer_bytes.map(|b| b as u64))
}

/// Checks that `len` bytes are a whole number of `T`s and fit the buffer.
fn check_elements<T: Pod>(env: &Envelope, len: u64, buffer_bytes: Option<u64>) -> Result<()> {
    let size = std::mem::size_of::<T>() as u64;
    let whole = if size == 0 { len == 0 } else { len % size == 0 };
    if whole && buffer_bytes.is_none_or(|b| len <= b) {
        return Ok(());
    }
    Err(Error::Truncated {
        sender: env.source,
        tag: env.tag,
        message_bytes: len,
        buffer_bytes: buffer_bytes.unwrap_or(len),
        element: type_name::<T>(),
    })
}

/// Copies a raw message into the caller's buffer; returns the number of
/// elements written. The message may be shorter than the buffer.
pub(crate) fn copy_into<T: Pod>(env: &Envelope, buf: &mut [T]) -> Result<usize> {
    let bytes: &mut [u8] = bytemuck::cast_slice_mut(buf);
    check_raw::<T>(env, Some(bytes.len()))?;
    bytes[..env.payload.len()].copy_from_slice(&env.payload);
    Ok(env.payload.len() / std::mem::size_of::<T>().max(1))
}

/// Turns a raw message the caller owns into a vector of elements, taking
/// the buffer it landed in if one was allocated for it.
pub(crate) fn into_vec<T: Pod>(mut env: Envelope) -> Result<Vec<T>> {
    if let Some(fresh) = env.fresh.take() {
        match fresh.into_vec::<T>() {
            Ok(v) => return Ok(v),
            // Allocated for another element type: copy it like any message.
            Err(fresh) => env.unland(fresh),
        }
    }
    to_vec(&env)
}

/// Turns a raw message into a new vector of elements.
pub(crate) fn to_vec<T: Pod>(env: &Envelope) -> Result<Vec<T>> {
    check_raw::<T>(env, None)?;
    let size = std::mem::size_of::<T>();
    if size == 0 {
        return Ok(Vec::new());
    }
    let count = env.payload.len() / size;
    let mut out: Vec<T> = Vec::with_capacity(count);
    // SAFETY: the capacity holds `count` elements, exactly the payload's
    // bytes; any bytes are a valid T (Pod); the length is set once they
    // are all written. (No zeroing first: that would touch every page twice.)
    unsafe {
        std::ptr::copy_nonoverlapping(env.payload.as_ptr(), out.as_mut_ptr().cast::<u8>(), env.payload.len());
        out.set_len(count);
    }
    Ok(out)
}
