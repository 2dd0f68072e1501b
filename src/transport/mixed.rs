//! A job that spans nodes: shared memory to the ranks of this node, TCP to
//! the others, behind one wait. A rank polls both (its rings on every
//! round, or every few with many node peers; its sockets on every few);
//! then it sleeps in one `poll` on its sockets and its wake-up socket,
//! having told its node peers on its doorbell to ring it through that
//! socket rather than the futex. So a rank blocked on a remote peer uses
//! no CPU, and one blocked on a local peer is woken as fast as over shared
//! memory alone.

use std::cell::Cell;
use std::time::{Duration, Instant};

use crate::error::Result;

use super::shm::ShmMesh;
use super::socket::{SocketMesh, poll_descriptors};
use super::{Delivery, Sleeping, Wait};

/// How often a polling rank looks at its sockets (a system call) between
/// its looks at its rings.
const POLL_SOCKETS_EVERY: Duration = Duration::from_micros(2);
/// How often moving bytes looks at the sockets, when no poll found them
/// ready and nothing waits to be written to them: a rank that waits polls
/// them anyway, and one that calls `test` in a loop still sees them.
const MOVE_SOCKETS_EVERY: Duration = Duration::from_micros(10);

/// The links of one rank in a job that spans nodes.
#[derive(Debug)]
pub(crate) struct MixedMesh {
    /// To the other ranks of this node.
    pub shm: ShmMesh,
    /// To the ranks of the other nodes.
    pub sockets: SocketMesh,
    /// `local[r]`: rank `r` is on this node (reached through `shm`).
    local: Vec<bool>,
    /// `nodes[r]`: the node of rank `r`.
    nodes: Vec<u32>,
    /// When the sockets were last read.
    sockets_looked: Cell<Instant>,
}

impl MixedMesh {
    /// Joins the two meshes, for rank `me` of a job whose rank `r` is on
    /// node `nodes[r]`: the ranks of this rank's node are reached through
    /// `shm`, the others through `sockets`.
    pub fn new(shm: ShmMesh, sockets: SocketMesh, me: usize, nodes: Vec<u32>) -> MixedMesh {
        let local = nodes.iter().map(|n| *n == nodes[me]).collect();
        MixedMesh {
            shm,
            sockets,
            local,
            nodes,
            sockets_looked: Cell::new(Instant::now()),
        }
    }

    /// True if no other rank shares this node: the sockets are all there is.
    fn alone_on_node(&self) -> bool {
        self.shm.node().ranks.len() == 1
    }

    /// Every rank's node.
    pub fn nodes(&self) -> &[u32] {
        &self.nodes
    }

    /// True if rank `rank` is on this node.
    pub fn is_local(&self, rank: usize) -> bool {
        self.local.get(rank).copied().unwrap_or(false)
    }

    /// Moves what can be moved on both, without waiting; the sockets only
    /// when a poll found them ready, output waits for them, or a while has
    /// passed (a look at them is a system call).
    fn move_bytes(&mut self, deliver: &mut Delivery<'_>, waiting: bool) -> Result<bool> {
        let near = self.shm.move_bytes(deliver, waiting)?;
        let now = Instant::now();
        let look = self.alone_on_node()
            || self.sockets.found_ready()
            || self.sockets.peers.pending_output()
            || now.duration_since(self.sockets_looked.get()) >= MOVE_SOCKETS_EVERY;
        if !look {
            return Ok(near);
        }
        self.sockets_looked.set(now);
        let wait = if waiting { Wait::Once } else { Wait::No };
        let far = self.sockets.progress(deliver, wait, &|_| {})?;
        Ok(near || far)
    }

    /// Writes what it can and reads what has arrived on both; with
    /// [`Wait::Until`] and nothing to do, polls and then sleeps until
    /// either wakes it or the deadline passes.
    pub fn progress(&mut self, deliver: &mut Delivery<'_>, wait: Wait, sleeping: &Sleeping<'_>) -> Result<bool> {
        let deadline = match wait {
            Wait::No => return self.move_bytes(deliver, false),
            Wait::Once => return self.move_bytes(deliver, true),
            Wait::Until(d) => d,
        };
        loop {
            if self.move_bytes(deliver, true)? {
                return Ok(true);
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Ok(false);
            }
            self.idle(deliver, deadline, sleeping)?;
        }
    }

    /// Waits without moving bytes: polls, then sleeps in `poll`.
    fn idle(&mut self, deliver: &Delivery<'_>, deadline: Option<Instant>, sleeping: &Sleeping<'_>) -> Result<()> {
        if self.poll_for_work(&|| false) {
            return Ok(());
        }
        let Some(mut fds) = self.prepare_sleep(deliver, &|| false)? else {
            return Ok(());
        };
        sleeping(deliver);
        let result = poll_descriptors(&mut fds, deadline.map(|d| d.saturating_duration_since(Instant::now())));
        self.end_sleep();
        result
    }

    /// Polls both, as the wait mode says, until something is ready or
    /// `woken` says so (true), or the time to poll is up (false).
    pub fn poll_for_work(&self, woken: &dyn Fn() -> bool) -> bool {
        let ready = || self.shm.anything_ready() || woken();
        if self.sockets.peers.list.iter().flatten().any(|p| p.is_open()) {
            let every = if self.alone_on_node() {
                Duration::ZERO
            } else {
                POLL_SOCKETS_EVERY
            };
            self.sockets.poll_for_work_every(&ready, every)
        } else {
            self.shm.poll_for_work(woken)
        }
    }

    /// Gets ready to sleep without the engine held: the sockets to watch
    /// and this rank's wake-up socket, which its node peers now ring; or
    /// `None` if there is work after all.
    pub fn prepare_sleep(
        &mut self,
        deliver: &Delivery<'_>,
        ready: &dyn Fn() -> bool,
    ) -> Result<Option<Vec<libc::pollfd>>> {
        let Some(mut fds) = self.sockets.prepare_sleep(deliver)? else {
            return Ok(None);
        };
        let Some(wake) = self.shm.prepare_poll_sleep(ready) else {
            return Ok(None);
        };
        fds.push(libc::pollfd {
            fd: wake,
            events: libc::POLLIN,
            revents: 0,
        });
        Ok(Some(fds))
    }

    /// The last of the rank's sleeping threads woke.
    pub fn end_sleep(&self) {
        self.shm.end_poll_sleep();
    }

    /// Flushes everything and says Bye on both, moving both all the while
    /// (a node peer may wait for this rank's TCP message before it makes
    /// room for the rest); then each takes its own read-on and last look.
    pub fn finish(&mut self, deliver: &mut Delivery<'_>, sleeping: &Sleeping<'_>) -> Result<()> {
        self.shm.peers.queue_byes();
        self.sockets.peers.queue_byes();
        let mut result = Ok(());
        while self.shm.peers.pending_output() || self.sockets.peers.pending_output() {
            match self.move_bytes(deliver, true) {
                Ok(true) => continue,
                Ok(false) => {}
                Err(e) => result = result.and(Err(e)),
            }
            if let Err(e) = self.idle(deliver, None, sleeping) {
                result = result.and(Err(e));
                break;
            }
        }
        let near = self.shm.finish(deliver, sleeping);
        let far = self.sockets.finish(deliver, sleeping);
        result.and(near).and(far)
    }
}
