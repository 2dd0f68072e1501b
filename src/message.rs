//! How values become bytes and back: serde values through bincode 2, and
//! slices of plain numbers (`bytemuck::Pod`) as their raw bytes.

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

/// Serializes `value` into a message payload.
pub(crate) fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>> {
    bincode::serde::encode_to_vec(value, config()).map_err(|e| Error::Encode {
        type_name: type_name::<T>(),
        reason: e.to_string(),
    })
}

/// A copy of a plain-number slice's bytes, for a send that must not borrow
/// it.
pub(crate) fn pod_copy<T: Pod>(data: &[T]) -> Vec<u8> {
    crate::pool::copy_of(pod_bytes(data))
}

/// Deserializes a received message as a `T`, checking that it was sent as a
/// serde value and that every byte was used.
pub(crate) fn decode<T: DeserializeOwned>(env: &Envelope) -> Result<T> {
    if env.kind != Kind::Serde {
        return Err(Error::FormatMismatch {
            sender: env.source,
            tag: env.tag,
            sent_as: "as a plain-number slice (send_slice)",
            received_as: "as a serde value (receive); use receive_into or receive_vec",
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

/// Turns a raw message into a new vector of elements.
pub(crate) fn to_vec<T: Pod>(env: &Envelope) -> Result<Vec<T>> {
    check_raw::<T>(env, None)?;
    let count = env.payload.len() / std::mem::size_of::<T>().max(1);
    let mut out = vec![T::zeroed(); count];
    bytemuck::cast_slice_mut::<T, u8>(&mut out).copy_from_slice(&env.payload);
    Ok(out)
}
