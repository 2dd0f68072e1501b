//! Making communicators from a communicator: `dup`, `split`,
//! `split_by_node`, `subset`, and the translation of ranks between two.
//!
//! Each is collective over the communicator it is called on, and is one
//! allgather of every member's arguments together with the context ids it
//! has free (see `ids.rs`): every member then computes the same groups and
//! the same id from the same data, with no central server. Arguments that
//! must agree and do not are the same error on every member.

use crate::error::{Error, Result};

use super::group::Group;
use super::ids::{self, MASK_WORDS};
use super::{Communicator, on_mpi};

/// The key of [`Communicator::split`] that keeps the order of the ranks in
/// the communicator split.
pub const KEEP_ORDER: i64 = 0;

impl Communicator {
    /// A communicator of the same ranks in the same order, with a matching
    /// space of its own: a message sent in one never matches a receive in
    /// the other, whatever the tags and wildcards (MPI's `MPI_Comm_dup`).
    /// A library takes one so that its messages never meet the program's.
    /// Every rank of `self` calls it.
    ///
    /// ```
    /// let world = spmd::init()?;
    /// let library = world.dup()?;
    /// assert_eq!((library.rank(), library.size()), (world.rank(), world.size()));
    /// # Ok::<(), spmd::Error>(())
    /// ```
    pub fn dup(&self) -> Result<Communicator> {
        on_mpi!(self, |m| Ok(self.made_on_mpi(m.dup()?)));
        let made = self.make(Constructor::Dup, &[], |_| Ok(Some(self.group().clone())))?;
        Ok(made.expect("every rank is a member of a duplicate"))
    }

    /// Splits this communicator into one communicator per `color` (MPI's
    /// `MPI_Comm_split`): the ranks that pass the same color get the same
    /// new communicator, ordered by `key` and, for equal keys, by their rank
    /// here. A rank that passes `None` takes part but gets no communicator
    /// (MPI's `MPI_UNDEFINED`). Every rank of `self` calls it.
    ///
    /// ```
    /// let world = spmd::init()?;
    /// // Even and odd ranks, each half in the world's order.
    /// let half = world.split(Some((world.rank() % 2) as u32), spmd::KEEP_ORDER)?.unwrap();
    /// assert_eq!(half.rank(), world.rank() / 2);
    /// # Ok::<(), spmd::Error>(())
    /// ```
    pub fn split(&self, color: Option<u32>, key: i64) -> Result<Option<Communicator>> {
        on_mpi!(self, |m| Ok(m.split(color, key)?.map(|c| self.made_on_mpi(c))));
        let mine = [color.map_or(0, |c| u64::from(c) + 1), key as u64];
        self.make(Constructor::Split, &mine, |all| {
            let mut members = Vec::new();
            for (rank, args) in all.iter().enumerate() {
                let [c, k] = args[..] else {
                    return Err(self.bad_words(rank, "split"));
                };
                if c == mine[0] {
                    members.push((k as i64, rank));
                }
            }
            if color.is_none() {
                return Ok(None);
            }
            members.sort_unstable();
            Ok(Some(self.subgroup(members.into_iter().map(|(_, rank)| rank))))
        })
    }

    /// The ranks of this communicator that share this rank's node, in
    /// their order here (MPI's `MPI_Comm_split_type` with
    /// `MPI_COMM_TYPE_SHARED`). Every rank of `self` calls it.
    ///
    /// ```
    /// let world = spmd::init()?;
    /// let node = world.split_by_node()?;
    /// assert_eq!(node.size(), world.local_size());
    /// # Ok::<(), spmd::Error>(())
    /// ```
    pub fn split_by_node(&self) -> Result<Communicator> {
        on_mpi!(self, |m| Ok(self.made_on_mpi(m.split_by_node()?)));
        let node = self.node() as u64;
        let made = self.make(Constructor::SplitByNode, &[node], |all| {
            let mut members = Vec::new();
            for (rank, args) in all.iter().enumerate() {
                let [n] = args[..] else {
                    return Err(self.bad_words(rank, "split_by_node"));
                };
                if n == node {
                    members.push(rank);
                }
            }
            Ok(Some(self.subgroup(members.into_iter())))
        })?;
        Ok(made.expect("every rank is a member of its node's communicator"))
    }

    /// A communicator of the listed ranks of this one, numbered in the
    /// order listed (MPI's `MPI_Comm_create` with a group of those ranks).
    /// Every rank of `self` calls it with the same list; the ranks not
    /// listed get `None`. A list that differs between ranks, names a rank
    /// twice or names one outside `0..size()` is an error on every rank.
    ///
    /// ```
    /// let world = spmd::init()?;
    /// let evens: Vec<usize> = (0..world.size()).step_by(2).collect();
    /// let comm = world.subset(&evens)?;
    /// assert_eq!(comm.is_some(), world.rank() % 2 == 0);
    /// # Ok::<(), spmd::Error>(())
    /// ```
    pub fn subset(&self, ranks: &[usize]) -> Result<Option<Communicator>> {
        on_mpi!(self, |m| {
            let problem = self.list_problem(ranks);
            let problem = (problem != 0).then(|| {
                format!(
                    "subset: rank {} listed {}",
                    self.rank(),
                    describe_problem(problem, self.size())
                )
            });
            Ok(m.subset(ranks, problem)?.map(|c| self.made_on_mpi(c)))
        });
        let problem = self.list_problem(ranks);
        let mine = [list_hash(ranks), ranks.len() as u64, problem];
        self.make(Constructor::Subset, &mine, |all| {
            for (rank, args) in all.iter().enumerate() {
                let [hash, len, problem] = args[..] else {
                    return Err(self.bad_words(rank, "subset"));
                };
                if problem != 0 {
                    return Err(Error::InvalidArgument(format!(
                        "subset: rank {rank} listed {}",
                        describe_problem(problem, self.size())
                    )));
                }
                if (hash, len) != (mine[0], mine[1]) {
                    return Err(Error::InvalidArgument(format!(
                        "subset: the ranks listed different ranks (rank {rank} a list of {len}, rank {} a list \
                         of {}): every rank must pass the same list",
                        self.rank(),
                        ranks.len()
                    )));
                }
            }
            if !ranks.contains(&self.rank()) {
                return Ok(None);
            }
            Ok(Some(self.subgroup(ranks.iter().copied())))
        })
    }

    /// The rank in `other` of this communicator's rank `rank`, or `None`
    /// if that rank is not a member of `other` (MPI's
    /// `MPI_Group_translate_ranks`).
    ///
    /// ```
    /// let world = spmd::init()?;
    /// let node = world.split_by_node()?;
    /// assert_eq!(node.translate_rank(node.rank(), &world)?, Some(world.rank()));
    /// # Ok::<(), spmd::Error>(())
    /// ```
    pub fn translate_rank(&self, rank: usize, other: &Communicator) -> Result<Option<usize>> {
        #[cfg(feature = "mpi")]
        if let (Some(mine), Some(theirs)) = (self.mpi_side(), other.mpi_side()) {
            self.check_rank(rank)?;
            return mine.translate_rank(rank, theirs);
        }
        let job_rank = self.peer(rank)?;
        Ok(other.group().rank_of(job_rank))
    }

    /// A communicator this one made on the MPI backend.
    #[cfg(feature = "mpi")]
    fn made_on_mpi(&self, comm: crate::mpi_backend::MpiComm) -> Communicator {
        Communicator::on_mpi(std::sync::Arc::clone(self.job()), comm)
    }

    /// The group of this communicator's ranks `ranks`, in that order.
    fn subgroup(&self, ranks: impl Iterator<Item = usize>) -> Group {
        Group::listed(ranks.map(|r| self.job_rank(r)).collect(), self.job_size())
    }

    /// What is wrong with a list of ranks for `subset`, as a word every
    /// rank can name: 0 if nothing, `1 + rank` for a rank out of range,
    /// `1 << 63 | rank` for a rank listed twice.
    fn list_problem(&self, ranks: &[usize]) -> u64 {
        let mut seen = vec![false; self.size()];
        for &r in ranks {
            match seen.get_mut(r) {
                None => return 1 + r as u64,
                Some(true) => return 1 << 63 | r as u64,
                Some(s) => *s = true,
            }
        }
        0
    }

    /// The error for a member whose words do not have the shape its call
    /// sends: it made another call, which the signature check should have
    /// caught.
    fn bad_words(&self, rank: usize, what: &str) -> Error {
        Error::CollectiveMismatch {
            detail: format!("rank {rank} sent other arguments than {what} sends: it made another call"),
        }
    }

    /// Makes a communicator: exchanges which constructor this is, where the
    /// window of ids starts, the ids of the window this rank has free, and
    /// `args` with every member; checks that every member made the same
    /// call; lets `members` choose this rank's group from every member's
    /// arguments (the same on every rank); and takes the first id every
    /// member has free.
    fn make(
        &self,
        what: Constructor,
        args: &[u64],
        members: impl Fn(&[&[u64]]) -> Result<Option<Group>>,
    ) -> Result<Option<Communicator>> {
        // Refused inside an operator before anything changes: the count of
        // communicators made stays the same on every rank.
        crate::progress::check_not_combining()?;
        let made = self.made.get();
        self.made.set(made.wrapping_add(1));
        const HEAD: usize = 2 + MASK_WORDS;
        for round in 0.. {
            let start = ids::window_start(self.id(), made, round);
            let mut mine = vec![what as u64, u64::from(start)];
            // Communicators made on other threads at once see the offered
            // ids as taken until this round is over, so that no two of
            // them take the same id (and none waits for another).
            let offer = Offer {
                comm: self,
                start,
                mask: self.job().ids().offer(start),
            };
            mine.extend_from_slice(&offer.mask);
            mine.extend_from_slice(args);
            let all = self.creation_allgather(&mine)?;
            let mut common = [!0u64; MASK_WORDS];
            let mut others = Vec::with_capacity(all.len());
            for (rank, words) in all.iter().enumerate() {
                if words.len() < HEAD {
                    return Err(self.bad_words(rank, "the making of a communicator"));
                }
                if words[0] != what as u64 {
                    return Err(Error::CollectiveMismatch {
                        detail: format!(
                            "rank {rank} called {} where rank {} called {}",
                            Constructor::name_of(words[0]),
                            self.rank(),
                            what.name()
                        ),
                    });
                }
                if words[1] != mine[1] {
                    return Err(Error::CollectiveMismatch {
                        detail: format!(
                            "rank {rank} and rank {} have made different numbers of communicators from this one",
                            self.rank()
                        ),
                    });
                }
                for (c, w) in common.iter_mut().zip(&words[2..HEAD]) {
                    *c &= w;
                }
                others.push(&words[HEAD..]);
            }
            let group = members(&others)?;
            let Some(id) = ids::first_free(start, &common) else {
                // Every id of this window is taken by some member: the
                // next window, on every rank alike.
                continue;
            };
            let Some(group) = group else {
                return Ok(None);
            };
            self.job().ids().take(id);
            let mut made = self
                .derived(group, id)
                .expect("a rank is a member of the group it chose for itself");
            made.share_pooled_region()?;
            return Ok(Some(made));
        }
        unreachable!("the rounds go on until a window has a free id")
    }
}

/// The ids of a window this rank offered in one round of an agreement,
/// reserved until the round is over.
struct Offer<'a> {
    comm: &'a Communicator,
    start: u32,
    mask: [u64; MASK_WORDS],
}

impl Drop for Offer<'_> {
    fn drop(&mut self) {
        self.comm.job().ids().withdraw(self.start, &self.mask);
    }
}

/// Which constructor a member called, as the first word it sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u64)]
enum Constructor {
    Dup = 1,
    Split = 2,
    SplitByNode = 3,
    Subset = 4,
}

impl Constructor {
    fn name(self) -> &'static str {
        match self {
            Constructor::Dup => "dup",
            Constructor::Split => "split",
            Constructor::SplitByNode => "split_by_node",
            Constructor::Subset => "subset",
        }
    }

    fn name_of(word: u64) -> &'static str {
        [
            Constructor::Dup,
            Constructor::Split,
            Constructor::SplitByNode,
            Constructor::Subset,
        ]
        .into_iter()
        .find(|c| *c as u64 == word)
        .map_or("an unknown constructor", Constructor::name)
    }
}

/// A hash of a list of ranks, to compare lists between ranks.
fn list_hash(ranks: &[usize]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &r in ranks {
        for b in (r as u64).to_le_bytes() {
            h = (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    h
}

/// Names what [`Communicator::list_problem`] found.
pub(crate) fn describe_problem(problem: u64, size: usize) -> String {
    if problem >> 63 == 1 {
        format!("rank {} twice", problem & !(1 << 63))
    } else {
        format!(
            "rank {}, which is not below the communicator's size {size}",
            problem - 1
        )
    }
}
