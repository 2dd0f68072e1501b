//! How values become bytes and back: serde values through bincode 2, and
//! slices of plain numbers (`bytemuck::Pod`) as their raw bytes, tagged
//! with their element type, as are vectors and slices of numbers sent as
//! serde values.
//!
//! A receive that fails because of the type it asked for hands the message
//! back ([`Rejected`]) so that it goes back to the queue for a receive of
//! the right type.

use std::any::type_name;

use bytemuck::Pod;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::element;
use crate::envelope::{Envelope, Format, Room};
use crate::error::{Error, Result};

/// A received message that the receive could not take as the type it
/// asked for, with the reason.
#[derive(Debug)]
pub(crate) struct Rejected {
    pub error: Error,
    pub env: Envelope,
}

/// The outcome of taking a message as a value.
pub(crate) type Taken<T> = std::result::Result<T, Box<Rejected>>;

pub(crate) fn reject<T>(error: Error, env: Envelope) -> Taken<T> {
    Err(Box::new(Rejected { error, env }))
}

fn config() -> impl bincode::config::Config {
    bincode::config::standard().with_fixed_int_encoding()
}

/// Turns `value` into a message body: its format and bytes. A vector or
/// slice of plain numbers travels as its raw bytes (see [`as_raw`]); any
/// other value through bincode.
pub(crate) fn encode<T: Serialize + ?Sized>(value: &T) -> Result<(Format, Vec<u8>)> {
    if let Some((format, bytes)) = as_raw(value) {
        return Ok((format, crate::pool::copy_of(bytes)));
    }
    let bytes = bincode::serde::encode_to_vec(value, config()).map_err(|e| Error::Encode {
        type_name: type_name::<T>(),
        reason: e.to_string(),
    })?;
    Ok((Format::Serde, bytes))
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

/// The format and bytes of `value` if it is a `Vec` or a slice of plain
/// numbers (integers of 8 to 64 bits, `f32`, `f64`): such a value is sent
/// as its raw bytes, like [`Communicator::send_slice`](crate::Communicator::send_slice)
/// would, instead of element by element through serde.
pub(crate) fn as_raw<T: ?Sized>(value: &T) -> Option<(Format, &[u8])> {
    let id = typeid::of::<T>();
    macro_rules! check {
        ($e:ty) => {
            if id == typeid::of::<Vec<$e>>() {
                // SAFETY: `T` is `Vec<$e>`: the same type id, and neither
                // type has a lifetime the id could have erased.
                let v = unsafe { &*(value as *const T).cast::<Vec<$e>>() };
                return Some((raw::<$e>(), bytemuck::cast_slice(v.as_slice())));
            }
            if id == typeid::of::<[$e]>() {
                // SAFETY: `T` is `[$e]`, whose bytes are all initialized
                // plain numbers, `size_of_val` of them.
                let bytes = unsafe {
                    std::slice::from_raw_parts((value as *const T).cast::<u8>(), std::mem::size_of_val(value))
                };
                return Some((raw::<$e>(), bytes));
            }
        };
    }
    for_each_number!(check);
    None
}

/// The element code of `T` if it is one of the plain-number types a serde
/// send carries raw in vectors.
#[cfg(feature = "mpi")]
pub(crate) fn number_code<T: ?Sized>() -> Option<u16> {
    let id = typeid::of::<T>();
    macro_rules! check {
        ($e:ty) => {
            if id == typeid::of::<$e>() {
                return Some(element::code_of::<$e>());
            }
        };
    }
    for_each_number!(check);
    None
}

/// The format of raw `E`s.
pub(crate) fn raw<E: Pod>() -> Format {
    Format::Raw(element::code_of::<E>())
}

/// Room for a message of `E`s to land in a vector allocated for it.
pub(crate) fn fresh_room<E: Pod>() -> Room {
    Room::Fresh {
        size: std::mem::size_of::<E>(),
        align: std::mem::align_of::<E>(),
        element: element::code_of::<E>(),
    }
}

/// Room for a message to land in, if `T` is a `Vec` of plain numbers (what
/// [`as_raw`] sends as raw bytes).
pub(crate) fn room_for<T>() -> Option<Room> {
    let id = typeid::of::<T>();
    macro_rules! check {
        ($e:ty) => {
            if id == typeid::of::<Vec<$e>>() {
                return Some(fresh_room::<$e>());
            }
        };
    }
    for_each_number!(check);
    None
}

/// What a message or a collective's part holds, for errors: "serde
/// values", or "numbers of type f64".
pub(crate) fn describe_format(format: Format) -> String {
    match format {
        Format::Serde => "serde values".into(),
        Format::Raw(code) => element::describe(code),
    }
}

/// How a message was sent, for errors.
fn sent_as(format: Format) -> String {
    match format {
        Format::Serde => "a serde value (sent with send)".into(),
        Format::Raw(code) => format!(
            "{} (sent with send_slice, or send of a Vec or slice of them)",
            element::describe(code)
        ),
    }
}

fn mismatch(env: &Envelope, received_as: String) -> Error {
    Error::FormatMismatch {
        sender: env.source,
        tag: env.tag,
        sent_as: sent_as(env.format),
        received_as,
    }
}

/// Takes a raw message as a `T` if `T` is a `Vec` of plain numbers of the
/// message's element type; `None` if `T` is not such a vector at all.
fn vec_of_numbers<T>(env: Envelope) -> Option<Taken<T>> {
    let id = typeid::of::<T>();
    macro_rules! check {
        ($e:ty) => {
            if id == typeid::of::<Vec<$e>>() {
                return Some(into_vec::<$e>(env).map(|v| {
                    let v = std::mem::ManuallyDrop::new(v);
                    // SAFETY: `T` is `Vec<$e>` (as in `as_raw`); the value
                    // moves out of the ManuallyDrop, so it is dropped once.
                    unsafe { std::ptr::read((&*v as *const Vec<$e>).cast::<T>()) }
                }));
            }
        };
    }
    for_each_number!(check);
    drop(env);
    None
}

/// A message taken as a `T`: a serde value decoded, or raw numbers taken
/// as a `Vec` of their type. On failure the message comes back.
pub(crate) fn decode_owned<T: DeserializeOwned>(env: Envelope) -> Taken<T> {
    if let Format::Raw(_) = env.format {
        if room_for::<T>().is_some() {
            return vec_of_numbers::<T>(env).unwrap_or_else(|| unreachable!("room_for said T is a vector of numbers"));
        }
        let e = mismatch(&env, format!("a serde value of type {}", type_name::<T>()));
        return reject(e, env);
    }
    match decode_serde(&env) {
        Ok(v) => Ok(v),
        Err(e) => reject(e, env),
    }
}

/// Decodes a serde message, checking that every byte was used.
fn decode_serde<T: DeserializeOwned>(env: &Envelope) -> Result<T> {
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

/// [`decode_owned`] for a message the caller keeps (collectives).
pub(crate) fn decode<T: DeserializeOwned>(env: &Envelope) -> Result<T> {
    if let Format::Raw(_) = env.format {
        if room_for::<T>().is_none() {
            return Err(mismatch(env, format!("a serde value of type {}", type_name::<T>())));
        }
        macro_rules! check {
            ($e:ty) => {
                if typeid::of::<T>() == typeid::of::<Vec<$e>>() {
                    let v = std::mem::ManuallyDrop::new(to_vec::<$e>(env)?);
                    // SAFETY: as in `vec_of_numbers`.
                    return Ok(unsafe { std::ptr::read((&*v as *const Vec<$e>).cast::<T>()) });
                }
            };
        }
        for_each_number!(check);
    }
    decode_serde(env)
}

/// A copy of a plain-number slice's bytes, for a send that must not borrow
/// it.
pub(crate) fn pod_copy<T: Pod>(data: &[T]) -> Vec<u8> {
    crate::pool::copy_of(pod_bytes(data))
}

/// The raw bytes of a plain-number slice.
pub(crate) fn pod_bytes<T: Pod>(data: &[T]) -> &[u8] {
    bytemuck::cast_slice(data)
}

/// Checks that a message holds `T`s (a whole number of them, fitting
/// `buffer_bytes` when there is a buffer).
pub(crate) fn check_raw<T: Pod>(env: &Envelope, buffer_bytes: Option<usize>) -> Result<()> {
    if env.format != raw::<T>() {
        let wanted = element::describe(element::code_of::<T>());
        return Err(mismatch(env, format!("{wanted} (receive_into/receive_vec)")));
    }
    let len = env.len();
    let size = std::mem::size_of::<T>() as u64;
    let whole = if size == 0 { len == 0 } else { len % size == 0 };
    if whole && buffer_bytes.is_none_or(|b| len <= b as u64) {
        return Ok(());
    }
    Err(Error::Truncated {
        sender: env.source,
        tag: env.tag,
        message_bytes: len,
        buffer_bytes: buffer_bytes.map_or(len, |b| b as u64),
        element: type_name::<T>(),
    })
}

/// Copies a raw message into the caller's buffer, or checks one that
/// landed there; returns the number of elements. The message may be
/// shorter than the buffer.
pub(crate) fn copy_into<T: Pod>(env: &Envelope, buf: &mut [T]) -> Result<usize> {
    let bytes: &mut [u8] = bytemuck::cast_slice_mut(buf);
    check_raw::<T>(env, Some(bytes.len()))?;
    if env.landed.is_none() {
        bytes[..env.payload.len()].copy_from_slice(&env.payload);
    }
    Ok(env.len() as usize / std::mem::size_of::<T>().max(1))
}

/// Turns a raw message the caller owns into a vector of elements, taking
/// the buffer it landed in if one was allocated for it.
pub(crate) fn into_vec<T: Pod>(mut env: Envelope) -> Taken<Vec<T>> {
    if let Some(fresh) = env.fresh.take() {
        match fresh.into_vec::<T>() {
            Ok(v) => return Ok(v),
            // Allocated for another element type: copy it like any message.
            Err(fresh) => env.unland(fresh),
        }
    }
    match to_vec(&env) {
        Ok(v) => Ok(v),
        Err(e) => reject(e, env),
    }
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
