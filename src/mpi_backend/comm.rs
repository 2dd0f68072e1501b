//! One communicator of the MPI backend: an MPI communicator for the user's
//! messages and MPI's collectives, a private duplicate for the bodies of
//! large messages, and the messages taken out of MPI before their receive.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::os::raw::c_int;

use mpi::ffi;

use super::held::{Held, Pulled};
use super::{check, check_open, finalized};
use crate::error::{Error, Result};

/// An MPI communicator handle (a pointer in Open MPI, an int in MPICH).
#[derive(Debug, Clone, Copy)]
pub(super) struct Handle(pub ffi::MPI_Comm);

// SAFETY: MPI handles may be used from any thread under
// MPI_THREAD_MULTIPLE, which `start` requires.
unsafe impl Send for Handle {}

/// One communicator of the MPI backend.
#[derive(Debug)]
pub(crate) struct MpiComm {
    /// The user's messages and MPI's collectives.
    pub(super) comm: Handle,
    /// The bodies of large messages (so that no user receive, whatever its
    /// wildcards, matches one).
    pub(super) private: Handle,
    pub(crate) rank: usize,
    pub(crate) size: usize,
    /// Messages taken out of MPI that no receive has taken yet (by a probe,
    /// or put back by a receive of the wrong type), oldest first.
    pub(super) held: RefCell<VecDeque<Held>>,
    /// How many messages this rank has sent to each rank: the next one's
    /// place in order (`held.rs`).
    pub(super) sent: RefCell<Vec<u64>>,
    /// Which messages from each rank have come out of MPI (`held.rs`).
    pub(super) pulled: RefCell<Vec<Pulled>>,
    /// The tag of this rank's next large-message body.
    pub(super) next_body: Cell<u32>,
    /// The tag of the next `immediate_` collective's messages: every rank
    /// starts them in the same order, so they agree on it.
    pub(super) next_immediate: Cell<u32>,
    /// A barrier of `barrier_timeout` that timed out: still posted (MPI
    /// cannot cancel a collective), it is the one the next `barrier` or
    /// `barrier_timeout` goes on waiting for.
    pub(super) pending_barrier: Cell<Option<PendingBarrier>>,
}

/// The request of a barrier still posted.
#[derive(Debug, Clone, Copy)]
pub(super) struct PendingBarrier(pub ffi::MPI_Request);

// SAFETY: as for `Handle`: a request handle, used under
// MPI_THREAD_MULTIPLE by the one thread that has the communicator.
unsafe impl Send for PendingBarrier {}

impl MpiComm {
    /// Takes `comm` (a new communicator this rank owns) and makes its
    /// private duplicate.
    fn adopt(comm: ffi::MPI_Comm) -> Result<MpiComm> {
        let mut private = unsafe { ffi::RSMPI_COMM_NULL };
        // SAFETY: `comm` is a valid communicator of this rank.
        check(unsafe { ffi::MPI_Comm_dup(comm, &mut private) }, "MPI_Comm_dup")?;
        let (mut rank, mut size): (c_int, c_int) = (0, 0);
        // SAFETY: as above.
        unsafe {
            ffi::MPI_Comm_rank(comm, &mut rank);
            ffi::MPI_Comm_size(comm, &mut size);
        }
        Ok(MpiComm {
            comm: Handle(comm),
            private: Handle(private),
            rank: rank as usize,
            size: size as usize,
            held: RefCell::new(VecDeque::new()),
            sent: RefCell::new(vec![0; size as usize]),
            pulled: RefCell::new((0..size).map(|_| Pulled::default()).collect()),
            next_body: Cell::new(0),
            next_immediate: Cell::new(0),
            pending_barrier: Cell::new(None),
        })
    }

    /// A communicator of the same ranks as `parent` with a matching space
    /// of its own (`MPI_Comm_dup`).
    pub(crate) fn duplicate(parent: ffi::MPI_Comm) -> Result<MpiComm> {
        check_open()?;
        let mut comm = unsafe { ffi::RSMPI_COMM_NULL };
        // SAFETY: `parent` is a valid communicator; every member calls this.
        check(unsafe { ffi::MPI_Comm_dup(parent, &mut comm) }, "MPI_Comm_dup")?;
        MpiComm::adopt(comm)
    }

    /// [`MpiComm::duplicate`] of this communicator.
    pub(crate) fn dup(&self) -> Result<MpiComm> {
        MpiComm::duplicate(self.comm.0)
    }

    /// `MPI_Comm_split` by `color` (`None`: no communicator), ordered by
    /// `key` and then by rank here. Keys are 64-bit, MPI's are `int`: the
    /// members agree on every rank's place first.
    pub(crate) fn split(&self, color: Option<u32>, key: i64) -> Result<Option<MpiComm>> {
        check_open()?;
        let mine = [color.map_or(-1, i64::from), key];
        let mut all = vec![0i64; 2 * self.size];
        self.allgather_words(&mine, &mut all)?;
        let place = all
            .chunks(2)
            .enumerate()
            .filter(|(_, w)| w[0] == mine[0])
            .filter(|(r, w)| (w[1], *r) < (key, self.rank))
            .count();
        // MPI's colors are non-negative ints: every rank sees every color.
        if let Some(w) = all.chunks(2).find(|w| w[0] > i64::from(c_int::MAX)) {
            return Err(Error::InvalidArgument(format!(
                "split: color {} is above {} (the MPI backend's colors are non-negative ints)",
                w[0],
                c_int::MAX
            )));
        }
        // SAFETY: a constant of MPI's.
        let undefined = unsafe { ffi::RSMPI_UNDEFINED } as c_int;
        let color = color.map_or(undefined, |c| c as c_int);
        let mut comm = unsafe { ffi::RSMPI_COMM_NULL };
        // SAFETY: a valid communicator; every member calls this.
        check(
            unsafe { ffi::MPI_Comm_split(self.comm.0, color, place as c_int, &mut comm) },
            "MPI_Comm_split",
        )?;
        self.adopt_or_none(comm)
    }

    /// The ranks of this communicator on this node (`MPI_Comm_split_type`
    /// with `MPI_COMM_TYPE_SHARED`), in their order here.
    pub(crate) fn split_by_node(&self) -> Result<MpiComm> {
        check_open()?;
        let mut comm = unsafe { ffi::RSMPI_COMM_NULL };
        // SAFETY: a valid communicator; every member calls this.
        check(
            unsafe {
                ffi::MPI_Comm_split_type(
                    self.comm.0,
                    ffi::RSMPI_COMM_TYPE_SHARED as c_int,
                    self.rank as c_int,
                    ffi::RSMPI_INFO_NULL,
                    &mut comm,
                )
            },
            "MPI_Comm_split_type",
        )?;
        MpiComm::adopt(comm)
    }

    /// A communicator of the listed ranks, in that order (`MPI_Comm_create`);
    /// `problem` says what is wrong with the list, if anything (the same on
    /// every rank that has the same list).
    pub(crate) fn subset(&self, ranks: &[usize], problem: Option<String>) -> Result<Option<MpiComm>> {
        check_open()?;
        // Every member must pass the same list: compare a digest of it.
        let digest = ranks.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &r| {
            (h ^ r as u64).wrapping_mul(0x100_0000_01b3)
        }) ^ ranks.len() as u64;
        let words = [digest, !digest];
        let mut most = [0u64; 2];
        self.allreduce_max(&words, &mut most)?;
        if most != words {
            return Err(Error::InvalidArgument(
                "subset: the ranks listed different ranks: every rank must pass the same list".into(),
            ));
        }
        if let Some(problem) = problem {
            return Err(Error::InvalidArgument(problem));
        }
        let list: Vec<c_int> = ranks.iter().map(|&r| r as c_int).collect();
        let mut whole = unsafe { ffi::RSMPI_GROUP_NULL };
        let mut part = unsafe { ffi::RSMPI_GROUP_NULL };
        let mut comm = unsafe { ffi::RSMPI_COMM_NULL };
        // SAFETY: valid communicator and groups; ranks checked above; every
        // member calls MPI_Comm_create with the same group.
        unsafe {
            check(ffi::MPI_Comm_group(self.comm.0, &mut whole), "MPI_Comm_group")?;
            check(
                ffi::MPI_Group_incl(whole, list.len() as c_int, list.as_ptr(), &mut part),
                "MPI_Group_incl",
            )?;
            let created = check(ffi::MPI_Comm_create(self.comm.0, part, &mut comm), "MPI_Comm_create");
            ffi::MPI_Group_free(&mut part);
            ffi::MPI_Group_free(&mut whole);
            created?;
        }
        self.adopt_or_none(comm)
    }

    fn adopt_or_none(&self, comm: ffi::MPI_Comm) -> Result<Option<MpiComm>> {
        if comm == unsafe { ffi::RSMPI_COMM_NULL } {
            Ok(None)
        } else {
            MpiComm::adopt(comm).map(Some)
        }
    }

    /// The rank in `other` of this communicator's rank `rank`
    /// (`MPI_Group_translate_ranks`).
    pub(crate) fn translate_rank(&self, rank: usize, other: &MpiComm) -> Result<Option<usize>> {
        check_open()?;
        let mut mine = unsafe { ffi::RSMPI_GROUP_NULL };
        let mut theirs = unsafe { ffi::RSMPI_GROUP_NULL };
        let from = rank as c_int;
        let mut to: c_int = 0;
        // SAFETY: valid communicators; `rank` is below this size (checked
        // by the caller).
        unsafe {
            check(ffi::MPI_Comm_group(self.comm.0, &mut mine), "MPI_Comm_group")?;
            check(ffi::MPI_Comm_group(other.comm.0, &mut theirs), "MPI_Comm_group")?;
            let done = check(
                ffi::MPI_Group_translate_ranks(mine, 1, &from, theirs, &mut to),
                "MPI_Group_translate_ranks",
            );
            ffi::MPI_Group_free(&mut mine);
            ffi::MPI_Group_free(&mut theirs);
            done?;
        }
        Ok((to >= 0).then_some(to as usize))
    }

    /// This rank's place among the ranks of its node: local rank, local
    /// size, and the index of the node (numbered by their lowest rank).
    pub(crate) fn node_place(&self) -> Result<(usize, usize, usize)> {
        let node = self.split_by_node()?;
        let leader = node.rank == 0;
        let leaders = self.split(leader.then_some(0), self.rank as i64)?;
        let mut index = [leaders.as_ref().map_or(0, |l| l.rank as u64)];
        node.broadcast_words(&mut index, 0)?;
        Ok((node.rank, node.size, index[0] as usize))
    }

    /// The next tag for a large message's body on the private communicator
    /// (the receiver matches it with the sender's rank, so it only needs to
    /// differ from this rank's bodies still in flight): the lower half of
    /// the tags.
    pub(super) fn body_tag(&self) -> u32 {
        let tag = self.next_body.get();
        self.next_body.set((tag + 1) & HALF_TAGS);
        tag
    }

    /// The tag of a new `immediate_` collective's messages on the private
    /// communicator: the upper half of the tags.
    pub(super) fn immediate_tag(&self) -> c_int {
        let seq = self.next_immediate.get();
        self.next_immediate.set((seq + 1) & HALF_TAGS);
        (seq | (HALF_TAGS + 1)) as c_int
    }
}

/// The tags below the middle of spmd's range (`MAX_TAG` is `2^k - 1`).
const HALF_TAGS: u32 = crate::selector::MAX_TAG >> 1;

impl Drop for MpiComm {
    fn drop(&mut self) {
        // After MPI_Finalize the handles are gone with MPI.
        if finalized() {
            return;
        }
        // The chains of leaked immediate collectives on it end first.
        super::live::finish_on(&[self.comm.0, self.private.0]);
        // SAFETY: both are communicators this rank owns, freed once.
        unsafe {
            ffi::MPI_Comm_free(&mut self.private.0);
            ffi::MPI_Comm_free(&mut self.comm.0);
        }
    }
}
