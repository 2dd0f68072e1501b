//! Blocking point-to-point communication: send, receive, probe, sendrecv,
//! for serde values and for slices of plain numbers.

use std::time::Duration;

use bytemuck::Pod;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::communicator::{Communicator, on_mpi};
use crate::envelope::{Envelope, Received, Room};
use crate::error::Result;
use crate::message::{self, Taken};
use crate::progress::{Head, Sent};
#[cfg(feature = "mpi")]
use crate::progress::{pattern_text, timed_out};
use crate::selector::{Match, Selector, Status};

impl Communicator {
    /// Queues a message to job rank `dest`; the caller decides when to wait
    /// for it.
    pub(crate) fn post_send(&self, dest: usize, head: Head, payload: Vec<u8>) -> Result<Sent> {
        self.ranked(self.engine()?.send(dest, head, payload))
    }

    /// Sends to job rank `dest` and waits until the message has left this
    /// process.
    pub(crate) fn send_bytes(&self, dest: usize, head: Head, payload: Vec<u8>) -> Result<()> {
        let mut engine = self.engine()?;
        let sent = engine.send(dest, head, payload);
        self.ranked(sent.and_then(|sent| engine.wait_sent(sent, dest)))
    }

    /// Receives the next message `sel` accepts; a raw message of the room's
    /// type lands in it.
    pub(crate) fn receive_envelope(
        &self,
        sel: Selector,
        room: Option<Room>,
        timeout: Option<Duration>,
    ) -> Result<Envelope> {
        on_mpi!(self, |m| {
            let wait = crate::mpi_backend::Wait::after(timeout);
            m.receive(sel.pattern, room, wait)?
                .ok_or_else(|| timed_out(pattern_text(&sel.pattern), timeout))
        });
        self.ranked(self.engine()?.receive(sel, room, timeout))
    }

    /// Takes a received message as a value; if the receive cannot take it
    /// as the type it asked for, the message goes back to the queue.
    pub(crate) fn take<T>(&self, env: Envelope, taking: impl FnOnce(Envelope) -> Taken<T>) -> Result<T> {
        taking(env).map_err(|rejected| {
            self.put_back(rejected.env);
            self.in_ranks(rejected.error)
        })
    }

    /// Puts a received message back, first in line for the next receive
    /// (or, natively, for the earliest one already posted that accepts it).
    fn put_back(&self, env: Envelope) {
        #[cfg(feature = "mpi")]
        if let Some(m) = self.mpi_side() {
            return m.requeue(env);
        }
        if let Some(mut engine) = self.engine_for_cleanup() {
            engine.requeue(env);
        }
    }

    /// Sends `value` to rank `dest` with tag 0. Returns once the message has
    /// left this process (the receiver may not have it yet).
    ///
    /// A `Vec` or slice of plain numbers (integers of 8 to 64 bits, `f32`,
    /// `f64`) travels as its raw bytes, as with [`Communicator::send_slice`], not
    /// element by element: receive it as the same `Vec` type (it lands in a
    /// vector allocated for it), or with `receive_into` or `receive_vec`.
    ///
    /// ```no_run
    /// # let world = spmd::init().unwrap();
    /// if world.rank() == 0 {
    ///     world.send(&vec![1.0, 2.0], 1)?;
    /// } else if world.rank() == 1 {
    ///     let v: Vec<f64> = world.receive(0)?;
    /// }
    /// # Ok::<(), spmd::Error>(())
    /// ```
    pub fn send<T: Serialize + ?Sized>(&self, value: &T, dest: usize) -> Result<()> {
        self.send_with_tag(value, dest, 0)
    }

    /// Sends `value` to rank `dest` with tag `tag`.
    pub fn send_with_tag<T: Serialize + ?Sized>(&self, value: &T, dest: usize, tag: u32) -> Result<()> {
        let dest = self.peer(dest)?;
        if let Some((format, bytes)) = message::as_raw(value) {
            // Numbers go out straight from the caller's memory.
            let head = self.user_head(tag, format)?;
            on_mpi!(self, |m| m.send(dest, tag, format, bytes));
            return self.ranked(self.engine()?.send_now(dest, head, bytes));
        }
        let (format, payload) = message::encode(value)?;
        let head = self.user_head(tag, format)?;
        on_mpi!(self, |m| m.send_owned(dest, tag, format, payload));
        self.send_bytes(dest, head, payload)
    }

    /// Receives a `T` from rank `source` with tag 0.
    pub fn receive<T: DeserializeOwned>(&self, source: usize) -> Result<T> {
        self.receive_with_tag(source, 0)
    }

    /// Receives a `T` from rank `source` with tag `tag`.
    pub fn receive_with_tag<T: DeserializeOwned>(&self, source: usize, tag: u32) -> Result<T> {
        self.receive_matching(Match::source(source).with_tag(tag))
            .map(|(v, _)| v)
    }

    /// Receives a `T` from whichever rank and tag `pattern` accepts, with the
    /// message's [`Status`] (who sent it, with which tag, how long).
    ///
    /// ```no_run
    /// use spmd::Match;
    /// # let world = spmd::init().unwrap();
    /// let (result, status): (u64, _) = world.receive_matching(Match::any())?;
    /// println!("rank {} answered {result}", status.source());
    /// # Ok::<(), spmd::Error>(())
    /// ```
    pub fn receive_matching<T: DeserializeOwned>(&self, pattern: Match) -> Result<(T, Status)> {
        self.receive_value(pattern, None)
    }

    fn receive_value<T: DeserializeOwned>(&self, pattern: Match, timeout: Option<Duration>) -> Result<(T, Status)> {
        let env = self.receive_envelope(self.user(pattern)?, message::room_for::<T>(), timeout)?;
        let status = self.status_of(&env);
        Ok((self.take(env, message::decode_owned)?, status))
    }

    /// Like [`Communicator::receive_matching`], but gives up with
    /// [`Error::Timeout`](crate::Error::Timeout) after `timeout`.
    pub fn receive_matching_timeout<T: DeserializeOwned>(
        &self,
        pattern: Match,
        timeout: Duration,
    ) -> Result<(T, Status)> {
        self.receive_value(pattern, Some(timeout))
    }

    /// [`Communicator::receive`] that gives up with
    /// [`Error::Timeout`](crate::Error::Timeout) after `timeout`; the
    /// receive is withdrawn, and a message that arrives later is left for
    /// the next receive.
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// # let world = spmd::init().unwrap();
    /// match world.receive_timeout::<u64>(1, Duration::from_secs(5)) {
    ///     Ok(v) => println!("rank 1 sent {v}"),
    ///     Err(spmd::Error::Timeout { .. }) => println!("nothing from rank 1 for 5 s"),
    ///     Err(e) => return Err(e),
    /// }
    /// # Ok::<(), spmd::Error>(())
    /// ```
    pub fn receive_timeout<T: DeserializeOwned>(&self, source: usize, timeout: Duration) -> Result<T> {
        self.receive_with_tag_timeout(source, 0, timeout)
    }

    /// [`Communicator::receive_with_tag`] that gives up with
    /// [`Error::Timeout`](crate::Error::Timeout) after `timeout`.
    pub fn receive_with_tag_timeout<T: DeserializeOwned>(
        &self,
        source: usize,
        tag: u32,
        timeout: Duration,
    ) -> Result<T> {
        Ok(self
            .receive_value(Match::source(source).with_tag(tag), Some(timeout))?
            .0)
    }

    /// Receives a `T` from rank `source` with tag 0 if one has arrived,
    /// without waiting: `None` if none has yet.
    ///
    /// ```no_run
    /// # let world = spmd::init().unwrap();
    /// while world.try_receive::<u64>(0)?.is_none() {
    ///     // do useful work meanwhile
    /// }
    /// # Ok::<(), spmd::Error>(())
    /// ```
    pub fn try_receive<T: DeserializeOwned>(&self, source: usize) -> Result<Option<T>> {
        self.try_receive_with_tag(source, 0)
    }

    /// [`Communicator::try_receive`] with tag `tag`.
    pub fn try_receive_with_tag<T: DeserializeOwned>(&self, source: usize, tag: u32) -> Result<Option<T>> {
        Ok(self
            .try_receive_matching(Match::source(source).with_tag(tag))?
            .map(|(v, _)| v))
    }

    /// Receives a `T` from whichever rank and tag `pattern` accepts if such
    /// a message has arrived, with its status, without waiting.
    pub fn try_receive_matching<T: DeserializeOwned>(&self, pattern: Match) -> Result<Option<(T, Status)>> {
        let sel = self.user(pattern)?;
        #[cfg(feature = "mpi")]
        if let Some(m) = self.mpi_side() {
            let wait = crate::mpi_backend::Wait::Never;
            let Some(env) = m.receive(sel.pattern, message::room_for::<T>(), wait)? else {
                return Ok(None);
            };
            let status = self.status_of(&env);
            return Ok(Some((self.take(env, message::decode_owned)?, status)));
        }
        let env = {
            let mut engine = self.engine()?;
            if self.ranked(engine.probe(sel, None))?.is_none() {
                return Ok(None);
            }
            // The message found is the first `sel` accepts: the receive
            // takes it at once.
            let id = self.ranked(engine.post(sel, message::room_for::<T>()))?;
            self.ranked(engine.wait_receive(id, None))?
        };
        let status = self.status_of(&env);
        Ok(Some((self.take(env, message::decode_owned)?, status)))
    }

    /// Waits until a message `pattern` accepts has arrived and returns its
    /// status, leaving it to be received.
    pub fn probe(&self, pattern: Match) -> Result<Status> {
        on_mpi!(self, |m| Ok(self
            .probe_on_mpi(m, pattern, Some(None))?
            .expect("a probe without a deadline returns only when it finds a message")));
        let found = self.ranked(self.engine()?.probe(self.user(pattern)?, Some(None)))?;
        let found = found.expect("a probe without a deadline returns only when it finds a message");
        Ok(found.with_source(self.rank_of(found.source())))
    }

    /// [`Communicator::probe`] that gives up with
    /// [`Error::Timeout`](crate::Error::Timeout) after `timeout`.
    pub fn probe_timeout(&self, pattern: Match, timeout: Duration) -> Result<Status> {
        on_mpi!(self, |m| self
            .probe_on_mpi(m, pattern, Some(Some(timeout)))?
            .ok_or_else(|| timed_out(pattern_text(&pattern), Some(timeout))));
        let found = self.ranked(self.engine()?.probe(self.user(pattern)?, Some(Some(timeout))))?;
        let found = found.expect("a probe with a deadline returns a message or the timeout error");
        Ok(found.with_source(self.rank_of(found.source())))
    }

    /// Returns the status of a message `pattern` accepts if one has arrived,
    /// without waiting.
    pub fn try_probe(&self, pattern: Match) -> Result<Option<Status>> {
        on_mpi!(self, |m| self.probe_on_mpi(m, pattern, None));
        let found = self.ranked(self.engine()?.probe(self.user(pattern)?, None))?;
        Ok(found.map(|f| f.with_source(self.rank_of(f.source()))))
    }

    /// A probe on the MPI backend: `wait` as the engine's probe takes it
    /// (`None`: do not wait; `Some(None)`: forever).
    #[cfg(feature = "mpi")]
    fn probe_on_mpi(
        &self,
        m: &crate::mpi_backend::MpiComm,
        pattern: Match,
        wait: Option<Option<Duration>>,
    ) -> Result<Option<Status>> {
        use crate::mpi_backend::Wait;
        let sel = self.user(pattern)?;
        let wait = wait.map_or(Wait::Never, Wait::after);
        m.probe(sel.pattern, wait)
    }

    /// Sends `value` to `dest` and receives a `R` from `source`, both with
    /// tag 0, without deadlock whatever the peers do in the same call.
    ///
    /// ```no_run
    /// # let world = spmd::init().unwrap();
    /// let (r, n) = (world.rank(), world.size());
    /// let from_left: usize = world.sendrecv(&r, (r + 1) % n, (r + n - 1) % n)?;
    /// # Ok::<(), spmd::Error>(())
    /// ```
    pub fn sendrecv<S: Serialize + ?Sized, R: DeserializeOwned>(
        &self,
        value: &S,
        dest: usize,
        source: usize,
    ) -> Result<R> {
        self.sendrecv_with_tag(value, dest, 0, source, 0)
    }

    /// [`Communicator::sendrecv`] with explicit tags for each direction.
    pub fn sendrecv_with_tag<S: Serialize + ?Sized, R: DeserializeOwned>(
        &self,
        value: &S,
        dest: usize,
        send_tag: u32,
        source: usize,
        receive_tag: u32,
    ) -> Result<R> {
        let dest = self.peer(dest)?;
        let sel = self.user(Match::source(source).with_tag(receive_tag))?;
        let (format, payload) = message::encode(value)?;
        let head = self.user_head(send_tag, format)?;
        #[cfg(feature = "mpi")]
        if let Some(m) = self.mpi_side() {
            let env = m.sendrecv(dest, send_tag, format, &payload, sel.pattern, message::room_for::<R>())?;
            return self.take(env, message::decode_owned);
        }
        let env = self.ranked((|| {
            let mut engine = self.engine()?;
            let id = engine.post(sel, message::room_for::<R>())?;
            let sent = engine.send(dest, head, payload)?;
            let env = engine.wait_receive(id, None)?;
            engine.wait_sent(sent, dest)?;
            Ok(env)
        })())?;
        self.take(env, message::decode_owned)
    }

    /// Sends a slice of plain numbers as raw bytes, without serialization.
    ///
    /// ```no_run
    /// # let world = spmd::init().unwrap();
    /// let data = [1.5f64; 1024];
    /// if world.rank() == 0 {
    ///     world.send_slice(&data, 1)?;
    /// } else if world.rank() == 1 {
    ///     let mut buf = [0.0f64; 1024];
    ///     let status = world.receive_into(&mut buf, 0)?;
    ///     assert_eq!(status.len(), 8 * 1024);
    /// }
    /// # Ok::<(), spmd::Error>(())
    /// ```
    pub fn send_slice<T: Pod>(&self, data: &[T], dest: usize) -> Result<()> {
        self.send_slice_with_tag(data, dest, 0)
    }

    /// [`Communicator::send_slice`] with tag `tag`.
    pub fn send_slice_with_tag<T: Pod>(&self, data: &[T], dest: usize, tag: u32) -> Result<()> {
        let dest = self.peer(dest)?;
        let head = self.user_head(tag, message::raw::<T>())?;
        on_mpi!(self, |m| m.send(
            dest,
            tag,
            message::raw::<T>(),
            message::pod_bytes(data)
        ));
        self.ranked(self.engine()?.send_now(dest, head, message::pod_bytes(data)))
    }

    /// Receives plain numbers from `source` (tag 0) into `buf`. The message
    /// may be shorter than `buf`; the status tells its length in bytes.
    pub fn receive_into<T: Pod>(&self, buf: &mut [T], source: usize) -> Result<Status> {
        self.receive_into_matching(buf, Match::source(source).with_tag(0))
    }

    /// [`Communicator::receive_into`] with tag `tag`.
    pub fn receive_into_with_tag<T: Pod>(&self, buf: &mut [T], source: usize, tag: u32) -> Result<Status> {
        self.receive_into_matching(buf, Match::source(source).with_tag(tag))
    }

    /// Receives plain numbers from whichever rank and tag `pattern` accepts
    /// into `buf`.
    pub fn receive_into_matching<T: Pod>(&self, buf: &mut [T], pattern: Match) -> Result<Status> {
        self.receive_into_until(buf, pattern, None)
    }

    /// Like [`Communicator::receive_into_matching`], but gives up with
    /// [`Error::Timeout`](crate::Error::Timeout) after `timeout`.
    pub fn receive_into_matching_timeout<T: Pod>(
        &self,
        buf: &mut [T],
        pattern: Match,
        timeout: Duration,
    ) -> Result<Status> {
        self.receive_into_until(buf, pattern, Some(timeout))
    }

    fn receive_into_until<T: Pod>(&self, buf: &mut [T], pattern: Match, timeout: Option<Duration>) -> Result<Status> {
        // A message that arrives after this call starts lands straight in
        // `buf`; one that was already queued is copied.
        let element = crate::element::code_of::<T>();
        let sel = self.user(pattern)?;
        let env = match self.receive_landing(sel, bytemuck::cast_slice_mut(buf), element, timeout)? {
            // It landed as whole elements that fit: nothing to check.
            Received::InBuffer { head, len, .. } => {
                return Ok(Status::new(self.rank_of(head.source), head.tag, len, element));
            }
            Received::Held(env) => env,
        };
        let status = self.status_of(&env);
        self.take(env, |env| match message::copy_into(&env, buf) {
            Ok(_) => Ok(()),
            Err(error) => message::reject(error, env),
        })?;
        Ok(status)
    }

    /// Receives the next message `sel` accepts, landing in `buf` if it is
    /// raw numbers of type `element` that fit.
    fn receive_landing(
        &self,
        sel: Selector,
        buf: &mut [u8],
        element: u16,
        timeout: Option<Duration>,
    ) -> Result<Received> {
        on_mpi!(self, |_m| {
            self.receive_envelope(sel, Some(Room::given(buf, element)), timeout)
                .map(Received::Held)
        });
        self.ranked(self.engine()?.receive_landing(sel, buf, element, timeout))
    }

    /// Receives plain numbers from `source` (tag 0) into a new vector sized
    /// to the message.
    pub fn receive_vec<T: Pod>(&self, source: usize) -> Result<Vec<T>> {
        self.receive_vec_matching(Match::source(source).with_tag(0))
            .map(|(v, _)| v)
    }

    /// [`Communicator::receive_vec`] with tag `tag`.
    pub fn receive_vec_with_tag<T: Pod>(&self, source: usize, tag: u32) -> Result<Vec<T>> {
        self.receive_vec_matching(Match::source(source).with_tag(tag))
            .map(|(v, _)| v)
    }

    /// Receives plain numbers from whichever rank and tag `pattern` accepts
    /// into a new vector, with the status.
    pub fn receive_vec_matching<T: Pod>(&self, pattern: Match) -> Result<(Vec<T>, Status)> {
        self.receive_vec_until(pattern, None)
    }

    /// Like [`Communicator::receive_vec_matching`], but gives up with
    /// [`Error::Timeout`](crate::Error::Timeout) after `timeout`.
    pub fn receive_vec_matching_timeout<T: Pod>(&self, pattern: Match, timeout: Duration) -> Result<(Vec<T>, Status)> {
        self.receive_vec_until(pattern, Some(timeout))
    }

    fn receive_vec_until<T: Pod>(&self, pattern: Match, timeout: Option<Duration>) -> Result<(Vec<T>, Status)> {
        let env = self.receive_envelope(self.user(pattern)?, Some(message::fresh_room::<T>()), timeout)?;
        let status = self.status_of(&env);
        Ok((self.take(env, message::into_vec)?, status))
    }
}
