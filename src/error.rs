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
#[derive(Debug, thiserror::Error)]
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
    #[error("the message from rank {sender} (tag {tag}, {len} bytes) does not decode as {type_name}: {reason}")]
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

    /// A message sent as a serde value was received as a plain-number slice,
    /// or the other way round.
    #[error("the message from rank {sender} (tag {tag}) was sent {sent_as}, but received {received_as}")]
    FormatMismatch {
        /// The rank that sent the message.
        sender: usize,
        /// The message's tag.
        tag: u32,
        /// How it was sent, e.g. "with send (serde)".
        sent_as: &'static str,
        /// How the receive expected it.
        received_as: &'static str,
    },

    /// A message is larger than the buffer given to receive it, or its length
    /// is not a whole number of elements.
    #[error(
        "the message from rank {sender} (tag {tag}) has {message_bytes} bytes, which does not fit a buffer of {buffer_bytes} bytes of {element}"
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

    /// The program was started by a launcher this build cannot work with
    /// (for example by `mpirun` without the `mpi` feature).
    #[error(
        "this program was started by {launcher}, but spmd was built without the `mpi` feature: start it with spmdrun, or rebuild with `--features mpi`"
    )]
    WrongLauncher {
        /// The launcher that was detected.
        launcher: &'static str,
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

/// The result type of every fallible spmd call.
pub type Result<T> = std::result::Result<T, Error>;
