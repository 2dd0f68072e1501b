//! The steps of each `immediate_` collective's schedule: whom each rank sends to, hears from and folds in, in order.

use crate::progress::Step;

/// The rank `v` positions after `root`, and back.
fn relative(rank: usize, root: usize, n: usize) -> usize {
    (rank + n - root) % n
}

/// A dissemination barrier: in round `k`, send to `me + 2^k` and hear
/// from `me - 2^k`.
pub(super) fn barrier_steps(me: usize, n: usize) -> Vec<Step> {
    let mut steps = Vec::new();
    let mut d = 1;
    while d < n {
        steps.push(Step::Send((me + d) % n));
        steps.push(Step::Take((me + n - d) % n));
        d *= 2;
    }
    steps
}

/// The barrier that ends an immediate collective now and then (see
/// `call/pace.rs`): [`barrier_steps`] of empty messages, which leave the
/// collective's value as it is.
pub(super) fn pace_steps(me: usize, n: usize) -> Vec<Step> {
    let signals = |s: Step| match s {
        Step::Send(r) => Step::Signal(r),
        Step::Take(r) => Step::Signaled(r),
        other => other,
    };
    barrier_steps(me, n).into_iter().map(signals).collect()
}

/// A binomial tree from `root`: hear from the parent, then send to the
/// children, farthest first.
pub(super) fn broadcast_steps(me: usize, n: usize, root: usize) -> Vec<Step> {
    let v = relative(me, root, n);
    let mut steps = Vec::new();
    let mut mask = 1;
    while mask < n {
        if v & mask != 0 {
            steps.push(Step::Take((v - mask + root) % n));
            break;
        }
        mask <<= 1;
    }
    mask >>= 1;
    while mask > 0 {
        if v + mask < n {
            steps.push(Step::Send((v + mask + root) % n));
        }
        mask >>= 1;
    }
    steps
}

/// A binomial tree to rank 0 in which rank `v` holds ranks
/// `v..v + mask` and folds in `v + mask..v + 2 mask`: rank order.
pub(super) fn reduce_steps(me: usize, n: usize) -> Vec<Step> {
    let mut steps = Vec::new();
    let mut mask = 1;
    while mask < n {
        if me & mask != 0 {
            steps.push(Step::Send(me - mask));
            break;
        }
        if me + mask < n {
            steps.push(Step::Fold(me + mask));
        }
        mask <<= 1;
    }
    steps
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every send of a plan has its receive on the other side, and every
    /// rank ends up having heard (directly or not) from every other.
    fn check_pairs(steps_of: impl Fn(usize, usize) -> Vec<Step>) {
        for n in 1..=17 {
            let mut sends = Vec::new();
            let mut receives = Vec::new();
            for me in 0..n {
                for s in steps_of(me, n) {
                    match s {
                        Step::Send(d) | Step::Signal(d) => sends.push((me, d)),
                        Step::Take(f) | Step::Fold(f) | Step::Signaled(f) => receives.push((f, me)),
                    }
                }
            }
            sends.sort();
            receives.sort();
            assert_eq!(sends, receives, "n = {n}");
        }
    }

    #[test]
    fn every_send_meets_its_receive() {
        check_pairs(barrier_steps);
        for root in 0..5 {
            check_pairs(|me, n| broadcast_steps(me, n, root % n));
        }
        check_pairs(|me, n| [reduce_steps(me, n), broadcast_steps(me, n, 0)].concat());
        check_pairs(pace_steps);
        check_pairs(|me, n| [broadcast_steps(me, n, 1 % n), pace_steps(me, n)].concat());
    }

    #[test]
    fn broadcast_reaches_every_rank_once() {
        for n in 1..=17 {
            for root in 0..n {
                let takes = (0..n)
                    .filter(|me| broadcast_steps(*me, n, root).iter().any(|s| matches!(s, Step::Take(_))))
                    .count();
                assert_eq!(takes, n - 1, "n = {n}, root = {root}");
            }
        }
    }

    #[test]
    fn reduce_folds_in_rank_order() {
        // Simulate: each rank's value is the list of ranks it covers.
        for n in 1..=17 {
            let mut held: Vec<Vec<usize>> = (0..n).map(|r| vec![r]).collect();
            let mut mask = 1;
            while mask < n {
                for me in (0..n).filter(|me| me % (2 * mask) == 0 && me + mask < n) {
                    assert!(reduce_steps(me, n).contains(&Step::Fold(me + mask)));
                    let upper = std::mem::take(&mut held[me + mask]);
                    held[me].extend(upper);
                }
                mask <<= 1;
            }
            assert_eq!(held[0], (0..n).collect::<Vec<_>>(), "n = {n}");
        }
    }
}
