//! A message as the matching engine holds it (and as a receive into a
//! buffer gets it), and the buffers a message's payload can land in
//! straight from a transport.

use crate::matching::Arrived;
use crate::wire::{Context, Kind};

/// How a message's payload is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Format {
    /// A bincode-encoded serde value.
    Serde,
    /// Raw plain numbers of the element type with this code (see
    /// [`crate::element`]).
    Raw(u16),
}

impl Format {
    /// The format a frame's kind and element field describe (an offer
    /// carries its message's element field: 0 for a serde value).
    pub fn of(kind: Kind, element: u16) -> Format {
        match (kind, element) {
            (Kind::Raw, _) => Format::Raw(element),
            (Kind::Offer, 0) => Format::Serde,
            (Kind::Offer, _) => Format::Raw(element),
            _ => Format::Serde,
        }
    }

    /// The frame kind that carries this format.
    pub fn kind(self) -> Kind {
        match self {
            Format::Serde => Kind::Serde,
            Format::Raw(_) => Kind::Raw,
        }
    }

    /// The frame's element field for this format.
    pub fn element(self) -> u16 {
        match self {
            Format::Serde => 0,
            Format::Raw(e) => e,
        }
    }
}

/// A message that has arrived, with its envelope.
#[derive(Debug)]
pub(crate) struct Envelope {
    pub source: usize,
    pub tag: u32,
    pub context: Context,
    pub format: Format,
    /// Which collective call of its communicator it belongs to (0 for
    /// point-to-point messages).
    pub call: u32,
    pub payload: Vec<u8>,
    /// Set when the payload (of this many bytes) was written straight into
    /// the receiver's buffer; `payload` is then empty.
    pub landed: Option<u64>,
    /// The new buffer a landed payload was written into, for a receive
    /// that asked for one ([`Room::Fresh`]).
    pub fresh: Option<FreshBuffer>,
    /// The order in which the matching engine saw messages arrive, so that
    /// one put back in the queue takes its old place.
    pub arrival: u64,
}

impl Envelope {
    /// A message whose payload is in `payload`.
    pub fn new(source: usize, tag: u32, context: Context, format: Format, payload: Vec<u8>) -> Envelope {
        Envelope {
            source,
            tag,
            context,
            format,
            call: 0,
            payload,
            landed: None,
            fresh: None,
            arrival: 0,
        }
    }

    /// A message whose header said `head`, its payload in `payload`.
    pub fn of_arrived(head: &Arrived, payload: Vec<u8>) -> Envelope {
        let mut env = Envelope::new(head.source, head.tag, head.context, head.format, payload);
        env.call = head.call;
        env
    }

    /// A message of `len` bytes whose header said `head`, which landed in
    /// a receive's buffer.
    pub fn of_landed(head: &Arrived, len: u64) -> Envelope {
        let mut env = Envelope::of_arrived(head, Vec::new());
        env.landed = Some(len);
        env
    }

    /// Makes a message that landed in `fresh` an ordinary one, with its
    /// bytes as the payload.
    pub fn unland(&mut self, fresh: FreshBuffer) {
        self.payload = crate::pool::copy_of(fresh.bytes());
        self.landed = None;
    }

    /// The length of the message in bytes.
    pub fn len(&self) -> u64 {
        self.landed.unwrap_or(self.payload.len() as u64)
    }
}

/// What a receive into a caller's buffer got: a message the straight
/// path landed there, said in a few words (no envelope to build, move and
/// drop on a receive's fastest path), or a message in its envelope (which
/// may say it landed too).
#[derive(Debug)]
pub(crate) enum Received {
    /// The message, of `len` bytes, landed in the receive's buffer (one
    /// the caller gave: never a buffer allocated for it). (The matching
    /// engine's `Landed` is the same news for a scope's slot.)
    InBuffer {
        /// What its header said.
        head: Arrived,
        /// Its length in bytes.
        len: u64,
        /// Its arrival number (see [`Envelope::arrival`]).
        arrival: u64,
    },
    /// The message in its envelope.
    Held(Envelope),
}

impl Received {
    /// The message as an envelope, for a caller that wants one.
    pub fn into_envelope(self) -> Envelope {
        match self {
            Received::InBuffer { head, len, arrival } => {
                let mut env = Envelope::of_landed(&head, len);
                env.arrival = arrival;
                env
            }
            Received::Held(env) => env,
        }
    }
}

impl Drop for Envelope {
    #[inline]
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

/// Where a posted receive lets its message land: only a raw message of the
/// receive's element type does.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Room {
    /// In the caller's buffer.
    Given { buffer: Buffer, element: u16 },
    /// In a buffer a scope lent, which learns of the landing from `slot`
    /// instead of from the engine's list of completed receives.
    Lent {
        buffer: Buffer,
        element: u16,
        slot: crate::matching::SlotRef,
    },
    /// In a buffer allocated when the message's length is known, for
    /// elements of `size` bytes aligned to `align` (see [`FreshBuffer`]).
    Fresh { size: usize, align: usize, element: u16 },
}

impl Room {
    /// The room of a receive into the caller's `buf`, for raw numbers of
    /// type `element`.
    pub fn given(buf: &mut [u8], element: u16) -> Room {
        let buffer = Buffer {
            ptr: buf.as_mut_ptr(),
            len: buf.len(),
        };
        Room::Given { buffer, element }
    }

    /// Where a raw message of `len` bytes in `format` may land, if it may
    /// (in line for a buffer given or lent: on every message a stream of
    /// receives lands).
    #[inline(always)]
    pub fn landing(&self, format: Format, len: u64) -> Option<(*mut u8, Option<FreshBuffer>)> {
        match *self {
            Room::Given { buffer, element } | Room::Lent { buffer, element, .. }
                if format == Format::Raw(element) && buffer.len as u64 >= len =>
            {
                // Only whole elements land: anything else is an error the
                // receive reports with the message still queued.
                let size = crate::element::size_of_code(element)? as u64;
                if !crate::element::whole_elements(len, size) {
                    return None;
                }
                Some((buffer.ptr, None))
            }
            Room::Fresh { size, align, element } if format == Format::Raw(element) => {
                fresh_buffer_for(size, align, len).map(|fresh| (fresh.ptr.as_ptr(), Some(fresh)))
            }
            _ => None,
        }
    }
}

/// A buffer for a message of `len` bytes of elements of `size` bytes
/// aligned to `align`, if it is whole elements and memory is there (out
/// of line: [`Room::landing`] is in line for the other rooms).
#[inline(never)]
fn fresh_buffer_for(size: usize, align: usize, len: u64) -> Option<FreshBuffer> {
    let len = usize::try_from(len).ok()?;
    if size == 0 || len % size != 0 {
        return None;
    }
    FreshBuffer::allocate(len, align)
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
    pub id: crate::matching::ReceiveId,
    pub ptr: *mut u8,
}

// SAFETY: as for `Buffer`.
unsafe impl Send for Landing {}
