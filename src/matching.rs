//! Message matching, independent of any transport: which receive gets which
//! message, the queue of messages that arrived before their receive, and
//! the posted receives waiting for a message.
//!
//! Rules (MPI's): a message goes to the earliest posted receive that matches
//! it; a new receive takes the earliest arrived message that matches it.
//! Since a transport delivers the messages of one sender in the order they
//! were sent, messages from one source with one tag are received in order.

use std::collections::VecDeque;

use crate::wire::{Context, Kind};

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
}

/// A message that has arrived, with its envelope.
#[derive(Debug)]
pub(crate) struct Envelope {
    pub source: usize,
    pub tag: u32,
    pub context: Context,
    pub kind: Kind,
    pub payload: Vec<u8>,
    /// Set when the payload (of this many bytes) was written straight into
    /// the receiver's buffer; `payload` is then empty.
    pub landed: Option<u64>,
    /// The new buffer a landed payload was written into, for a receive
    /// that asked for one ([`Room::Fresh`]).
    pub fresh: Option<FreshBuffer>,
}

impl Envelope {
    /// A message whose payload is in `payload`.
    pub fn new(source: usize, tag: u32, context: Context, kind: Kind, payload: Vec<u8>) -> Envelope {
        Envelope {
            source,
            tag,
            context,
            kind,
            payload,
            landed: None,
            fresh: None,
        }
    }

    /// Makes a message that landed in `fresh` an ordinary one, with its
    /// bytes as the payload.
    pub fn unland(&mut self, fresh: FreshBuffer) {
        self.payload = crate::pool::copy_of(fresh.bytes());
        self.landed = None;
    }

    pub fn status(&self) -> Status {
        Status {
            source: self.source,
            tag: self.tag,
            len: self.landed.unwrap_or(self.payload.len() as u64),
        }
    }
}

impl Drop for Envelope {
    fn drop(&mut self) {
        crate::pool::give(std::mem::take(&mut self.payload));
    }
}

/// A caller's buffer that a message may be written into directly.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Buffer {
    pub ptr: *mut u8,
    pub len: usize,
}

// SAFETY: a buffer is only reachable while the receive that lent it waits,
// on the thread that owns the engine.
unsafe impl Send for Buffer {}

/// Where a posted receive lets its message land.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Room {
    /// In the caller's buffer.
    Given(Buffer),
    /// In a buffer allocated when the message's length is known, for
    /// elements of `size` bytes aligned to `align` (see [`FreshBuffer`]).
    Fresh { size: usize, align: usize },
}

/// A buffer allocated for one message's payload with the global allocator,
/// freed on drop unless its owner takes it (as a `Vec` of the elements it
/// was allocated for).
#[derive(Debug)]
pub(crate) struct FreshBuffer {
    ptr: std::ptr::NonNull<u8>,
    layout: std::alloc::Layout,
}

impl FreshBuffer {
    /// `len` bytes (more than 0) aligned to `align`; `None` if the layout
    /// is invalid or memory runs out.
    fn allocate(len: usize, align: usize) -> Option<FreshBuffer> {
        let layout = std::alloc::Layout::from_size_align(len, align).ok()?;
        if layout.size() == 0 {
            return None;
        }
        // SAFETY: the layout has a non-zero size.
        let ptr = std::ptr::NonNull::new(unsafe { std::alloc::alloc(layout) })?;
        Some(FreshBuffer { ptr, layout })
    }

    /// The bytes of the buffer (all written: it has landed).
    fn bytes(&self) -> &[u8] {
        // SAFETY: an allocation of `layout.size()` bytes, every one written
        // before the message was marked as landed.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.layout.size()) }
    }

    /// The buffer as a vector of `T`, if it was allocated for `T`s and
    /// holds a whole number of them (written in full: it has landed).
    pub fn into_vec<T: bytemuck::Pod>(self) -> Result<Vec<T>, FreshBuffer> {
        let size = std::mem::size_of::<T>();
        if size == 0 || self.layout.align() != std::mem::align_of::<T>() || self.layout.size() % size != 0 {
            return Err(self);
        }
        let count = self.layout.size() / size;
        let this = std::mem::ManuallyDrop::new(self);
        // SAFETY: allocated by the global allocator with exactly the layout
        // of `count` Ts; every byte was written (the message landed), and
        // any bytes are a valid T.
        Ok(unsafe { Vec::from_raw_parts(this.ptr.as_ptr().cast::<T>(), count, count) })
    }
}

impl Drop for FreshBuffer {
    fn drop(&mut self) {
        // SAFETY: allocated in `allocate` with this layout, freed once.
        unsafe { std::alloc::dealloc(self.ptr.as_ptr(), self.layout) }
    }
}

// SAFETY: the buffer is owned memory like a Vec's.
unsafe impl Send for FreshBuffer {}

/// Where a transport writes a claimed message's payload.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Landing {
    pub id: ReceiveId,
    pub ptr: *mut u8,
}

// SAFETY: as for `Buffer`.
unsafe impl Send for Landing {}

/// What a transport hands arrived messages to.
pub(crate) trait Sink {
    /// A whole message, to be matched.
    fn deliver(&mut self, env: Envelope);
    /// Asked when a message's header arrives: if the receive that will get
    /// it has a buffer of at least `len` bytes for raw numbers, claims that
    /// receive and returns where to write the payload.
    fn claim(&mut self, source: usize, tag: u32, context: Context, kind: Kind, len: u64) -> Option<Landing>;
    /// A claimed message is complete.
    fn landed(&mut self, id: ReceiveId, env: Envelope);
}

/// A [`Match`] within one context.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Selector {
    pub context: Context,
    pub pattern: Match,
}

impl Selector {
    pub fn user(pattern: Match) -> Selector {
        Selector {
            context: Context::User,
            pattern,
        }
    }

    pub fn collective(source: usize, tag: u32) -> Selector {
        Selector {
            context: Context::Collective,
            pattern: Match::source(source).with_tag(tag),
        }
    }

    fn accepts(&self, env: &Envelope) -> bool {
        self.accepts_from(env.source, env.tag, env.context)
    }

    fn accepts_from(&self, source: usize, tag: u32, context: Context) -> bool {
        self.context == context
            && self.pattern.source.is_none_or(|s| s == source)
            && self.pattern.tag.is_none_or(|t| t == tag)
    }
}

/// Identifies one posted receive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct ReceiveId(u64);

/// The matching engine of one rank.
#[derive(Debug, Default)]
pub(crate) struct Matcher {
    unexpected: VecDeque<Envelope>,
    posted: Vec<(ReceiveId, Selector, Option<Room>)>,
    /// Receives whose message is being written into their buffer (and the
    /// buffer, if it was allocated for the message).
    landing: Vec<(ReceiveId, Option<FreshBuffer>)>,
    /// Receives that have their message but were not taken yet (few).
    completed: Vec<(ReceiveId, Envelope)>,
    next_id: u64,
}

impl Matcher {
    /// Hands an arrived message to the earliest posted receive that matches,
    /// or queues it as unexpected.
    pub fn deliver(&mut self, env: Envelope) {
        if let Some(i) = self.posted.iter().position(|(_, sel, _)| sel.accepts(&env)) {
            let (id, _, _) = self.posted.remove(i);
            self.completed.push((id, env));
        } else {
            self.unexpected.push_back(env);
        }
    }

    /// Posts a receive that may take its message straight into `room`; it
    /// completes at once if a matching message is queued.
    pub fn post_into(&mut self, sel: Selector, room: Option<Room>) -> ReceiveId {
        let id = ReceiveId(self.next_id);
        self.next_id += 1;
        if let Some(i) = self.unexpected.iter().position(|env| sel.accepts(env)) {
            if let Some(env) = self.unexpected.remove(i) {
                self.completed.push((id, env));
            }
        } else {
            self.posted.push((id, sel, room));
        }
        id
    }

    /// The message of a completed receive, if it has completed.
    pub fn take(&mut self, id: ReceiveId) -> Option<Envelope> {
        let i = self.completed.iter().position(|(c, _)| *c == id)?;
        Some(self.completed.swap_remove(i).1)
    }

    /// True if the receive has completed.
    pub fn is_complete(&self, id: ReceiveId) -> bool {
        self.completed.iter().any(|(c, _)| *c == id)
    }

    /// The selector of a receive still waiting, if it is still waiting.
    pub fn pending(&self, id: ReceiveId) -> Option<Selector> {
        self.posted.iter().find(|(i, _, _)| *i == id).map(|(_, s, _)| *s)
    }

    /// Withdraws a receive whose request was dropped. A message it had
    /// already taken goes back to the front of the queue, so it is not lost.
    /// The transport must have stopped writing into its buffer first.
    pub fn cancel(&mut self, id: ReceiveId) {
        self.posted.retain(|(i, _, _)| *i != id);
        self.landing.retain(|(i, _)| *i != id);
        if let Some(mut env) = self.take(id) {
            // A message that landed in a buffer allocated for this receive
            // becomes an ordinary one again, for whichever receive takes
            // it next.
            if let Some(fresh) = env.fresh.take() {
                env.unland(fresh);
            }
            self.unexpected.push_front(env);
        }
    }

    /// The status of the earliest queued message that `sel` accepts.
    pub fn probe(&self, sel: Selector) -> Option<Status> {
        self.unexpected
            .iter()
            .find(|env| sel.accepts(env))
            .map(Envelope::status)
    }
}

impl Sink for Matcher {
    fn deliver(&mut self, env: Envelope) {
        Matcher::deliver(self, env);
    }

    fn claim(&mut self, source: usize, tag: u32, context: Context, kind: Kind, len: u64) -> Option<Landing> {
        if kind != Kind::Raw {
            return None;
        }
        // The receive that would get this message is the earliest posted one
        // that accepts it; only that one may take it.
        let i = self
            .posted
            .iter()
            .position(|(_, sel, _)| sel.accepts_from(source, tag, context))?;
        let (ptr, fresh) = match self.posted[i].2? {
            Room::Given(b) if b.len as u64 >= len => (b.ptr, None),
            Room::Given(_) => return None,
            Room::Fresh { size, align } => {
                let len = usize::try_from(len).ok()?;
                if size == 0 || len % size != 0 {
                    return None;
                }
                let fresh = FreshBuffer::allocate(len, align)?;
                (fresh.ptr.as_ptr(), Some(fresh))
            }
        };
        let (id, _, _) = self.posted.remove(i);
        self.landing.push((id, fresh));
        Some(Landing { id, ptr })
    }

    fn landed(&mut self, id: ReceiveId, mut env: Envelope) {
        if let Some(i) = self.landing.iter().position(|(l, _)| *l == id) {
            env.fresh = self.landing.swap_remove(i).1;
            self.completed.push((id, env));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(source: usize, tag: u32, byte: u8) -> Envelope {
        Envelope::new(source, tag, Context::User, Kind::Raw, vec![byte])
    }

    #[test]
    fn posted_before_and_after_arrival_behave_the_same() {
        let mut m = Matcher::default();
        let early = m.post_into(Selector::user(Match::source(1)), None);
        m.deliver(env(1, 0, 10));
        m.deliver(env(1, 0, 11));
        let late = m.post_into(Selector::user(Match::source(1)), None);
        assert_eq!(m.take(early).unwrap().payload, vec![10]);
        assert_eq!(m.take(late).unwrap().payload, vec![11]);
    }

    #[test]
    fn tags_and_contexts_separate_messages() {
        let mut m = Matcher::default();
        m.deliver(env(2, 5, 1));
        m.deliver(Envelope::new(2, 6, Context::Collective, Kind::Raw, vec![2]));
        let coll = m.post_into(Selector::user(Match::tag(6)), None);
        assert!(!m.is_complete(coll));
        let five = m.post_into(Selector::user(Match::any()), None);
        assert_eq!(m.take(five).unwrap().payload, vec![1]);
        let c = m.post_into(Selector::collective(2, 6), None);
        assert_eq!(m.take(c).unwrap().payload, vec![2]);
    }

    #[test]
    fn a_message_landed_in_a_fresh_buffer_survives_its_receive_being_dropped() {
        let mut m = Matcher::default();
        let id = m.post_into(Selector::user(Match::any()), Some(Room::Fresh { size: 8, align: 8 }));
        let landing = m.claim(2, 9, Context::User, Kind::Raw, 16).expect("claimed");
        // SAFETY: the landing has room for the 16 bytes claimed.
        unsafe { std::ptr::copy_nonoverlapping([7u8; 16].as_ptr(), landing.ptr, 16) };
        let mut env = Envelope::new(2, 9, Context::User, Kind::Raw, Vec::new());
        env.landed = Some(16);
        m.landed(landing.id, env);
        assert!(m.is_complete(id));
        m.cancel(id);
        let next = m.post_into(Selector::user(Match::source(2)), None);
        let env = m.take(next).expect("the message is queued again");
        assert_eq!((env.landed, env.payload.as_slice()), (None, &[7u8; 16][..]));
        assert!(env.fresh.is_none());
    }

    #[test]
    fn cancelled_receive_returns_its_message() {
        let mut m = Matcher::default();
        let a = m.post_into(Selector::user(Match::any()), None);
        m.deliver(env(0, 0, 7));
        m.cancel(a);
        assert_eq!(m.probe(Selector::user(Match::any())).unwrap().source(), 0);
    }
}
