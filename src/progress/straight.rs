//! The straight path of a blocking receive from one rank on the node: when
//! nothing the matching engine holds can come first, the peer's next
//! message is taken out of its fastbox, or out of the ring in one copy,
//! into the receive's room, without posting the receive or going round
//! every peer (see `transport/shm/straight.rs`). Everything else takes the
//! general path.

use super::{Engine, EngineGuard};
use crate::envelope::{Envelope, Received, Room};
use crate::error::Result;
use crate::matching::{Arrived, Sink};
use crate::selector::Selector;
use crate::transport::{Boxed, Straight};

/// After this many messages taken the straight way since the last general
/// step, a receive goes the general way, which reads every peer and writes
/// to every one: a peer whose fastbox never runs dry does not keep the
/// others waiting.
const STRAIGHT_RUN: u32 = 64;

impl EngineGuard<'_> {
    /// Receives the next message `sel` accepts by the straight path, if it
    /// can; `None` leaves it to the general path: a receive from any rank,
    /// from this rank, or in a job that spans nodes; a message queued that
    /// `sel` accepts, a receive posted before that may take the peer's
    /// message, a peer this rank holds too much from already, an immediate
    /// collective or another thread in a wait; a next message that is
    /// neither in a fastbox nor a whole frame of at most 16 KiB in the
    /// ring, or not one `sel` accepts; every [`STRAIGHT_RUN`]th
    /// message. With `poll`, waits for the message as long as the wait
    /// mode polls; if it does not come, the general path sleeps at once.
    pub(super) fn receive_straight(
        &mut self,
        sel: Selector,
        room: Option<Room>,
        poll: bool,
    ) -> Result<Option<Received>> {
        let Some(source) = sel.pattern.source_rank() else {
            return Ok(None);
        };
        self.check_rank(source)?;
        if source == self.me
            || !self.schedules.is_empty()
            || self.sleepers > 0
            || !self.matcher.wants(source)
            || !self.matcher.nothing_before(sel, source)
        {
            return Ok(None);
        }
        if self.straight_run >= STRAIGHT_RUN {
            self.straight_run = 0;
            return Ok(None);
        }
        let accepts = |head: &Arrived| sel.accepts_from(head.source, head.tag, head.context);
        let mut boxed = Boxed::empty(source);
        for polled in [false, true] {
            let Some(mesh) = self.transport.shm_only() else {
                return Ok(None);
            };
            let watch = mesh.watch_straight(source);
            // What fit went out before the poll, and nothing was queued
            // since (the engine is held): the look after the poll, on the
            // path from the message's arrival to the caller, only takes.
            // What the poll freed room for goes out with the next step (as
            // if the message had come a moment sooner), or at once if the
            // look finds nothing and the general path takes over.
            let wrote = if polled { Ok(false) } else { mesh.peers.flush_all() };
            let found = wrote.and_then(|wrote| Ok((wrote, mesh.take_straight(source, &accepts, &mut boxed)?)));
            let (wrote, found) = found.map_err(|e| self.lost(e))?;
            if wrote {
                // A send another thread waits on may be done.
                self.note_moved();
            }
            match found {
                Straight::Taken => {
                    self.straight_run += 1;
                    let (head, payload) = (boxed.head, boxed.payload());
                    let got = straight_received(head, payload.len(), room, |into| {
                        // SAFETY: `into` has room for the payload's length.
                        unsafe { std::ptr::copy_nonoverlapping(payload.as_ptr(), into, payload.len()) };
                        true
                    })
                    // (It is taken: kept at any cost, as `drain` keeps it.)
                    .unwrap_or_else(|| Received::Held(Envelope::of_arrived(&head, payload.to_vec())));
                    return Ok(Some(self.took_straight(got)));
                }
                Straight::InRing { head, len } => {
                    // (The same mesh as above.) Memory ran out for it: the
                    // general path reads it and says so.
                    let taken = self.transport.shm_only().and_then(|mesh| {
                        // SAFETY: `into` has room for the payload's `len`.
                        straight_received(head, len, room, |into| unsafe { mesh.take_framed(source, into, len) })
                    });
                    let Some(got) = taken else {
                        return Ok(None);
                    };
                    self.straight_run += 1;
                    return Ok(Some(self.took_straight(got)));
                }
                Straight::Empty if poll && !polled => {}
                _ => return Ok(None),
            }
            // Until the peer's box fills or anything else is ready (then
            // the general path looks at it), or the time to poll is up.
            let Some(watch) = watch else { return Ok(None) };
            if !self.poll_for_work(&|| watch.ready()) {
                // The general path does not poll again before it sleeps.
                self.polled_out();
                return Ok(None);
            }
        }
        Ok(None)
    }
}

/// A message of `len` bytes taken the straight way (its arrival number
/// still to be given by [`Engine::took_straight`]), its payload written
/// by `fill` at the pointer it is given (room for `len` bytes, which may be
/// memory never written yet: `fill` writes through the pointer, never
/// through a slice over it): into `room` where it fits there (as the
/// general path lands it), else into a buffer of its own. `None`, with
/// nothing taken, if memory for that buffer ran out or `fill` found
/// nothing to take.
fn straight_received(
    head: Arrived,
    len: usize,
    room: Option<Room>,
    fill: impl FnOnce(*mut u8) -> bool,
) -> Option<Received> {
    if let Some((ptr, fresh)) = room.and_then(|r| r.landing(head.format, len as u64)) {
        // A room's landing has space for `len` bytes at `ptr`, and the
        // caller keeps the room valid until the receive returns.
        if !fill(ptr) {
            return None;
        }
        let len = len as u64;
        let Some(fresh) = fresh else {
            // (Its arrival number is `took_straight`'s to give.)
            return Some(Received::InBuffer { head, len, arrival: 0 });
        };
        let mut env = Envelope::of_landed(&head, len);
        env.fresh = Some(fresh);
        return Some(Received::Held(env));
    }
    let mut payload = crate::pool::take(len)?;
    fill(payload.as_mut_ptr()).then(|| Received::Held(Envelope::of_arrived(&head, payload)))
}

impl Engine {
    /// Counts a message taken the straight way as arrived and moved.
    fn took_straight(&mut self, mut got: Received) -> Received {
        let number = self.matcher.count_arrival();
        match &mut got {
            Received::InBuffer { arrival, .. } => *arrival = number,
            Received::Held(env) => env.arrival = number,
        }
        self.note_moved();
        self.settle();
        got
    }
}
