//! What a scope keeps of the operations started in it (its sends, its
//! receives and the slots their messages land in), and the spare set of
//! these lists each thread keeps for its next scope, so that a stream of
//! scopes (a window of sends or receives each) allocates nothing.

use std::cell::RefCell;

use crate::envelope::Envelope;
use crate::error::Result;
use crate::matching::{LandedSlot, ReceiveId};
use crate::progress::Sent;

/// A receive whose buffer is lent to the engine.
#[derive(Debug)]
pub(super) struct LentBuffer {
    pub id: ReceiveId,
    /// The receive on the MPI backend.
    #[cfg(feature = "mpi")]
    pub mpi: Option<crate::mpi_backend::MpiReceive>,
    pub ptr: *mut u8,
    pub len: usize,
    /// The element type of the buffer.
    pub element: u16,
    /// Copies a message that did not land into the buffer, checking it.
    pub finish: fn(&Envelope, *mut u8, usize) -> Result<()>,
    pub done: bool,
}

/// Landed slots are made this many at a time.
const SLOTS_PER_CHUNK: usize = 64;

/// The room a scope's lists of sends and receives start with, and the
/// room they take once that is full: a window of 64 requests is the
/// common stream, and lists that grew from nothing by doubling copied each
/// entry about twice; a scope of a few requests allocates little.
const FIRST_ROOM: usize = 8;
/// See [`FIRST_ROOM`].
const WINDOW_ROOM: usize = 64;

/// The most entries a spare list keeps room for, and the most slot chunks
/// it keeps: a scope of a million receives does not leave its thread
/// holding their bookkeeping.
const SPARE_ROOM: usize = 1024;
const SPARE_CHUNKS: usize = 4;

/// `list`, with room for one more entry, grown as `FIRST_ROOM` says.
pub(super) fn with_room<T>(list: &mut Vec<T>) -> &mut Vec<T> {
    match list.capacity() {
        0 => list.reserve_exact(FIRST_ROOM),
        c if c == list.len() && c < WINDOW_ROOM => list.reserve_exact(WINDOW_ROOM - c),
        _ => {}
    }
    list
}

/// The operations of one scope.
#[derive(Debug, Default)]
pub(super) struct Lent {
    /// (send, destination, waited for) of each send that was not written
    /// in full as it started (one that was borrows nothing: see
    /// [`super::LentSend`]).
    pub sends: Vec<(Sent, usize, bool)>,
    /// The sends on the MPI backend, at the same indices.
    #[cfg(feature = "mpi")]
    pub mpi_sends: Vec<Option<crate::mpi_backend::MpiSend>>,
    pub receives: Vec<LentBuffer>,
    /// Receive `i`'s landed slot is `slots[i / SLOTS_PER_CHUNK][i %
    /// SLOTS_PER_CHUNK]`. Boxed chunks: a slot never moves while the scope
    /// lives, so the engine may hold its address.
    #[expect(clippy::vec_box, reason = "a slot must not move when the vector grows")]
    slots: Vec<Box<[LandedSlot; SLOTS_PER_CHUNK]>>,
}

thread_local! {
    /// The lists of this thread's last scope, empty, for its next one (a
    /// scope inside a scope makes its own).
    static SPARE: RefCell<Option<Lent>> = const { RefCell::new(None) };
}

impl Lent {
    /// Empty lists for a new scope: the thread's spare ones if it has them
    /// (not while the thread ends, when its spare may be gone).
    pub fn spare() -> Lent {
        let spare = SPARE.try_with(|s| s.try_borrow_mut().ok().and_then(|mut s| s.take()));
        spare.ok().flatten().unwrap_or_default()
    }

    /// Keeps these lists, emptied, as the thread's spare ones. The caller
    /// makes sure nothing refers to a slot any more: every receive was
    /// waited for or withdrawn. (A slot is emptied when it is handed out
    /// again: receives on MPI have none.)
    pub fn recycle(mut self) {
        self.sends.clear();
        self.receives.clear();
        #[cfg(feature = "mpi")]
        self.mpi_sends.clear();
        self.slots.truncate(SPARE_CHUNKS);
        if self.sends.capacity() > SPARE_ROOM {
            self.sends = Vec::new();
        }
        if self.receives.capacity() > SPARE_ROOM {
            self.receives = Vec::new();
        }
        #[cfg(feature = "mpi")]
        if self.mpi_sends.capacity() > SPARE_ROOM {
            self.mpi_sends = Vec::new();
        }
        // A thread that is ending has no spare to keep.
        let _ = SPARE.try_with(|s| {
            if let Ok(mut spare) = s.try_borrow_mut() {
                *spare = Some(self);
            }
        });
    }

    /// The landed slot of the next receive (the one at index
    /// `receives.len()`), empty: made if it does not exist yet, emptied if
    /// an earlier scope of the thread used it.
    pub fn next_slot(&mut self) -> &LandedSlot {
        let index = self.receives.len();
        if index / SLOTS_PER_CHUNK == self.slots.len() {
            self.slots
                .push(Box::new(std::array::from_fn(|_| LandedSlot::default())));
        }
        let slot = self.slot(index);
        slot.clear();
        slot
    }

    /// Receive `index`'s landed slot.
    pub fn slot(&self, index: usize) -> &LandedSlot {
        &self.slots[index / SLOTS_PER_CHUNK][index % SLOTS_PER_CHUNK]
    }
}
