//! Non-blocking operations: `immediate_` sends and receives return requests
//! that complete later, to `wait` on or `test`.

use bytemuck::Pod;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::communicator::{Communicator, on_mpi};
use crate::envelope::{Envelope, Room};
use crate::error::Result;
use crate::matching::ReceiveId;
use crate::message::{self, Taken};
use crate::progress::{Head, Sent};
use crate::selector::{Match, Status};

/// An operation that completes in the background.
pub trait Request {
    /// What the operation yields when complete.
    type Output;

    /// Waits until the operation completes and returns its result.
    fn wait(self) -> Result<Self::Output>;

    /// Makes progress without waiting; true once [`Request::wait`] would
    /// return at once.
    fn test(&mut self) -> Result<bool>;

    /// Waits until the operation completes or `timeout` has passed: true
    /// if it completed (then [`Request::wait`] returns at once), false if
    /// the time ran out (the operation goes on, to wait on again).
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// use spmd::Request;
    /// # let world = spmd::init().unwrap();
    /// let mut result = world.immediate_receive::<u64>(1)?;
    /// while !result.wait_timeout(Duration::from_secs(10))? {
    ///     println!("still waiting for rank 1");
    /// }
    /// let (value, _) = result.wait()?; // at once
    /// # Ok::<(), spmd::Error>(())
    /// ```
    fn wait_timeout(&mut self, timeout: std::time::Duration) -> Result<bool>
    where
        Self: Sized,
    {
        crate::completion::wait_one_timeout(self, timeout)
    }
}

/// Waits for every request, in order, and returns their outputs in order.
///
/// It stops at the first error and returns it: the outputs waited for
/// before it are dropped, and so are the requests after it (a receive is
/// withdrawn, and its message, if one came, waits for a later receive; a
/// send goes on). Where one failure must not cost the others their
/// outputs, use [`wait_each`].
///
/// ```no_run
/// use spmd::Request;
/// # let world = spmd::init().unwrap();
/// let receives: Vec<_> = (0..world.size())
///     .map(|r| world.immediate_receive::<u64>(r))
///     .collect::<Result<_, _>>()?;
/// let sends: Vec<_> = (0..world.size())
///     .map(|r| world.immediate_send(&(world.rank() as u64), r))
///     .collect::<Result<_, _>>()?;
/// let values = spmd::wait_all(receives)?;
/// spmd::wait_all(sends)?;
/// # Ok::<(), spmd::Error>(())
/// ```
pub fn wait_all<R: Request>(requests: impl IntoIterator<Item = R>) -> Result<Vec<R::Output>> {
    // Room for every output at once (collecting into a `Result` grows the
    // list from nothing: five allocations for a window of 64).
    let requests = requests.into_iter();
    let mut outputs = Vec::with_capacity(requests.size_hint().0);
    for request in requests {
        outputs.push(request.wait()?);
    }
    Ok(outputs)
}

/// Waits for every request, in order, and returns each one's result in
/// order: a request that fails costs the others nothing. A receive that
/// fails because it cannot take its message as the type it asked for
/// leaves the message for a later receive, as a blocking receive does.
///
/// ```no_run
/// # let world = spmd::init().unwrap();
/// let receives: Vec<_> = (0..world.size())
///     .map(|r| world.immediate_receive::<u64>(r))
///     .collect::<Result<_, _>>()?;
/// for (rank, result) in spmd::wait_each(receives).into_iter().enumerate() {
///     match result {
///         Ok((value, _)) => println!("rank {rank} sent {value}"),
///         Err(e) => eprintln!("from rank {rank}: {e}"),
///     }
/// }
/// # Ok::<(), spmd::Error>(())
/// ```
pub fn wait_each<R: Request>(requests: impl IntoIterator<Item = R>) -> Vec<Result<R::Output>> {
    requests.into_iter().map(Request::wait).collect()
}

/// A send in progress. The message was copied when the request was made, so
/// the value may change or go away; dropping the request does not cancel
/// the send.
#[derive(Debug)]
#[must_use = "wait on the request to learn whether the send succeeded"]
pub struct SendRequest<'w> {
    comm: &'w Communicator,
    sent: Sent,
    /// The job rank it goes to.
    dest: usize,
    /// The send on the MPI backend.
    #[cfg(feature = "mpi")]
    mpi: Option<crate::mpi_backend::MpiSend>,
}

impl Request for SendRequest<'_> {
    type Output = ();

    fn wait(self) -> Result<()> {
        #[cfg(feature = "mpi")]
        if let (Some(mut send), Some(m)) = (self.mpi, self.comm.mpi_side()) {
            return send.wait(m);
        }
        self.comm.ranked(self.comm.engine()?.wait_sent(self.sent, self.dest))
    }

    fn test(&mut self) -> Result<bool> {
        #[cfg(feature = "mpi")]
        if let (Some(send), Some(m)) = (&mut self.mpi, self.comm.mpi_side()) {
            return send.test(m);
        }
        self.comm.ranked(self.comm.engine()?.is_sent(self.sent))
    }
}

/// A receive in progress; its output is the value and its [`Status`].
/// Dropping it withdraws the receive, and a message it had already matched
/// goes back to be received by another call.
#[must_use = "wait on the request to get the message"]
pub struct ReceiveRequest<'w, T> {
    comm: &'w Communicator,
    id: Option<ReceiveId>,
    decode: fn(Envelope) -> Taken<T>,
    /// The receive on the MPI backend.
    #[cfg(feature = "mpi")]
    mpi: Option<crate::mpi_backend::MpiReceive>,
}

impl<T> std::fmt::Debug for ReceiveRequest<'_, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReceiveRequest").field("id", &self.id).finish()
    }
}

impl<T> Request for ReceiveRequest<'_, T> {
    type Output = (T, Status);

    fn wait(mut self) -> Result<(T, Status)> {
        #[cfg(feature = "mpi")]
        if let (Some(receive), Some(m)) = (self.mpi.take(), self.comm.mpi_side()) {
            let env = receive.wait(m)?;
            let status = self.comm.status_of(&env);
            return Ok((self.comm.take(env, self.decode)?, status));
        }
        let Some(id) = self.id.take() else {
            unreachable!("a receive request is waited on once, by value")
        };
        let env = self.comm.ranked(self.comm.engine()?.wait_receive(id, None))?;
        let status = self.comm.status_of(&env);
        Ok((self.comm.take(env, self.decode)?, status))
    }

    fn test(&mut self) -> Result<bool> {
        #[cfg(feature = "mpi")]
        if let (Some(receive), Some(m)) = (&mut self.mpi, self.comm.mpi_side()) {
            return receive.test(m);
        }
        match self.id {
            Some(id) => self.comm.ranked(self.comm.engine()?.test_receive(id)),
            None => Ok(true),
        }
    }
}

impl<T> Drop for ReceiveRequest<'_, T> {
    fn drop(&mut self) {
        #[cfg(feature = "mpi")]
        if let (Some(receive), Some(m)) = (self.mpi.take(), self.comm.mpi_side()) {
            receive.withdraw(m);
        }
        if let Some(id) = self.id.take() {
            if let Some(mut engine) = self.comm.engine_for_cleanup() {
                engine.abandon_receive(id);
            }
        }
    }
}

impl Communicator {
    fn immediate_bytes(&self, dest: usize, head: Head, payload: Vec<u8>) -> Result<SendRequest<'_>> {
        let dest = self.peer(dest)?;
        let sent = self.post_send(dest, head, payload)?;
        Ok(self.native_send_request(dest, sent))
    }

    /// The request of a send the native backend has posted.
    fn native_send_request(&self, dest: usize, sent: Sent) -> SendRequest<'_> {
        SendRequest {
            comm: self,
            sent,
            dest,
            #[cfg(feature = "mpi")]
            mpi: None,
        }
    }

    /// Starts sending `value` to `dest` with tag 0 and returns at once.
    pub fn immediate_send<T: Serialize + ?Sized>(&self, value: &T, dest: usize) -> Result<SendRequest<'_>> {
        self.immediate_send_with_tag(value, dest, 0)
    }

    /// [`Communicator::immediate_send`] with tag `tag`.
    pub fn immediate_send_with_tag<T: Serialize + ?Sized>(
        &self,
        value: &T,
        dest: usize,
        tag: u32,
    ) -> Result<SendRequest<'_>> {
        if let Some((format, bytes)) = message::as_raw(value) {
            let head = self.user_head(tag, format)?;
            on_mpi!(self, |m| self.immediate_on_mpi(m, dest, tag, format, bytes));
            return self.immediate_raw(dest, head, bytes);
        }
        let (format, payload) = message::encode(value)?;
        let head = self.user_head(tag, format)?;
        on_mpi!(self, |m| self.immediate_on_mpi(m, dest, tag, format, &payload));
        self.immediate_bytes(dest, head, payload)
    }

    /// Starts sending a slice of plain numbers to `dest` with tag 0: what
    /// fits at once goes straight from `data`, the rest is copied.
    pub fn immediate_send_slice<T: Pod>(&self, data: &[T], dest: usize) -> Result<SendRequest<'_>> {
        self.immediate_send_slice_with_tag(data, dest, 0)
    }

    /// [`Communicator::immediate_send_slice`] with tag `tag`.
    pub fn immediate_send_slice_with_tag<T: Pod>(&self, data: &[T], dest: usize, tag: u32) -> Result<SendRequest<'_>> {
        let head = self.user_head(tag, message::raw::<T>())?;
        on_mpi!(self, |m| self.immediate_on_mpi(
            m,
            dest,
            tag,
            message::raw::<T>(),
            message::pod_bytes(data)
        ));
        self.immediate_raw(dest, head, message::pod_bytes(data))
    }

    /// An immediate send on the MPI backend.
    #[cfg(feature = "mpi")]
    fn immediate_on_mpi(
        &self,
        m: &crate::mpi_backend::MpiComm,
        dest: usize,
        tag: u32,
        format: crate::envelope::Format,
        bytes: &[u8],
    ) -> Result<SendRequest<'_>> {
        let dest = self.peer(dest)?;
        Ok(SendRequest {
            comm: self,
            sent: None,
            dest,
            mpi: Some(m.isend(dest, tag, format, bytes)?),
        })
    }

    /// Starts sending raw bytes of plain numbers: what fits now goes
    /// straight out; only the rest is copied.
    fn immediate_raw(&self, dest: usize, head: Head, bytes: &[u8]) -> Result<SendRequest<'_>> {
        let dest = self.peer(dest)?;
        let sent = self.ranked(self.engine()?.send_eager(dest, head, bytes))?;
        Ok(self.native_send_request(dest, sent))
    }

    /// Posts a receive of a `T` from rank `source` with tag 0 and returns
    /// at once; the request yields the value and its [`Status`].
    ///
    /// ```no_run
    /// use spmd::Request;
    /// # let world = spmd::init().unwrap();
    /// let mut req = world.immediate_receive::<String>(0)?;
    /// while !req.test()? {
    ///     // do useful work meanwhile
    /// }
    /// let (text, status) = req.wait()?;
    /// # Ok::<(), spmd::Error>(())
    /// ```
    pub fn immediate_receive<T: DeserializeOwned>(&self, source: usize) -> Result<ReceiveRequest<'_, T>> {
        self.immediate_receive_matching(Match::source(source).with_tag(0))
    }

    /// [`Communicator::immediate_receive`] with tag `tag`.
    pub fn immediate_receive_with_tag<T: DeserializeOwned>(
        &self,
        source: usize,
        tag: u32,
    ) -> Result<ReceiveRequest<'_, T>> {
        self.immediate_receive_matching(Match::source(source).with_tag(tag))
    }

    /// Posts a receive of a `T` from whichever rank and tag `pattern`
    /// accepts, and returns at once.
    ///
    /// ```no_run
    /// use spmd::{Match, Request};
    /// # let world = spmd::init().unwrap();
    /// let first = world.immediate_receive_matching::<String>(Match::any())?;
    /// let (text, status) = first.wait()?;
    /// println!("rank {} said {text}", status.source());
    /// # Ok::<(), spmd::Error>(())
    /// ```
    pub fn immediate_receive_matching<T: DeserializeOwned>(&self, pattern: Match) -> Result<ReceiveRequest<'_, T>> {
        self.immediate_receive_with(pattern, message::room_for::<T>(), message::decode_owned::<T>)
    }

    /// Posts a receive of plain numbers from rank `source` with tag 0 into
    /// a new vector.
    pub fn immediate_receive_vec<T: Pod>(&self, source: usize) -> Result<ReceiveRequest<'_, Vec<T>>> {
        self.immediate_receive_vec_matching(Match::source(source).with_tag(0))
    }

    /// [`Communicator::immediate_receive_vec`] with tag `tag`.
    pub fn immediate_receive_vec_with_tag<T: Pod>(
        &self,
        source: usize,
        tag: u32,
    ) -> Result<ReceiveRequest<'_, Vec<T>>> {
        self.immediate_receive_vec_matching(Match::source(source).with_tag(tag))
    }

    /// Posts a receive of plain numbers, from whichever rank and tag
    /// `pattern` accepts, into a new vector.
    pub fn immediate_receive_vec_matching<T: Pod>(&self, pattern: Match) -> Result<ReceiveRequest<'_, Vec<T>>> {
        self.immediate_receive_with(pattern, Some(message::fresh_room::<T>()), message::into_vec::<T>)
    }

    /// Posts a receive; a raw message of the room's type lands in it.
    fn immediate_receive_with<T>(
        &self,
        pattern: Match,
        room: Option<Room>,
        decode: fn(Envelope) -> Taken<T>,
    ) -> Result<ReceiveRequest<'_, T>> {
        let sel = self.user(pattern)?;
        on_mpi!(self, |m| Ok(ReceiveRequest {
            comm: self,
            id: None,
            decode,
            mpi: Some(m.ireceive(sel.pattern, room)?),
        }));
        let id = self.ranked(self.engine()?.post(sel, room))?;
        Ok(ReceiveRequest {
            comm: self,
            id: Some(id),
            decode,
            #[cfg(feature = "mpi")]
            mpi: None,
        })
    }
}
