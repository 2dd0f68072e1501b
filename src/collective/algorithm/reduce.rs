//! The reductions of the collective algorithms: binomial-tree reduce, recursive-doubling allreduce, and scan.

use crate::communicator::Communicator;
use crate::error::Result;

use super::{Among, Codec, Combine, Step, tag};
use crate::collective::call::Call;

impl Communicator {
    /// Reduction to `root`; `Some` on the root only. With `in_rank_order`
    /// (an operator that may not commute), values combine in rank order
    /// 0, 1, ... whatever the root: a tree to rank 0, then one hop to the
    /// root; otherwise a tree rooted at `root`.
    pub(crate) fn reduce_value<T>(
        &self,
        call: &Call,
        codec: &dyn Codec<T>,
        value: T,
        combine: &Combine<'_, T>,
        root: usize,
        in_rank_order: bool,
    ) -> Result<Option<T>> {
        self.check_rank(root)?;
        self.announce_root(call, root)?;
        let all = Among::all(self);
        if !in_rank_order || root == 0 {
            return self.reduce_tree(call, all, codec, value, combine, root);
        }
        let at_zero = self.reduce_tree(call, all, codec, value, combine, 0)?;
        let hop = tag(Step::Reduce, 1);
        if let Some(result) = at_zero {
            let sent = self.coll_send(call, root, hop, codec.encode(&result)?)?;
            self.wait_sends(vec![(sent, root)])?;
            return Ok(None);
        }
        if self.rank() == root {
            return codec.decode_owned(self.coll_receive(call, 0, hop)?).map(Some);
        }
        Ok(None)
    }

    /// Binomial-tree reduction among some ranks to member `root`,
    /// combining in member order from the root; `Some` on the root only.
    pub(crate) fn reduce_tree<T>(
        &self,
        call: &Call,
        among: Among<'_>,
        codec: &dyn Codec<T>,
        value: T,
        combine: &Combine<'_, T>,
        root: usize,
    ) -> Result<Option<T>> {
        let (n, r) = (among.n, among.me);
        let vr = (r + n - root) % n;
        let mut acc = value;
        let mut mask = 1;
        while mask < n {
            if vr & mask == 0 {
                let child = vr | mask;
                if child < n {
                    let env = self.coll_receive(call, among.rank((child + root) % n), tag(Step::Reduce, 0))?;
                    acc = combine(acc, codec.decode_owned(env)?)?;
                }
            } else {
                let parent = among.rank(((vr & !mask) + root) % n);
                let sent = self.coll_send(call, parent, tag(Step::Reduce, 0), codec.encode(&acc)?)?;
                self.wait_sends(vec![(sent, parent)])?;
                return Ok(None);
            }
            mask <<= 1;
        }
        Ok(Some(acc))
    }

    /// Recursive-doubling allreduce. Ranks beyond the largest power of two
    /// first fold into a partner. Both partners of a round combine the same
    /// two values in the same order, so every rank ends with identical bits.
    ///
    /// Across nodes that share memory within, in two levels (see
    /// `levels.rs`) when `commutes` or the nodes hold blocks of ranks in
    /// order.
    pub(crate) fn allreduce_value<T>(
        &self,
        call: &Call,
        step: Step,
        codec: &dyn Codec<T>,
        value: T,
        combine: &Combine<'_, T>,
        commutes: bool,
    ) -> Result<T> {
        if let Some(levels) = self.levels_for(commutes) {
            return self.allreduce_in_levels(call, levels, step, codec, value, combine);
        }
        self.allreduce_among(call, Among::all(self), step, codec, value, combine)
    }

    /// [`Communicator::allreduce_value`] among some ranks.
    pub(crate) fn allreduce_among<T>(
        &self,
        call: &Call,
        among: Among<'_>,
        step: Step,
        codec: &dyn Codec<T>,
        value: T,
        combine: &Combine<'_, T>,
    ) -> Result<T> {
        let (n, r) = (among.n, among.me);
        let pof2 = if n.is_power_of_two() {
            n
        } else {
            n.next_power_of_two() / 2
        };
        let extra = n - pof2;
        let t = |round| tag(step, round);
        let mut acc = value;
        // Fold: among the first 2*extra ranks, even ones hand their value to
        // the next odd one and wait for the result.
        let virtual_rank = if r < 2 * extra {
            if r % 2 == 0 {
                let next = among.rank(r + 1);
                let sent = self.coll_send(call, next, t(0), codec.encode(&acc)?)?;
                self.wait_sends(vec![(sent, next)])?;
                let env = self.coll_receive(call, next, t(0xff_ffff))?;
                return codec.decode_owned(env);
            }
            let env = self.coll_receive(call, among.rank(r - 1), t(0))?;
            acc = combine(codec.decode_owned(env)?, acc)?;
            r / 2
        } else {
            r - extra
        };
        let real = |v: usize| if v < extra { 2 * v + 1 } else { v + extra };
        let mut mask = 1;
        let mut round = 1;
        while mask < pof2 {
            let partner = real(virtual_rank ^ mask);
            let to = among.rank(partner);
            let sent = self.coll_send(call, to, t(round), codec.encode(&acc)?)?;
            let other = codec.decode_owned(self.coll_receive(call, to, t(round))?)?;
            acc = if partner < r {
                combine(other, acc)?
            } else {
                combine(acc, other)?
            };
            self.wait_sends(vec![(sent, to)])?;
            mask <<= 1;
            round += 1;
        }
        if r < 2 * extra {
            let before = among.rank(r - 1);
            let sent = self.coll_send(call, before, t(0xff_ffff), codec.encode(&acc)?)?;
            self.wait_sends(vec![(sent, before)])?;
        }
        Ok(acc)
    }

    /// Inclusive prefix reduction by recursive doubling (Hillis–Steele).
    pub(crate) fn scan_value<T>(
        &self,
        call: &Call,
        codec: &dyn Codec<T>,
        value: T,
        combine: &Combine<'_, T>,
    ) -> Result<T> {
        let (n, r) = (self.size(), self.rank());
        let mut acc = value;
        let mut distance = 1;
        let mut round = 0;
        while distance < n {
            let mut sends = Vec::new();
            if r + distance < n {
                sends.push((
                    self.coll_send(call, r + distance, tag(Step::Scan, round), codec.encode(&acc)?)?,
                    r + distance,
                ));
            }
            if r >= distance {
                let env = self.coll_receive(call, r - distance, tag(Step::Scan, round))?;
                acc = combine(codec.decode_owned(env)?, acc)?;
            }
            self.wait_sends(sends)?;
            distance *= 2;
            round += 1;
        }
        Ok(acc)
    }
}
