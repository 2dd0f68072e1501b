//! The collective algorithms over point-to-point messages, written once for
//! any value type through a [`Codec`]: dissemination barrier, binomial-tree
//! broadcast and reduce, recursive-doubling allreduce and scan, linear
//! scatter/gather, and pairwise all-to-all.
//!
//! Every message travels in the collective context with a tag made of the
//! step and the round, so collectives never match user receives and rounds
//! never match each other, and with its call's number and signature (see
//! [`super::call`]), so that a message of another call is recognised.

use crate::communicator::Communicator;
use crate::envelope::Envelope;
use crate::error::{Error, Result};
use crate::progress::Sent;

use super::call::Call;

mod codec;
mod reduce;

use codec::empty;
#[cfg(feature = "mpi")]
pub(crate) use codec::types_differ;
pub(crate) use codec::{
    Body, Codec, Combine, PodCodec, RawCodec, SerdeCodec, decode_part, own_envelope, part_mismatch,
};

/// Which step of an algorithm a message belongs to (the high byte of its
/// tag).
#[derive(Debug, Clone, Copy)]
#[repr(u32)]
pub(crate) enum Step {
    Barrier = 1,
    Broadcast = 2,
    Reduce = 3,
    Allreduce = 4,
    Scan = 5,
    Gather = 6,
    Scatter = 7,
    Alltoall = 8,
    Ring = 9,
    /// The agreement on lengths that starts a large collective.
    Agree = 10,
    /// A root saying it is the root (see [`Communicator::announce_root`]).
    Announce = 11,
}

pub(crate) fn tag(step: Step, round: u32) -> u32 {
    ((step as u32) << 24) | (round & 0x00ff_ffff)
}

/// The ranks an algorithm runs among: every rank of the communicator, or
/// some of them in ascending order (one level of a job across hosts: see
/// `levels.rs`), numbered `0..n` by their place in the list.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Among<'a> {
    /// The members' ranks in the communicator; `None` for all of them.
    ranks: Option<&'a [usize]>,
    /// How many members there are.
    pub n: usize,
    /// This rank's number among them.
    pub me: usize,
}

impl<'a> Among<'a> {
    /// Every rank of `comm`.
    pub fn all(comm: &Communicator) -> Among<'static> {
        Among {
            ranks: None,
            n: comm.size(),
            me: comm.rank(),
        }
    }

    /// The ranks in `ranks` (ascending), this rank being `ranks[me]`.
    pub fn some(ranks: &'a [usize], me: usize) -> Among<'a> {
        Among {
            ranks: Some(ranks),
            n: ranks.len(),
            me,
        }
    }

    /// The communicator's rank of member `i`.
    pub fn rank(&self, i: usize) -> usize {
        self.ranks.map_or(i, |r| r[i])
    }
}

impl Communicator {
    fn coll_send(&self, call: &Call, dest: usize, tag: u32, body: Body) -> Result<Sent> {
        self.call_send(call, dest, tag, body)
    }

    fn coll_receive(&self, call: &Call, source: usize, tag: u32) -> Result<Envelope> {
        self.call_receive(call, source, tag)
    }

    fn wait_sends(&self, sends: Vec<(Sent, usize)>) -> Result<()> {
        let mut engine = self.engine()?;
        for (sent, dest) in sends {
            engine.wait_sent(sent, self.job_rank(dest))?;
        }
        Ok(())
    }

    /// Where the ranks share no memory, the root of a gather or a reduce
    /// tells the next rank that it is the root before it waits: ranks that
    /// disagree on the root then see a message of another signature instead
    /// of all waiting for messages that go elsewhere. (On a shared node,
    /// every rank's call is in shared memory, which does this already.)
    fn announce_root(&self, call: &Call, root: usize) -> Result<()> {
        let (n, r) = (self.size(), self.rank());
        if call.shares_node() || n < 2 {
            return Ok(());
        }
        let next = (root + 1) % n;
        let t = tag(Step::Announce, 0);
        if r == root {
            let sent = self.coll_send(call, next, t, empty())?;
            self.wait_sends(vec![(sent, next)])?;
        } else if r == next {
            self.coll_receive(call, root, t)?;
        }
        Ok(())
    }

    /// Dissemination barrier: ⌈log2 n⌉ rounds of empty messages (or, across
    /// nodes, in two levels).
    pub(crate) fn barrier_messages(&self, call: &Call) -> Result<()> {
        if let Some(done) = self.barrier_by_levels(call) {
            return done;
        }
        let (n, r) = (self.size(), self.rank());
        let mut distance = 1;
        let mut round = 0;
        while distance < n {
            let sent = self.coll_send(call, (r + distance) % n, tag(Step::Barrier, round), empty())?;
            self.coll_receive(call, (r + n - distance) % n, tag(Step::Barrier, round))?;
            self.wait_sends(vec![(sent, (r + distance) % n)])?;
            distance *= 2;
            round += 1;
        }
        Ok(())
    }

    /// Binomial-tree broadcast of a body from `root`; every rank returns it.
    pub(crate) fn broadcast_body(&self, call: &Call, body: Option<Body>, root: usize) -> Result<Body> {
        self.check_rank(root)?;
        self.broadcast_among(call, Among::all(self), body, root)
    }

    /// [`Communicator::broadcast_body`] among some ranks, from member
    /// `root`.
    pub(crate) fn broadcast_among(
        &self,
        call: &Call,
        among: Among<'_>,
        body: Option<Body>,
        root: usize,
    ) -> Result<Body> {
        let (n, r) = (among.n, among.me);
        let vr = (r + n - root) % n;
        let mut body = body;
        let mut mask = 1;
        while mask < n {
            if vr & mask != 0 {
                let env = self.coll_receive(call, among.rank((vr - mask + root) % n), tag(Step::Broadcast, 0))?;
                let mut env = env;
                body = Some((env.format, std::mem::take(&mut env.payload)));
                break;
            }
            mask <<= 1;
        }
        let Some(body) = body else {
            return Err(Error::InvalidArgument(format!("broadcast: root {root} gave no value")));
        };
        let mut sends = Vec::new();
        mask >>= 1;
        while mask > 0 {
            if vr + mask < n {
                let child = among.rank((vr + mask + root) % n);
                sends.push((
                    self.coll_send(call, child, tag(Step::Broadcast, 0), body.clone())?,
                    child,
                ));
            }
            mask >>= 1;
        }
        self.wait_sends(sends)?;
        Ok(body)
    }

    /// Every rank's body, in rank order, on `root`.
    pub(crate) fn gather_bodies(&self, call: &Call, body: Body, root: usize) -> Result<Option<Vec<Envelope>>> {
        self.check_rank(root)?;
        self.announce_root(call, root)?;
        let r = self.rank();
        if r != root {
            let sent = self.coll_send(call, root, tag(Step::Gather, 0), body)?;
            self.wait_sends(vec![(sent, root)])?;
            return Ok(None);
        }
        let mut own = Some(body);
        let mut out = Vec::with_capacity(self.size());
        for source in 0..self.size() {
            if source == r {
                out.push(own_envelope(r, own.take().unwrap_or(empty())));
            } else {
                out.push(self.coll_receive(call, source, tag(Step::Gather, 0))?);
            }
        }
        Ok(Some(out))
    }

    /// Root sends `bodies[i]` to rank `i`; every rank returns its own.
    pub(crate) fn scatter_bodies(&self, call: &Call, bodies: Option<Vec<Body>>, root: usize) -> Result<Envelope> {
        self.check_rank(root)?;
        let r = self.rank();
        if r != root {
            return self.coll_receive(call, root, tag(Step::Scatter, 0));
        }
        let Some(bodies) = bodies.filter(|b| b.len() == self.size()) else {
            return Err(Error::InvalidArgument(format!(
                "scatter: the root must give exactly one value per rank ({})",
                self.size()
            )));
        };
        let mut sends = Vec::new();
        let mut own = None;
        for (dest, body) in bodies.into_iter().enumerate() {
            if dest == r {
                own = Some(body);
            } else {
                sends.push((self.coll_send(call, dest, tag(Step::Scatter, 0), body)?, dest));
            }
        }
        self.wait_sends(sends)?;
        Ok(own_envelope(r, own.unwrap_or(empty())))
    }

    /// Rank `i` gets `bodies[i]` from every rank, in rank order.
    pub(crate) fn alltoall_bodies(&self, call: &Call, bodies: Vec<Body>) -> Result<Vec<Envelope>> {
        let (n, r) = (self.size(), self.rank());
        if bodies.len() != n {
            return Err(Error::InvalidArgument(format!(
                "alltoall: gave {} values, but there must be one per rank ({n})",
                bodies.len()
            )));
        }
        let mut bodies: Vec<Option<Body>> = bodies.into_iter().map(Some).collect();
        let mut sends = Vec::new();
        for i in 1..n {
            let dest = (r + i) % n;
            if let Some(body) = bodies[dest].take() {
                sends.push((self.coll_send(call, dest, tag(Step::Alltoall, 0), body)?, dest));
            }
        }
        let mut out = Vec::with_capacity(n);
        for source in 0..n {
            if source == r {
                out.push(own_envelope(r, bodies[r].take().unwrap_or(empty())));
            } else {
                out.push(self.coll_receive(call, source, tag(Step::Alltoall, 0))?);
            }
        }
        self.wait_sends(sends)?;
        Ok(out)
    }
}
