//! How the collective algorithms carry any value type: message bodies, the codecs that make them, and combining.

use bytemuck::Pod;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::envelope::{Envelope, Format};
use crate::error::{Error, Result};
use crate::message;

/// A message body: its format and bytes.
pub(crate) type Body = (Format, Vec<u8>);

/// An empty body (a barrier's message, a missing part).
pub(super) fn empty() -> Body {
    (Format::Serde, Vec::new())
}

/// Turns values into message bodies and back.
pub(crate) trait Codec<T> {
    fn encode(&self, value: &T) -> Result<Body>;
    fn decode(&self, env: &Envelope) -> Result<T>;
    /// Like `decode`, but may take the payload instead of copying it.
    fn decode_owned(&self, env: Envelope) -> Result<T> {
        self.decode(&env)
    }
}

/// Serde values through bincode.
pub(crate) struct SerdeCodec;

impl<T: Serialize + DeserializeOwned> Codec<T> for SerdeCodec {
    fn encode(&self, value: &T) -> Result<Body> {
        message::encode(value)
    }
    fn decode(&self, env: &Envelope) -> Result<T> {
        decode_part(env)
    }
}

/// Decodes another rank's part of a collective. A part that does not
/// decode as this rank's type means the ranks gave values of different
/// types: a `CollectiveMismatch`, not a `Decode` error (whose message a
/// receive of the right type could still take; a part is nobody's to take).
pub(crate) fn decode_part<T: DeserializeOwned>(env: &Envelope) -> Result<T> {
    message::decode(env).map_err(|e| match e {
        Error::Decode {
            type_name, len, reason, ..
        } => Error::CollectiveMismatch {
            detail: format!(
                "another rank's part ({len} bytes) does not decode as {type_name} ({reason}): the ranks gave values of \
                 different types, or the type refused the value"
            ),
        },
        other => other,
    })
}

/// Vectors of plain numbers as raw bytes.
pub(crate) struct PodCodec;

impl<E: Pod> Codec<Vec<E>> for PodCodec {
    fn encode(&self, value: &Vec<E>) -> Result<Body> {
        Ok((message::raw::<E>(), message::pod_copy(value)))
    }
    fn decode(&self, env: &Envelope) -> Result<Vec<E>> {
        if env.format != message::raw::<E>() {
            return Err(part_mismatch::<E>(env));
        }
        message::to_vec(env)
    }
}

/// The error for another rank's part of a collective that holds something
/// else than this rank's numbers of type `E`: the ranks passed slices of
/// different types. A `CollectiveMismatch`, not a `FormatMismatch`: a part
/// is nobody's to receive.
pub(crate) fn part_mismatch<E: Pod>(env: &Envelope) -> Error {
    types_differ(env.source, env.format, message::raw::<E>())
}

/// The error for rank `source`'s part of a collective in format `theirs`
/// where this rank's is in `ours`.
pub(crate) fn types_differ(source: usize, theirs: Format, ours: Format) -> Error {
    Error::CollectiveMismatch {
        detail: format!(
            "rank {source} passed {} where this rank passed {}",
            message::describe_format(theirs),
            message::describe_format(ours)
        ),
    }
}

/// The raw bytes of plain numbers of the type `format` names, as they
/// are: the payload buffer is taken, not copied.
pub(crate) struct RawCodec(pub Format);

impl RawCodec {
    fn check(&self, env: &Envelope) -> Result<()> {
        if env.format == self.0 {
            return Ok(());
        }
        Err(types_differ(env.source, env.format, self.0))
    }
}

impl Codec<Vec<u8>> for RawCodec {
    fn encode(&self, value: &Vec<u8>) -> Result<Body> {
        Ok((self.0, crate::pool::copy_of(value)))
    }
    fn decode(&self, env: &Envelope) -> Result<Vec<u8>> {
        self.check(env)?;
        Ok(crate::pool::copy_of(&env.payload))
    }
    fn decode_owned(&self, mut env: Envelope) -> Result<Vec<u8>> {
        self.check(&env)?;
        Ok(std::mem::take(&mut env.payload))
    }
}

/// A body this rank keeps for itself, as if it had arrived from `source`.
pub(crate) fn own_envelope(source: usize, body: Body) -> Envelope {
    Envelope::new(source, 0, crate::wire::Context::WORLD_COLLECTIVE, body.0, body.1)
}

/// How two values combine: `(lower, upper)` in rank order, by value so an
/// implementation can reuse a buffer; may fail (e.g. lengths differ).
pub(crate) type Combine<'a, T> = dyn Fn(T, T) -> Result<T> + 'a;
