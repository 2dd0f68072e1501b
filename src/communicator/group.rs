//! The ranks of a communicator as ranks of the job, and the translation
//! both ways.

use std::sync::Arc;

/// The members of a communicator: rank `i` of the communicator is job rank
/// `job_rank(i)`.
#[derive(Debug, Clone)]
pub(crate) struct Group {
    size: usize,
    /// `None` for every rank of the job in job order (the world and its
    /// duplicates), where the translation is the identity.
    listed: Option<Arc<Listed>>,
}

#[derive(Debug)]
struct Listed {
    job_ranks: Vec<usize>,
    /// (job rank, rank in the group), sorted by job rank.
    by_job_rank: Vec<(usize, usize)>,
}

impl Group {
    /// Every rank of a job of `size` ranks, in job order.
    pub fn everyone(size: usize) -> Group {
        Group { size, listed: None }
    }

    /// The job ranks `job_ranks`, in that order (no rank twice), of a job
    /// of `job_size` ranks.
    pub fn listed(job_ranks: Vec<usize>, job_size: usize) -> Group {
        if job_ranks.len() == job_size && job_ranks.iter().enumerate().all(|(i, r)| i == *r) {
            return Group::everyone(job_size);
        }
        let mut by_job_rank: Vec<(usize, usize)> = job_ranks.iter().enumerate().map(|(i, r)| (*r, i)).collect();
        by_job_rank.sort_unstable();
        debug_assert!(by_job_rank.windows(2).all(|w| w[0].0 != w[1].0), "a rank twice");
        Group {
            size: job_ranks.len(),
            listed: Some(Arc::new(Listed { job_ranks, by_job_rank })),
        }
    }

    pub fn size(&self) -> usize {
        self.size
    }

    /// True if the group is every rank of the job in job order.
    pub fn is_everyone(&self) -> bool {
        self.listed.is_none()
    }

    /// The job rank of the group's rank `rank` (which is below `size()`).
    #[inline]
    pub fn job_rank(&self, rank: usize) -> usize {
        match &self.listed {
            None => rank,
            Some(l) => l.job_ranks[rank],
        }
    }

    /// The group's rank of job rank `job_rank`, if it is a member.
    #[inline]
    pub fn rank_of(&self, job_rank: usize) -> Option<usize> {
        match &self.listed {
            None => (job_rank < self.size).then_some(job_rank),
            Some(l) => l
                .by_job_rank
                .binary_search_by_key(&job_rank, |(j, _)| *j)
                .ok()
                .map(|at| l.by_job_rank[at].1),
        }
    }

    /// The job ranks of the members, in group order.
    pub fn job_ranks(&self) -> Vec<usize> {
        (0..self.size).map(|r| self.job_rank(r)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::Group;

    #[test]
    fn ranks_translate_both_ways() {
        let g = Group::listed(vec![5, 1, 3], 6);
        assert_eq!(g.size(), 3);
        assert_eq!(g.job_ranks(), vec![5, 1, 3]);
        assert_eq!((g.rank_of(5), g.rank_of(1), g.rank_of(3)), (Some(0), Some(1), Some(2)));
        assert_eq!((g.rank_of(0), g.rank_of(2), g.rank_of(9)), (None, None, None));
        let all = Group::listed(vec![0, 1, 2, 3], 4);
        assert!(all.is_everyone());
        assert!(!Group::listed(vec![0, 1, 2], 4).is_everyone());
        assert_eq!((all.job_rank(2), all.rank_of(3), all.rank_of(4)), (2, Some(3), None));
    }
}
