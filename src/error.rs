//! The one error type of spmd, with variants a caller can match on.

use std::io;

/// Everything that can go wrong in spmd.
///
/// Each message says what failed and with which peer; match on the variant
/// to react to a particular failure.
///
/// ```
/// # fn demo(world: &spmd::World) {
/// match world.receive::<u64>(1) {
///     Ok(v) => println!("got {v}"),
///     Err(spmd::Error::PeerGone { rank }) => eprintln!("rank {rank} left"),
///     Err(e) => eprintln!("{e}"),
/// }
/// # }
/// ```
#[derive(thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A rank number outside `0..size` was given.
    #[error("rank {rank} is out of range: this job has {size} ranks (0..{size})")]
    InvalidRank {
        /// The rank that was given.
        rank: usize,
        /// The size of the job.
        size: usize,
    },

    /// An argument other than a rank was wrong (a buffer of the wrong length,
    /// a root's slice of the wrong size, ...).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),

    /// A value could not be serialized.
    #[error("cannot serialize a value of type {type_name}: {reason}")]
    Encode {
        /// The Rust type that was being sent.
        type_name: &'static str,
        /// What the serializer said.
        reason: String,
    },

    /// The bytes of a received message do not decode as the requested type.
    /// The message stays queued, for a receive of the type that was sent.
    #[error(
        "the message from rank {sender} (tag {tag}, {len} bytes) does not decode as {type_name}: {reason}; \
         it stays queued for a receive of what was sent"
    )]
    Decode {
        /// The Rust type the receive asked for.
        type_name: &'static str,
        /// The rank that sent the message.
        sender: usize,
        /// The message's tag.
        tag: u32,
        /// The message's length in bytes.
        len: u64,
        /// What the decoder said.
        reason: String,
    },

    /// A message holds another type than the receive asked for: a serde
    /// value received as plain numbers or the other way round, or numbers
    /// of one type received as another (`u32` as `u64`, say). The message
    /// stays queued, for a receive of the type that was sent.
    #[error(
        "the message from rank {sender} (tag {tag}) holds {sent_as}, but the receive asked for {received_as}; \
         it stays queued for a receive of what was sent"
    )]
    FormatMismatch {
        /// The rank that sent the message.
        sender: usize,
        /// The message's tag.
        tag: u32,
        /// What was sent, e.g. "numbers of type u32 (sent with send_slice ...)".
        sent_as: String,
        /// What the receive asked for.
        received_as: String,
    },

    /// A message is larger than the buffer given to receive it, or its length
    /// is not a whole number of elements. The message stays queued, for a
    /// receive with a larger buffer.
    #[error(
        "the message from rank {sender} (tag {tag}) has {message_bytes} bytes, which does not fit a buffer of \
         {buffer_bytes} bytes of {element}; it stays queued for a receive with room for it"
    )]
    Truncated {
        /// The rank that sent the message.
        sender: usize,
        /// The message's tag.
        tag: u32,
        /// The message's length in bytes.
        message_bytes: u64,
        /// The buffer's length in bytes.
        buffer_bytes: u64,
        /// The element type of the buffer.
        element: &'static str,
    },

    /// A peer rank has exited, finalized or lost its connection, so the
    /// operation can never complete.
    #[error("rank {rank} has gone: it finalized, exited or lost its connection")]
    PeerGone {
        /// The rank that has gone.
        rank: usize,
    },

    /// Ranks called different collectives at the same point, or the same
    /// one with different roots, lengths or element types. Every rank of
    /// the collective gets an error.
    #[error("ranks disagree on a collective: {detail}")]
    CollectiveMismatch {
        /// What each rank called, as far as this rank knows.
        detail: String,
    },

    /// Another rank failed in a collective this rank was part of (its
    /// buffers were wrong, say), so this rank's part cannot complete.
    #[error("rank {rank} failed {detail}")]
    CollectiveFailed {
        /// The rank that failed.
        rank: usize,
        /// In which collective, and its error.
        detail: String,
    },

    /// An earlier collective of this communicator failed (on this rank or
    /// another), so the ranks no longer agree on where they are: every
    /// later collective on it fails too. Point-to-point messages still work.
    #[error("the collectives of this communicator failed earlier, {detail}")]
    CollectivesBroken {
        /// Which call failed first, and how.
        detail: String,
    },

    /// This rank has finalized ([`World::finalize`](crate::World::finalize),
    /// or the `World` was dropped): a communicator kept beyond that can no
    /// longer communicate.
    #[error("this rank has finalized: a communicator kept after World::finalize cannot communicate")]
    Finalized,

    /// spmd was called from inside spmd on the same thread: from an
    /// operator's closure while a collective combines with it, or from a
    /// `Drop` that such a closure runs. An operator must only combine its
    /// two values.
    #[error(
        "spmd was called from inside spmd (from an operator's closure, or a Drop run by one): an operator must only \
         combine its two values"
    )]
    Reentered,

    /// The launcher ended the job (another rank failed, or spmdrun was
    /// interrupted), or the launcher itself has gone.
    #[error("the job was ended by the launcher: {reason}")]
    JobEnded {
        /// Why, as the launcher said it.
        reason: String,
    },

    /// A peer sent a frame or message that breaks the protocol.
    #[error("protocol error from {peer}: bad {field}: {detail}")]
    Protocol {
        /// Who sent it ("rank 3", "the launcher", ...).
        peer: String,
        /// Which field of the frame was wrong.
        field: &'static str,
        /// What was wrong with it.
        detail: String,
    },

    /// A connection did not prove it knows the job's secret.
    #[error("authentication with {peer} failed: {detail}")]
    Authentication {
        /// Who was on the other end.
        peer: String,
        /// What went wrong.
        detail: String,
    },

    /// The process environment does not describe a valid job.
    #[error("cannot start this rank: {0}")]
    Bootstrap(String),

    /// The program was started as one of several ranks by an MPI launcher
    /// (`mpirun`, `mpiexec` or `srun`) but built without spmd's `mpi`
    /// feature, or started by one MPI's launcher but linked to the other
    /// MPI (each rank would be a job of its own).
    #[error("this program was started by {launcher}, but {problem}")]
    WrongLauncher {
        /// The launcher that was detected.
        launcher: &'static str,
        /// Why this process cannot be one of its ranks, and what to do.
        problem: String,
    },

    /// `init` was called twice in one process.
    #[error("spmd is already initialized in this process; call init() once and share the World")]
    AlreadyInitialized,

    /// An operation did not complete within its time limit.
    #[error("timed out after {seconds:.3} s waiting for {what}")]
    Timeout {
        /// What was being waited for.
        what: String,
        /// The limit that passed.
        seconds: f64,
    },

    /// A call into the MPI library returned an error (on the MPI backend
    /// only; most MPI errors end the job at once, as MPI's default).
    #[error("{call} failed: {detail}")]
    Mpi {
        /// The MPI function.
        call: &'static str,
        /// MPI's own description of the error.
        detail: String,
    },

    /// An operating-system call failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
}

impl Error {
    /// True if another rank caused the error: it went away, failed in a
    /// collective, or spmdrun is ending the job because of it; or its
    /// connection vanished under this rank. This rank's own failure is
    /// then a consequence, not the cause.
    ///
    /// ```no_run
    /// let world = spmd::init()?;
    /// if let Err(e) = world.receive::<u64>(1) {
    ///     if e.blames_a_peer() {
    ///         eprintln!("rank 1 failed first: {e}");
    ///     }
    /// }
    /// # Ok::<(), spmd::Error>(())
    /// ```
    pub fn blames_a_peer(&self) -> bool {
        use io::ErrorKind::*;
        match self {
            Error::PeerGone { .. }
            | Error::JobEnded { .. }
            | Error::CollectiveFailed { .. }
            | Error::Protocol { field: "stream", .. } => true,
            // A peer's socket that vanished or closed under this rank.
            Error::Io { source, .. } => matches!(
                source.kind(),
                ConnectionReset | ConnectionAborted | ConnectionRefused | BrokenPipe | UnexpectedEof | NotFound
            ),
            _ => false,
        }
    }

    /// Wraps an I/O error with a description of what was being done.
    pub(crate) fn io(context: impl Into<String>, source: io::Error) -> Error {
        Error::Io {
            context: context.into(),
            source,
        }
    }

    /// A protocol error from `peer` about `field`.
    pub(crate) fn protocol(peer: impl Into<String>, field: &'static str, detail: impl Into<String>) -> Error {
        Error::Protocol {
            peer: peer.into(),
            field,
            detail: detail.into(),
        }
    }
}

/// Shows the message, as `Display` does: `fn main() -> Result<(), spmd::Error>`
/// then ends with a readable line (`Error: rank 3 has gone: ...`).
impl std::fmt::Debug for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

/// The result type of every fallible spmd call.
pub type Result<T> = std::result::Result<T, Error>;

#[cfg(test)]
mod tests {
    use super::Error;

    #[test]
    fn errors_another_rank_caused_blame_a_peer() {
        let peer = [
            Error::PeerGone { rank: 1 },
            Error::CollectiveFailed {
                rank: 1,
                detail: String::new(),
            },
            Error::Io {
                context: "reading rank 1".into(),
                source: std::io::Error::from(std::io::ErrorKind::ConnectionReset),
            },
        ];
        assert!(peer.iter().all(Error::blames_a_peer), "{peer:?}");
        let own = [
            Error::InvalidArgument("a tag".into()),
            Error::Finalized,
            Error::Timeout {
                what: "a receive".into(),
                seconds: 1.0,
            },
        ];
        assert!(!own.iter().any(Error::blames_a_peer), "{own:?}");
    }
}
