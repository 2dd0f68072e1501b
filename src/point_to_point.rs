//! Blocking point-to-point communication: send, receive, probe, sendrecv,
//! for serde values and for slices of plain numbers.

use std::time::Duration;

use bytemuck::Pod;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::Result;
use crate::matching::{Envelope, Match, Selector, Status};
use crate::message;
use crate::progress::Sent;
use crate::wire::{Context, Kind};
use crate::world::World;

impl World {
    /// Queues a message; the caller decides when to wait for it.
    pub(crate) fn post_send(
        &self,
        dest: usize,
        context: Context,
        tag: u32,
        kind: Kind,
        payload: Vec<u8>,
    ) -> Result<Sent> {
        self.engine().send(dest, context, tag, kind, payload)
    }

    /// Sends and waits until the message has left this process.
    pub(crate) fn send_bytes(
        &self,
        dest: usize,
        context: Context,
        tag: u32,
        kind: Kind,
        payload: Vec<u8>,
    ) -> Result<()> {
        let mut engine = self.engine();
        let sent = engine.send(dest, context, tag, kind, payload)?;
        engine.wait_sent(sent, dest)
    }

    /// Receives the next message `sel` accepts; a raw message of elements
    /// of the given (size, alignment) lands in a buffer allocated for it.
    pub(crate) fn receive_envelope(
        &self,
        sel: Selector,
        layout: Option<(usize, usize)>,
        timeout: Option<Duration>,
    ) -> Result<Envelope> {
        let mut engine = self.engine();
        let id = engine.post(sel, layout)?;
        engine.wait_receive(id, timeout)
    }

    /// Sends `value` to rank `dest` with tag 0. Returns once the message has
    /// left this process (the receiver may not have it yet).
    ///
    /// A `Vec` or slice of plain numbers (integers of 8 to 64 bits, `f32`,
    /// `f64`) travels as its raw bytes, as with [`World::send_slice`], not
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
        self.check_rank(dest)?;
        if let Some(bytes) = message::as_raw(value) {
            // Numbers go out straight from the caller's memory.
            return self.engine().send_now(dest, Context::User, tag, Kind::Raw, bytes);
        }
        let (kind, payload) = message::encode(value)?;
        self.send_bytes(dest, Context::User, tag, kind, payload)
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
        let env = self.receive_envelope(Selector::user(pattern), message::raw_vec_layout::<T>(), timeout)?;
        let status = env.status();
        Ok((message::decode_owned(env)?, status))
    }

    /// Like [`World::receive_matching`], but gives up with
    /// [`Error::Timeout`](crate::Error::Timeout) after `timeout`.
    pub fn receive_matching_timeout<T: DeserializeOwned>(
        &self,
        pattern: Match,
        timeout: Duration,
    ) -> Result<(T, Status)> {
        self.receive_value(pattern, Some(timeout))
    }

    /// Waits until a message `pattern` accepts has arrived and returns its
    /// status, leaving it to be received.
    pub fn probe(&self, pattern: Match) -> Result<Status> {
        let found = self.engine().probe(Selector::user(pattern), Some(None))?;
        Ok(found.expect("a probe without a deadline returns only when it finds a message"))
    }

    /// Returns the status of a message `pattern` accepts if one has arrived,
    /// without waiting.
    pub fn try_probe(&self, pattern: Match) -> Result<Option<Status>> {
        self.engine().probe(Selector::user(pattern), None)
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

    /// [`World::sendrecv`] with explicit tags for each direction.
    pub fn sendrecv_with_tag<S: Serialize + ?Sized, R: DeserializeOwned>(
        &self,
        value: &S,
        dest: usize,
        send_tag: u32,
        source: usize,
        receive_tag: u32,
    ) -> Result<R> {
        self.check_rank(dest)?;
        self.check_rank(source)?;
        let (kind, payload) = message::encode(value)?;
        let mut engine = self.engine();
        let sel = Selector::user(Match::source(source).with_tag(receive_tag));
        let id = engine.post(sel, message::raw_vec_layout::<R>())?;
        let sent = engine.send(dest, Context::User, send_tag, kind, payload)?;
        let env = engine.wait_receive(id, None)?;
        engine.wait_sent(sent, dest)?;
        message::decode_owned(env)
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

    /// [`World::send_slice`] with tag `tag`.
    pub fn send_slice_with_tag<T: Pod>(&self, data: &[T], dest: usize, tag: u32) -> Result<()> {
        self.check_rank(dest)?;
        self.engine()
            .send_now(dest, Context::User, tag, Kind::Raw, message::pod_bytes(data))
    }

    /// Receives plain numbers from `source` (tag 0) into `buf`. The message
    /// may be shorter than `buf`; the status tells its length in bytes.
    pub fn receive_into<T: Pod>(&self, buf: &mut [T], source: usize) -> Result<Status> {
        self.receive_into_matching(buf, Match::source(source).with_tag(0))
    }

    /// [`World::receive_into`] with tag `tag`.
    pub fn receive_into_with_tag<T: Pod>(&self, buf: &mut [T], source: usize, tag: u32) -> Result<Status> {
        self.receive_into_matching(buf, Match::source(source).with_tag(tag))
    }

    /// Receives plain numbers from whichever rank and tag `pattern` accepts
    /// into `buf`.
    pub fn receive_into_matching<T: Pod>(&self, buf: &mut [T], pattern: Match) -> Result<Status> {
        // A message that arrives after this call starts lands straight in
        // `buf`; one that was already queued is copied.
        let env = self
            .engine()
            .receive_landing(Selector::user(pattern), bytemuck::cast_slice_mut(buf))?;
        if env.landed.is_some() {
            message::check_landed::<T>(&env)?;
        } else {
            message::copy_into(&env, buf)?;
        }
        Ok(env.status())
    }

    /// Receives plain numbers from `source` (tag 0) into a new vector sized
    /// to the message.
    pub fn receive_vec<T: Pod>(&self, source: usize) -> Result<Vec<T>> {
        self.receive_vec_matching(Match::source(source).with_tag(0))
            .map(|(v, _)| v)
    }

    /// Receives plain numbers from whichever rank and tag `pattern` accepts
    /// into a new vector, with the status.
    pub fn receive_vec_matching<T: Pod>(&self, pattern: Match) -> Result<(Vec<T>, Status)> {
        let layout = (std::mem::size_of::<T>(), std::mem::align_of::<T>());
        let env = self.receive_envelope(Selector::user(pattern), Some(layout), None)?;
        let status = env.status();
        Ok((message::into_vec(env)?, status))
    }
}
