//! What a receive asks for and what it got: [`Match`] (a source and a tag,
//! each or any), [`Selector`] (a match within one communication context)
//! and [`Status`] (the source, tag and size of a message).

use crate::envelope::Envelope;
use crate::wire::Context;

/// The largest tag a message may carry, on every backend: 2²⁸ − 1, the
/// smallest `MPI_TAG_UB` of the MPIs spmd runs on (MPICH's; Open MPI's is
/// 2³¹ − 1). A larger tag is [`Error::InvalidArgument`](crate::Error::InvalidArgument),
/// so that a program that runs under spmdrun runs under `mpirun` too.
///
/// ```
/// let world = spmd::init()?;
/// let me = world.rank();
/// world.send_with_tag(&1u8, me, spmd::MAX_TAG)?;
/// assert_eq!(world.receive_with_tag::<u8>(me, spmd::MAX_TAG)?, 1);
/// assert!(world.send_with_tag(&1u8, me, spmd::MAX_TAG + 1).is_err());
/// # Ok::<(), spmd::Error>(())
/// ```
pub const MAX_TAG: u32 = (1 << 28) - 1;

/// Which messages a receive or probe accepts: a source rank or any, and a
/// tag or any.
///
/// ```
/// use spmd::Match;
/// let from_three = Match::source(3);              // any tag from rank 3
/// let tagged = Match::tag(7);                     // tag 7 from any rank
/// let exact = Match::source(3).with_tag(7);       // tag 7 from rank 3
/// let anything = Match::any();
/// # let _ = (from_three, tagged, exact, anything);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Match {
    source: Option<usize>,
    tag: Option<u32>,
}

impl Match {
    /// Any message from any rank.
    pub fn any() -> Match {
        Match::default()
    }

    /// Any tag from rank `source`.
    pub fn source(source: usize) -> Match {
        Match {
            source: Some(source),
            tag: None,
        }
    }

    /// Tag `tag` from any rank.
    pub fn tag(tag: u32) -> Match {
        Match {
            source: None,
            tag: Some(tag),
        }
    }

    /// The same match, restricted to tag `tag`.
    pub fn with_tag(self, tag: u32) -> Match {
        Match { tag: Some(tag), ..self }
    }

    /// The same match, restricted to rank `source`.
    pub fn with_source(self, source: usize) -> Match {
        Match {
            source: Some(source),
            ..self
        }
    }

    /// The source rank this matches, or `None` for any.
    pub fn source_rank(&self) -> Option<usize> {
        self.source
    }

    /// The tag this matches, or `None` for any.
    pub fn tag_value(&self) -> Option<u32> {
        self.tag
    }
}

/// What a receive or probe learned about a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Status {
    source: usize,
    tag: u32,
    len: u64,
    element: u16,
}

impl Status {
    /// The rank that sent the message.
    pub fn source(&self) -> usize {
        self.source
    }

    /// The message's tag.
    pub fn tag(&self) -> u32 {
        self.tag
    }

    /// The message's length in bytes (serialized bytes for serde values).
    pub fn len(&self) -> u64 {
        self.len
    }

    /// True when the message has no bytes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The number of elements of a message of plain numbers (sent with
    /// `send_slice`, or as a `Vec` or slice of numbers); `None` for a serde
    /// value.
    ///
    /// ```no_run
    /// # let world = spmd::init().unwrap();
    /// let status = world.probe(spmd::Match::any())?;
    /// if let Some(n) = status.count() {
    ///     let mut buf = vec![0.0f64; n as usize];
    ///     world.receive_into_matching(&mut buf, spmd::Match::source(status.source()))?;
    /// }
    /// # Ok::<(), spmd::Error>(())
    /// ```
    pub fn count(&self) -> Option<u64> {
        match crate::element::size_of_code(self.element)? {
            0 => Some(0),
            size => Some(self.len / size as u64),
        }
    }

    pub(crate) fn new(source: usize, tag: u32, len: u64, element: u16) -> Status {
        Status {
            source,
            tag,
            len,
            element,
        }
    }

    pub(crate) fn of(env: &Envelope) -> Status {
        Status::of_source(env, env.source)
    }

    /// The same status with `source` as the sender.
    pub(crate) fn with_source(self, source: usize) -> Status {
        Status { source, ..self }
    }

    /// The status of `env`, from `source` (the sender's rank in the
    /// communicator that received it).
    pub(crate) fn of_source(env: &Envelope, source: usize) -> Status {
        Status {
            source,
            tag: env.tag,
            len: env.len(),
            element: env.format.element(),
        }
    }
}

/// A [`Match`] within one context.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Selector {
    pub context: Context,
    pub pattern: Match,
}

impl Selector {
    pub fn new(context: Context, pattern: Match) -> Selector {
        Selector { context, pattern }
    }

    pub(crate) fn accepts(&self, env: &Envelope) -> bool {
        self.accepts_from(env.source, env.tag, env.context)
    }

    pub(crate) fn accepts_from(&self, source: usize, tag: u32, context: Context) -> bool {
        self.context == context
            && self.pattern.source.is_none_or(|s| s == source)
            && self.pattern.tag.is_none_or(|t| t == tag)
    }
}
