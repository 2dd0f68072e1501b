//! How a rank whose own part of a collective fails tells the others on
//! the MPI backend: it sends its error in place of its part, so that they
//! fail too (`Error::CollectiveFailed`, naming it) instead of waiting for
//! a part that never comes or misreading the one that does.

use super::collective::Body;
use crate::envelope::Format;
use crate::error::{Error, Result};

/// The format that marks "this rank's call failed": its body is the
/// error's text, which the others report in `Error::CollectiveFailed`.
const FAILED: Format = Format::Raw(0xfffe);

/// The body a rank whose own arguments are wrong gives in place of its
/// part, so that the others fail too instead of waiting or misreading:
/// the rank that failed first (8 bytes, `u64::MAX` for the sender itself;
/// a rank passing on another's failure names that one), then the text.
pub(crate) fn failed(e: &Error) -> Body {
    let (origin, text) = match e {
        Error::CollectiveFailed { rank, detail } => (*rank as u64, detail.clone()),
        e => (u64::MAX, e.to_string()),
    };
    let mut bytes = origin.to_le_bytes().to_vec();
    bytes.extend_from_slice(text.as_bytes());
    (FAILED, bytes)
}

/// `body`, or if making it failed the failure to send in its place and
/// the error, which this rank returns once the others have heard.
pub(crate) fn or_failed(body: Result<Body>) -> (Body, Option<Error>) {
    match body {
        Ok(body) => (body, None),
        Err(e) => (failed(&e), Some(e)),
    }
}

/// The first failure another rank told of among `bodies` (each from the
/// rank `ranks` names), as the error this rank returns from `what`.
pub(crate) fn heard<'a>(what: &str, me: usize, bodies: impl IntoIterator<Item = (usize, &'a Body)>) -> Result<()> {
    let Some((sender, b)) = bodies.into_iter().find(|(r, b)| *r != me && b.0 == FAILED) else {
        return Ok(());
    };
    let (origin, text) = b.1.split_at(b.1.len().min(8));
    let origin = <[u8; 8]>::try_from(origin).map_or(u64::MAX, u64::from_le_bytes);
    let text = String::from_utf8_lossy(text);
    Err(match usize::try_from(origin) {
        Ok(rank) if origin != u64::MAX => Error::CollectiveFailed {
            rank,
            detail: text.into_owned(),
        },
        _ => Error::CollectiveFailed {
            rank: sender,
            detail: format!("in {what}: {text}"),
        },
    })
}
