//! The progress engine of one rank: the single path through which sends go
//! out, messages come in and waits complete. It joins the matching engine
//! to the transport, and knows when a wait can never end.

use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::matching::{Buffer, Envelope, Matcher, ReceiveId, Room, Selector, Status};
use crate::transport::{Fold, NodeCall, SendTicket, Transport, Wait, WindowJob};
use crate::wire::{Context, Header, Kind};

/// A queued send: `None` when it went to this rank itself and is done.
pub(crate) type Sent = Option<SendTicket>;

/// How long a rank that lost a peer to a crash waits for the launcher to end
/// the job before it reports the loss itself. Without the wait, the rank's
/// own error exit could race the crashed rank's and be blamed for it.
const LAUNCHER_REACTION: Duration = Duration::from_secs(2);

#[derive(Debug)]
pub(crate) struct Engine {
    pub me: usize,
    pub size: usize,
    matcher: Matcher,
    transport: Transport,
    /// Started by a launcher that ends the job when a rank dies.
    managed: bool,
}

impl Engine {
    pub fn new(me: usize, size: usize, transport: Transport, managed: bool) -> Engine {
        Engine {
            me,
            size,
            matcher: Matcher::default(),
            transport,
            managed,
        }
    }

    /// The error for a peer that has gone. If it died and a launcher is
    /// watching, the launcher is about to end this rank: give it the time.
    fn gone(&self, rank: usize) -> Error {
        if self.managed && self.transport.died(rank) {
            std::thread::sleep(LAUNCHER_REACTION);
        }
        Error::PeerGone { rank }
    }

    /// The header of a message from this rank.
    fn header(&self, kind: Kind, tag: u32, context: Context, len: usize) -> Header {
        Header {
            kind,
            source: self.me as u32,
            tag,
            context,
            len: len as u64,
        }
    }

    pub fn check_rank(&self, rank: usize) -> Result<()> {
        if rank < self.size {
            Ok(())
        } else {
            Err(Error::InvalidRank { rank, size: self.size })
        }
    }

    /// Queues a message. A message to this rank is delivered at once.
    pub fn send(&mut self, dest: usize, context: Context, tag: u32, kind: Kind, payload: Vec<u8>) -> Result<Sent> {
        self.check_rank(dest)?;
        if dest == self.me {
            self.matcher.deliver(Envelope::new(dest, tag, context, kind, payload));
            return Ok(None);
        }
        let header = self.header(kind, tag, context, payload.len());
        let queued = self.transport.queue(dest, header, payload);
        queued.map(Some).map_err(|e| self.lost(e))
    }

    /// Sends `payload` straight from the caller's memory and waits until it
    /// has left this process: no copy for a large message.
    pub fn send_now(&mut self, dest: usize, context: Context, tag: u32, kind: Kind, payload: &[u8]) -> Result<()> {
        let Some(ticket) = self.send_borrowed(dest, context, tag, kind, payload)? else {
            return Ok(());
        };
        // Whatever happens, even a panic, the queue must not keep pointing
        // into `payload` once this call ends.
        let result = catch_unwind(AssertUnwindSafe(|| self.wait_sent(Some(ticket), dest)));
        self.transport.own(ticket);
        result.unwrap_or_else(|panic| resume_unwind(panic))
    }

    /// Starts a send without waiting: writes what fits now straight from
    /// `payload`, and copies only the rest to be written later.
    pub fn send_eager(&mut self, dest: usize, context: Context, tag: u32, kind: Kind, payload: &[u8]) -> Result<Sent> {
        let sent = self.send_borrowed(dest, context, tag, kind, payload)?;
        if let Some(ticket) = sent {
            self.transport.own(ticket);
        }
        Ok(sent)
    }

    /// Starts a send that keeps borrowing `payload` until it is written (for
    /// scoped requests).
    ///
    /// # Safety
    ///
    /// `payload` must stay valid until the send is complete
    /// ([`Engine::is_sent`]) or [`Engine::own_sent`] was called for it.
    pub unsafe fn send_lent(
        &mut self,
        dest: usize,
        context: Context,
        tag: u32,
        kind: Kind,
        payload: &[u8],
    ) -> Result<Sent> {
        self.send_borrowed(dest, context, tag, kind, payload)
    }

    /// Copies what a lent send has not written yet, ending its borrow.
    pub fn own_sent(&mut self, sent: Sent) {
        if let Some(ticket) = sent {
            self.transport.own(ticket);
        }
    }

    /// Posts a receive that may land straight in `len` bytes at `buf` (for
    /// scoped requests).
    ///
    /// # Safety
    ///
    /// The buffer must stay valid until the receive completes or
    /// [`Engine::abandon_receive`] was called for it.
    pub unsafe fn post_lent(&mut self, sel: Selector, buf: *mut u8, len: usize) -> Result<ReceiveId> {
        self.post_room(sel, Some(Room::Given(Buffer { ptr: buf, len })))
    }

    /// Withdraws a receive and stops anything from landing in its buffer.
    pub fn abandon_receive(&mut self, id: ReceiveId) {
        self.transport.detach(id);
        self.matcher.cancel(id);
    }

    /// Queues a frame that borrows `payload` (a send to this rank copies it
    /// and is done: `None`). The caller must make the frame owned, or see it
    /// sent, before `payload`'s borrow ends.
    fn send_borrowed(&mut self, dest: usize, context: Context, tag: u32, kind: Kind, payload: &[u8]) -> Result<Sent> {
        self.check_rank(dest)?;
        if dest == self.me {
            return self.send(dest, context, tag, kind, payload.to_vec());
        }
        let header = self.header(kind, tag, context, payload.len());
        // SAFETY: both callers make the frame owned, or wait until it is
        // sent, before they return.
        let ticket = unsafe { self.transport.queue_borrowed(dest, header, payload) }.map_err(|e| self.lost(e))?;
        Ok(Some(ticket))
    }

    pub fn is_sent(&mut self, sent: Sent) -> Result<bool> {
        match sent {
            None => Ok(true),
            Some(t) if self.transport.is_sent(t) => Ok(true),
            Some(_) => {
                self.step(Wait::No)?;
                Ok(sent.is_none_or(|t| self.transport.is_sent(t)))
            }
        }
    }

    /// Waits until a send has left this process.
    pub fn wait_sent(&mut self, sent: Sent, dest: usize) -> Result<()> {
        let Some(ticket) = sent else { return Ok(()) };
        while !self.transport.is_sent(ticket) {
            if self.transport.is_closed(dest) {
                return Err(self.gone(dest));
            }
            self.step(Wait::Until(None))?;
        }
        Ok(())
    }

    fn step(&mut self, wait: Wait) -> Result<()> {
        let result = self.transport.progress(&mut self.matcher, wait);
        result.map_err(|e| self.lost(e))
    }

    /// Passes on a transport error, first giving the launcher time to end
    /// the job if the error means a peer died (see [`LAUNCHER_REACTION`]).
    fn lost(&self, e: Error) -> Error {
        match e {
            Error::PeerGone { rank } => self.gone(rank),
            e @ Error::Protocol { field: "stream", .. } => {
                if self.managed {
                    std::thread::sleep(LAUNCHER_REACTION);
                }
                e
            }
            e => e,
        }
    }

    /// Posts a receive. With `fresh` = (element size, alignment), a message
    /// of raw numbers of that size lands in a buffer allocated for it when
    /// its length is known (taken with [`crate::message::into_vec`]): one
    /// copy, like a receive into a buffer the caller gives.
    pub fn post(&mut self, sel: Selector, fresh: Option<(usize, usize)>) -> Result<ReceiveId> {
        self.post_room(sel, fresh.map(|(size, align)| Room::Fresh { size, align }))
    }

    /// Posts a receive whose message may land in `room`, once its source is
    /// known to be a rank of the job.
    fn post_room(&mut self, sel: Selector, room: Option<Room>) -> Result<ReceiveId> {
        if let Some(source) = sel.pattern.source_rank() {
            self.check_rank(source)?;
        }
        Ok(self.matcher.post_into(sel, room))
    }

    /// Receives the next message `sel` accepts, letting a message of raw
    /// numbers that arrives after the receive is posted land straight in
    /// `buf`. The envelope says whether it landed (`landed`) or carries its
    /// payload.
    pub fn receive_landing(&mut self, sel: Selector, buf: &mut [u8]) -> Result<Envelope> {
        let buffer = Buffer {
            ptr: buf.as_mut_ptr(),
            len: buf.len(),
        };
        let id = self.post_room(sel, Some(Room::Given(buffer)))?;
        let result = catch_unwind(AssertUnwindSafe(|| self.wait_receive(id, None)));
        if !matches!(result, Ok(Ok(_))) {
            // `buf` is about to be released: nothing may write into it.
            self.abandon_receive(id);
        }
        result.unwrap_or_else(|panic| resume_unwind(panic))
    }

    /// Waits for a posted receive; `None` waits for ever.
    pub fn wait_receive(&mut self, id: ReceiveId, timeout: Option<Duration>) -> Result<Envelope> {
        let deadline = timeout.map(|t| Instant::now() + t);
        loop {
            if let Some(env) = self.matcher.take(id) {
                return Ok(env);
            }
            self.step(Wait::No)?;
            if let Some(env) = self.matcher.take(id) {
                return Ok(env);
            }
            if let Some(sel) = self.matcher.pending(id) {
                if let Err(e) = self.check_can_arrive(sel) {
                    self.abandon_receive(id);
                    return Err(e);
                }
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                let what = sel_text(self.matcher.pending(id));
                self.abandon_receive(id);
                return Err(timed_out(what, timeout));
            }
            self.step(Wait::Until(deadline))?;
        }
    }

    /// Completes a receive if its message is here, without waiting.
    pub fn test_receive(&mut self, id: ReceiveId) -> Result<bool> {
        if !self.matcher.is_complete(id) {
            self.step(Wait::No)?;
        }
        if let Some(sel) = self.matcher.pending(id) {
            self.check_can_arrive(sel)?;
        }
        Ok(self.matcher.is_complete(id))
    }

    /// Looks for a queued message; waits per `wait` if there is none.
    pub fn probe(&mut self, sel: Selector, wait: Option<Option<Duration>>) -> Result<Option<Status>> {
        if let Some(source) = sel.pattern.source_rank() {
            self.check_rank(source)?;
        }
        self.step(Wait::No)?;
        let Some(timeout) = wait else {
            return Ok(self.matcher.probe(sel));
        };
        let deadline = timeout.map(|t| Instant::now() + t);
        loop {
            if let Some(status) = self.matcher.probe(sel) {
                return Ok(Some(status));
            }
            self.check_can_arrive(sel)?;
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Err(timed_out(sel_text(Some(sel)), timeout));
            }
            self.step(Wait::Until(deadline))?;
        }
    }

    /// Fails a wait that can never end: its only possible senders are gone,
    /// or it waits for a message this rank would have to send itself.
    fn check_can_arrive(&self, sel: Selector) -> Result<()> {
        match sel.pattern.source_rank() {
            Some(s) if s == self.me => Err(Error::InvalidArgument(format!(
                "rank {} waits for a message from itself that was never sent; this would wait for ever",
                self.me
            ))),
            Some(s) if self.transport.is_gone(s) => Err(self.gone(s)),
            Some(_) => Ok(()),
            None => {
                let mut others = (0..self.size).filter(|r| *r != self.me);
                let Some(first) = others.clone().next() else {
                    return Err(Error::InvalidArgument(format!(
                        "rank {} is alone in this job and waits for a message nobody sent; this would wait for ever",
                        self.me
                    )));
                };
                if others.any(|r| !self.transport.is_gone(r)) {
                    Ok(())
                } else {
                    Err(self.gone(first))
                }
            }
        }
    }

    /// Runs a node-wide collective in shared memory, if the transport can.
    pub fn node_collective(&mut self, call: NodeCall, mine: &[u8], fold: &mut Fold<'_>) -> Option<Result<Vec<u8>>> {
        if self.size < 2 {
            return None;
        }
        self.transport.node_collective(&mut self.matcher, call, mine, fold)
    }

    /// Runs a collective of large vectors through shared windows, if the
    /// transport can.
    pub fn window_collective(&mut self, claim: u64, job: WindowJob<'_>) -> Option<Result<()>> {
        if self.size < 2 {
            return None;
        }
        self.transport.window_collective(&mut self.matcher, claim, job)
    }

    /// Flushes every send and tells the peers this rank is done.
    pub fn finish(&mut self) -> Result<()> {
        self.transport.finish(&mut self.matcher)
    }
}

fn sel_text(sel: Option<Selector>) -> String {
    match sel {
        None => "a message".to_string(),
        Some(s) => {
            let from = s
                .pattern
                .source_rank()
                .map_or("any rank".to_string(), |r| format!("rank {r}"));
            let tag = s
                .pattern
                .tag_value()
                .map_or("any tag".to_string(), |t| format!("tag {t}"));
            format!("a message from {from} with {tag}")
        }
    }
}

fn timed_out(what: String, timeout: Option<Duration>) -> Error {
    Error::Timeout {
        what,
        seconds: timeout.map_or(0.0, |t| t.as_secs_f64()),
    }
}
