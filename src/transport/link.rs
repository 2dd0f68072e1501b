//! What each transport brings to the framed streams of [`super::stream`]:
//! its [`Link`], one byte stream to one peer, with the optional paths
//! beside the stream (fastboxes, offers) that shared memory has.

use std::io::IoSlice;
use std::mem::MaybeUninit;

use crate::error::{Error, Result};
use crate::wire::{Header, Offer};

/// What one read or write on a link did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Io {
    /// Moved this many bytes (more than zero).
    Done(usize),
    /// Nothing can move now.
    WouldBlock,
    /// The other end has gone.
    Closed,
}

/// One direction-agnostic byte stream to a peer.
///
/// # Safety
/// The buffers given to [`Link::read`] and [`Link::pull`] may be memory
/// never written, and their callers go on to read what the link says it
/// wrote as bytes. An implementation writes only initialized bytes into
/// them, never an uninitialized value; a read that returns `Done(n)` has
/// written exactly `buf[..n]`, with `n <= buf.len()`; a pull that returns
/// `Ok` has written all of `into`.
pub(crate) unsafe trait Link {
    /// Writes a prefix of the concatenated slices.
    fn write(&mut self, iov: &[IoSlice<'_>]) -> Result<Io>;
    /// Reads into a prefix of `buf`, which may be memory never written
    /// (a receive's fresh buffer; see the trait's safety contract).
    fn read(&mut self, buf: &mut [MaybeUninit<u8>]) -> Result<Io>;
    /// Sends a whole small message beside the stream, if the link has such
    /// a path and the message may take it now; false if it must be framed.
    /// Only called when nothing is queued for the stream.
    fn try_send_beside(&mut self, _header: &Header, _payload: &[u8]) -> Result<bool> {
        Ok(false)
    }
    /// True if a write of `wanted` bytes would go whole now: the link can
    /// tell, and has the room (a ring). A link that cannot tell (a socket)
    /// says false, and its frames go through the queue.
    fn has_room_for(&mut self, _wanted: usize) -> Result<bool> {
        Ok(false)
    }
    /// True if a message of `len` bytes goes as an [`crate::wire::Kind::Offer`], for
    /// the peer to copy straight from this process's memory (it said it
    /// can). `queued` says that frames wait to be written before it.
    fn offers(&self, _len: usize, _queued: bool) -> bool {
        false
    }
    /// Copies an offered payload from the peer's memory into `into` (which
    /// may be memory never written, as for [`Link::read`]); `peer` names
    /// the peer in errors.
    fn pull(&mut self, _offer: &Offer, _into: &mut [MaybeUninit<u8>], peer: &str) -> Result<()> {
        Err(Error::protocol(
            peer,
            "kind",
            "an offer arrived on a link that carries none (offers travel only over shared memory, \
             to a rank that said it can copy from the sender)",
        ))
    }
    /// True if the peer has finalized, seen beside the stream (shared
    /// memory): it copies nothing more from this rank.
    fn peer_finalized(&self) -> bool {
        false
    }
    /// True if the peer has shut its side of the link down, seen beside
    /// the stream without reading it (TCP): it is finalizing, or gone, and
    /// will not read what is sent from now on. Once true, the sender sends
    /// nothing more.
    fn peer_hung_up(&mut self) -> bool {
        false
    }
    /// True if a read that returns less than it asked for leaves nothing
    /// to read (a socket): the reader need not ask again at once.
    fn short_read_drains(&self) -> bool {
        false
    }
}

/// `bytes` as memory for a [`Link`] to write into.
///
/// # Safety
/// Nothing may write an uninitialized value through the returned slice
/// while it is borrowed (a link writes only bytes: see [`Link`]), since
/// the caller goes on reading `bytes` as bytes.
pub(crate) unsafe fn as_uninit(bytes: &mut [u8]) -> &mut [MaybeUninit<u8>] {
    // SAFETY: `MaybeUninit<u8>` has the layout of `u8`; the caller's
    // promise keeps every byte initialized.
    unsafe { &mut *(std::ptr::from_mut(bytes) as *mut [MaybeUninit<u8>]) }
}

/// Copies `from` into the start of `into` (which must be at least as
/// long), writing only initialized bytes.
pub(crate) fn copy_bytes(into: &mut [MaybeUninit<u8>], from: &[u8]) {
    assert!(from.len() <= into.len(), "a copy longer than its room");
    // SAFETY: `into` has room for `from.len()` bytes, and the two are
    // distinct borrows, so they do not overlap.
    unsafe { std::ptr::copy_nonoverlapping(from.as_ptr(), into.as_mut_ptr().cast::<u8>(), from.len()) };
}
