//! The ways of moving bytes between ranks, behind one handle. The rest of the
//! library sees only [`Transport`] (and, for the node-wide collectives, the
//! shared region and the waiting of [`ShmMesh`]); which flavour it is
//! stays in here.

use std::os::fd::OwnedFd;
use std::sync::atomic::AtomicU32;
use std::time::Instant;

use crate::error::{Error, Result};
use crate::matching::{ReceiveId, Sink};
use crate::wire::{Access, Header, Settings};

mod endpoint;
#[cfg(feature = "fuzzing")]
pub(crate) mod fuzz_links;
mod last_look;
mod link;
mod mixed;
mod offer;
mod outgoing;
mod peers;
pub(crate) mod shm;
mod socket;
mod stream;
mod tcp;
mod writing;

pub(crate) use endpoint::Endpoint;
use mixed::MixedMesh;
pub(crate) use shm::{Boxed, NodeRanks, Region, ShmMesh, Straight};
use socket::SocketMesh;

/// Receives each whole message a transport reads.
pub(crate) type Delivery<'a> = dyn Sink + 'a;

/// Called by a transport just before it sleeps, with what it delivers to
/// (whose count of messages arrived the rank's status page shows).
pub(crate) type Sleeping<'a> = dyn Fn(&Delivery<'_>) + 'a;

/// Whether [`Transport::progress`] may sleep when nothing is ready.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Wait {
    /// Do what can be done now and return.
    No,
    /// Do what can be done now as a rank that waits in spmd does (taking in
    /// every offer no receive has claimed), and return.
    Once,
    /// Sleep until something is ready, or until the deadline if there is one.
    Until(Option<Instant>),
}

/// What a thread that let go of the engine sleeps on: what it can watch
/// without the engine, and what wakes it when another thread of the rank
/// moves bytes it may wait for.
#[derive(Debug)]
pub(crate) enum Sleep {
    /// This rank's doorbell, which its peers and its other threads ring.
    /// (The value this thread announced on it: see `shm::doorbell`.)
    Doorbell(*const AtomicU32, u32),
    /// The sockets, and the rank's wake-up descriptor.
    Descriptors(Vec<libc::pollfd>),
}

/// The longest a thread sleeps when no peer is watched (see [`Sleep::sleep`]).
const LONE_SLEEP: std::time::Duration = std::time::Duration::from_millis(10);

impl Sleep {
    /// Sleeps until woken, or until `deadline`.
    pub fn sleep(&mut self, deadline: Option<Instant>) -> Result<()> {
        let timeout = deadline.map(|d| d.saturating_duration_since(Instant::now()));
        match self {
            Sleep::Doorbell(bell, announced) => {
                shm::sleep_on(*bell, *announced, timeout);
                Ok(())
            }
            Sleep::Descriptors(fds) => {
                // Only the thread's own wake-up descriptor: no peer is read
                // now (the queue bound holds them all back, or all have
                // closed). Look again now and then rather than trust that
                // another thread will wake this one.
                let timeout = match fds.len() {
                    0 | 1 => Some(timeout.map_or(LONE_SLEEP, |t| t.min(LONE_SLEEP))),
                    _ => timeout,
                };
                socket::poll_descriptors(fds, timeout)
            }
        }
    }
}

/// Identifies one queued frame, to ask whether it has been sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SendTicket {
    /// The rank the frame goes to.
    pub dest: usize,
    seq: u64,
}

/// What the launcher sent about the job, for connecting.
pub(crate) struct Table<'a> {
    /// The node of every rank.
    pub nodes: &'a [u32],
    /// The segments of the other ranks of this node, by rank, each with
    /// its rank's wake-up socket in a job that spans nodes.
    pub segments: Vec<(usize, OwnedFd, Option<OwnedFd>)>,
    /// This rank's ends of its socket pairs to the others, by rank.
    pub links: Vec<(usize, OwnedFd)>,
    /// Where every rank listens for TCP connections, by rank (over TCP).
    pub addresses: Vec<Option<std::net::SocketAddr>>,
    /// The job's id and secret, which every TCP connection proves.
    pub access: Option<&'a Access>,
}

/// The transport of one rank.
#[derive(Debug)]
pub(crate) enum Transport {
    /// A job of one rank: there is nobody to talk to.
    Alone,
    /// Stream sockets (Unix or TCP) between all ranks.
    Socket(SocketMesh),
    /// Rings in shared memory between all ranks (one node).
    Shm(ShmMesh),
    /// Rings within the node, TCP to the other nodes.
    Mixed(MixedMesh),
}

impl Transport {
    /// Connects rank `me` to all its peers.
    pub fn connect(
        endpoint: Endpoint,
        me: usize,
        table: Table<'_>,
        settings: &Settings,
        max_message: u64,
    ) -> Result<Transport> {
        let size = table.nodes.len();
        let Some(&my_node) = table.nodes.get(me) else {
            return Err(Error::protocol(
                "the launcher",
                "table",
                "this rank is not in the table",
            ));
        };
        let ranks: Vec<usize> = (0..size).filter(|r| table.nodes[*r] == my_node).collect();
        // Only TCP reaches other nodes.
        if ranks.len() != size && !matches!(endpoint, Endpoint::Tcp(_) | Endpoint::Mixed(..)) {
            return Err(Error::Bootstrap(
                "the job spans several nodes, which only the tcp transport reaches".into(),
            ));
        }
        let access = || {
            table
                .access
                .ok_or_else(|| Error::protocol("the launcher", "access", "a job over TCP without a secret"))
        };
        match endpoint {
            Endpoint::Socket => {
                SocketMesh::from_links(me, size, table.links, max_message, settings.wait).map(Transport::Socket)
            }
            Endpoint::Tcp(listener) => {
                let deadline = Instant::now() + tcp::CONNECT_TIME;
                let everyone = vec![true; size];
                let listener = listener.listen()?;
                let links = tcp::connect_all(listener, me, &table.addresses, &everyone, access()?, deadline)?;
                SocketMesh::from_links(me, size, links, max_message, settings.wait).map(Transport::Socket)
            }
            Endpoint::Shm(e) => {
                let index = ranks.iter().position(|r| *r == me).unwrap_or(0);
                let node = NodeRanks { ranks, me: index };
                let (wait, single_copy) = (settings.wait, settings.single_copy);
                ShmMesh::connect(e, size, node, table.segments, max_message, wait, single_copy).map(Transport::Shm)
            }
            Endpoint::Mixed(e, listener) => {
                let remote: Vec<bool> = (0..size).map(|r| table.nodes[r] != my_node).collect();
                let deadline = Instant::now() + tcp::CONNECT_TIME;
                let listener = listener.listen()?;
                let links = tcp::connect_all(listener, me, &table.addresses, &remote, access()?, deadline)?;
                let sockets = SocketMesh::from_links(me, size, links, max_message, settings.wait)?;
                let index = ranks.iter().position(|r| *r == me).unwrap_or(0);
                let node = NodeRanks { ranks, me: index };
                let (wait, single_copy) = (settings.wait, settings.single_copy);
                let shm = ShmMesh::connect(e, size, node, table.segments, max_message, wait, single_copy)?;
                Ok(Transport::Mixed(MixedMesh::new(shm, sockets, me, table.nodes.to_vec())))
            }
        }
    }

    /// Queues one frame to another rank; `None` if it was written in full
    /// at once.
    pub fn queue(&mut self, dest: usize, header: Header, payload: Vec<u8>) -> Result<Option<SendTicket>> {
        match self {
            Transport::Alone => Err(Error::InvalidRank { rank: dest, size: 1 }),
            Transport::Socket(m) => m.peers.queue(dest, header, payload),
            Transport::Shm(m) => m.peers.queue(dest, header, payload),
            Transport::Mixed(m) if m.is_local(dest) => m.shm.peers.queue(dest, header, payload),
            Transport::Mixed(m) => m.sockets.peers.queue(dest, header, payload),
        }
    }

    /// Queues a frame whose payload stays in the caller's memory.
    ///
    /// # Safety
    ///
    /// As for `Peers::queue_borrowed`: if a ticket comes back, `payload`
    /// must stay valid until the frame is sent or [`Transport::own`] has
    /// been called for the ticket (`None`: it borrows nothing any more).
    #[inline]
    pub unsafe fn queue_borrowed(&mut self, dest: usize, header: Header, payload: &[u8]) -> Result<Option<SendTicket>> {
        match self {
            Transport::Alone => Err(Error::InvalidRank { rank: dest, size: 1 }),
            // SAFETY: passed on from the caller.
            Transport::Socket(m) => unsafe { m.peers.queue_borrowed(dest, header, payload) },
            // SAFETY: passed on from the caller.
            Transport::Shm(m) => unsafe { m.peers.queue_borrowed(dest, header, payload) },
            // SAFETY: passed on from the caller.
            Transport::Mixed(m) if m.is_local(dest) => unsafe { m.shm.peers.queue_borrowed(dest, header, payload) },
            // SAFETY: passed on from the caller.
            Transport::Mixed(m) => unsafe { m.sockets.peers.queue_borrowed(dest, header, payload) },
        }
    }

    /// Stops writing a claimed message into the receive's buffer: what has
    /// arrived so far is copied out, and the rest arrives as usual.
    pub fn detach(&mut self, id: ReceiveId) {
        match self {
            Transport::Alone => {}
            Transport::Socket(m) => m.peers.detach(id),
            Transport::Shm(m) => m.peers.detach(id),
            Transport::Mixed(m) => {
                m.shm.peers.detach(id);
                m.sockets.peers.detach(id);
            }
        }
    }

    /// Makes a queued frame's borrowed payload owned; false if it cannot
    /// yet, because the receiver may be copying straight from it (an
    /// offer): wait until it is sent or the receiver has gone.
    #[must_use]
    pub fn own(&mut self, ticket: SendTicket) -> bool {
        match self {
            Transport::Alone => true,
            Transport::Socket(m) => m.peers.own(ticket),
            Transport::Shm(m) => m.peers.own(ticket),
            Transport::Mixed(m) if m.is_local(ticket.dest) => m.shm.peers.own(ticket),
            Transport::Mixed(m) => m.sockets.peers.own(ticket),
        }
    }

    /// True if a message of `len` bytes to `dest` would go as an offer:
    /// its payload would have to stay in place until the receiver took it.
    pub fn would_offer(&self, dest: usize, len: usize) -> bool {
        match self {
            Transport::Shm(m) => m.peers.would_offer(dest, len),
            Transport::Mixed(m) if m.is_local(dest) => m.shm.peers.would_offer(dest, len),
            _ => false,
        }
    }

    /// True once the frame has left this process's queues.
    pub fn is_sent(&self, ticket: SendTicket) -> bool {
        match self {
            Transport::Alone => true,
            Transport::Socket(m) => m.peers.is_sent(ticket),
            Transport::Shm(m) => m.peers.is_sent(ticket),
            Transport::Mixed(m) if m.is_local(ticket.dest) => m.shm.peers.is_sent(ticket),
            Transport::Mixed(m) => m.sockets.peers.is_sent(ticket),
        }
    }

    /// True if the send will never complete: the link to its destination
    /// closed before the frame was written.
    pub fn is_lost(&self, ticket: SendTicket) -> bool {
        match self {
            Transport::Alone => false,
            Transport::Socket(m) => m.peers.is_lost(ticket),
            Transport::Shm(m) => m.peers.is_lost(ticket),
            Transport::Mixed(m) if m.is_local(ticket.dest) => m.shm.peers.is_lost(ticket),
            Transport::Mixed(m) => m.sockets.peers.is_lost(ticket),
        }
    }

    /// True if `rank` will deliver no more messages.
    pub fn is_gone(&self, rank: usize) -> bool {
        match self {
            Transport::Alone => true,
            Transport::Socket(m) => m.peers.is_gone(rank),
            Transport::Shm(m) => m.is_gone(rank),
            Transport::Mixed(m) if m.is_local(rank) => m.shm.is_gone(rank),
            Transport::Mixed(m) => m.sockets.peers.is_gone(rank),
        }
    }

    /// True if `rank` said goodbye without calling finalize (see
    /// [`crate::wire::BYE_UNFINALIZED`]).
    pub fn left_unfinalized(&self, rank: usize) -> bool {
        match self {
            Transport::Alone => false,
            Transport::Socket(m) => m.peers.left_unfinalized(rank),
            Transport::Shm(m) => m.peers.left_unfinalized(rank),
            Transport::Mixed(m) if m.is_local(rank) => m.shm.peers.left_unfinalized(rank),
            Transport::Mixed(m) => m.sockets.peers.left_unfinalized(rank),
        }
    }

    /// From now on, this rank's goodbye says it ends without calling
    /// finalize (see [`crate::wire::BYE_UNFINALIZED`]).
    pub fn end_unfinalized(&mut self) {
        match self {
            Transport::Alone => {}
            Transport::Socket(m) => m.peers.unfinalized = true,
            Transport::Shm(m) => m.peers.unfinalized = true,
            Transport::Mixed(m) => {
                m.shm.peers.unfinalized = true;
                m.sockets.peers.unfinalized = true;
            }
        }
    }

    /// True if `rank` vanished without saying goodbye (it died).
    pub fn died(&self, rank: usize) -> bool {
        match self {
            Transport::Alone => false,
            Transport::Socket(m) => m.peers.died(rank),
            Transport::Shm(m) => m.peers.died(rank),
            Transport::Mixed(m) if m.is_local(rank) => m.shm.peers.died(rank),
            Transport::Mixed(m) => m.sockets.peers.died(rank),
        }
    }

    /// True if nothing more can be sent to `rank`.
    pub fn is_closed(&self, rank: usize) -> bool {
        match self {
            Transport::Alone => true,
            Transport::Socket(m) => m.peers.is_closed(rank),
            Transport::Shm(m) => m.peers.is_closed(rank) || m.has_closed(rank),
            Transport::Mixed(m) if m.is_local(rank) => m.shm.peers.is_closed(rank) || m.shm.has_closed(rank),
            Transport::Mixed(m) => m.sockets.peers.is_closed(rank),
        }
    }

    /// Moves bytes and delivers arrived messages; may sleep per `wait`,
    /// calling `sleeping` first. True if anything moved.
    pub fn progress(&mut self, deliver: &mut Delivery<'_>, wait: Wait, sleeping: &Sleeping<'_>) -> Result<bool> {
        match self {
            Transport::Alone => Ok(false),
            Transport::Socket(m) => m.progress(deliver, wait, sleeping),
            Transport::Shm(m) => m.progress(deliver, wait, sleeping),
            Transport::Mixed(m) => m.progress(deliver, wait, sleeping),
        }
    }

    /// Polls for work as the wait mode says, without sleeping: true if a
    /// link is ready or `woken` says so.
    pub fn poll_for_work(&self, woken: &dyn Fn() -> bool) -> bool {
        match self {
            Transport::Shm(m) => m.poll_for_work(woken),
            Transport::Socket(m) => m.poll_for_work(woken),
            Transport::Mixed(m) => m.poll_for_work(woken),
            Transport::Alone => woken(),
        }
    }

    /// Gets ready to sleep without the engine held: what to sleep on, or
    /// `None` if there is work after all (or `ready` says so). A sleep on
    /// descriptors needs the rank's wake-up descriptor added.
    pub fn prepare_sleep(&mut self, deliver: &Delivery<'_>, ready: &dyn Fn() -> bool) -> Result<Option<Sleep>> {
        let sleep = match self {
            Transport::Alone => Some(Sleep::Descriptors(Vec::new())),
            Transport::Socket(m) => m.prepare_sleep(deliver)?.map(Sleep::Descriptors),
            Transport::Mixed(m) => m.prepare_sleep(deliver, ready)?.map(Sleep::Descriptors),
            Transport::Shm(m) => return Ok(m.prepare_sleep(ready).map(|(bell, v)| Sleep::Doorbell(bell, v))),
        };
        Ok(sleep.filter(|_| !ready()))
    }

    /// The last of the rank's sleeping threads woke.
    pub fn end_sleep(&self) {
        match self {
            Transport::Shm(m) => m.end_sleep(),
            Transport::Mixed(m) => m.end_sleep(),
            _ => {}
        }
    }

    /// Wakes the rank's threads that sleep on its doorbell: false if they
    /// sleep on descriptors instead (the caller wakes them).
    pub fn wake_sleepers(&self) -> bool {
        match self {
            Transport::Shm(m) => {
                m.wake_sleepers();
                true
            }
            _ => false,
        }
    }

    /// The shared-memory mesh, when it reaches every peer (for the
    /// straight path of a receive, see `shm/straight.rs`: a job that spans
    /// nodes has sockets to read and write as well).
    pub fn shm_only(&mut self) -> Option<&mut ShmMesh> {
        match self {
            Transport::Shm(m) => Some(m),
            _ => None,
        }
    }

    /// The shared-memory mesh, when every rank of the job shares this node
    /// and talks through it: the node-wide collectives run on its region.
    pub fn node(&mut self) -> Option<&mut ShmMesh> {
        match self {
            Transport::Shm(m) if m.whole_job() && m.region().is_some() => Some(m),
            _ => None,
        }
    }

    /// Every rank's node, when the job spans nodes and each node's ranks
    /// share memory (the two levels of `collective/levels.rs`).
    pub fn nodes(&self) -> Option<&[u32]> {
        match self {
            Transport::Mixed(m) => Some(m.nodes()),
            _ => None,
        }
    }

    /// Flushes everything and tells every peer this rank is done.
    pub fn finish(&mut self, deliver: &mut Delivery<'_>, sleeping: &Sleeping<'_>) -> Result<()> {
        match self {
            Transport::Alone => Ok(()),
            Transport::Socket(m) => m.finish(deliver, sleeping),
            Transport::Shm(m) => m.finish(deliver, sleeping),
            Transport::Mixed(m) => m.finish(deliver, sleeping),
        }
    }
}

/// The shared memory a node of `local` ranks needs in all (for the
/// launcher's check before it starts them), with a collective region of
/// `region` bytes.
pub(crate) fn node_shared_bytes(local: usize, region: usize) -> u64 {
    shm::node_bytes(local, region)
}
