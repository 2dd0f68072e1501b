//! The pacing barrier. In a collective where some ranks only send (the
//! root of a broadcast or scatter, the other ranks of a reduce or gather,
//! rank 0 of a scan) those ranks may run ahead, and a rank that lags pays
//! for it: each of its waits looks through the messages of later calls
//! queued for it, and call numbers of 16 bits wrap, so that a lead of
//! 32,768 calls reads as a message of an earlier call. So such a call
//! numbered [`PACE_EVERY`] or more after the ranks were last in step on
//! its communicator ends with a barrier: a blocking one waits for it, an
//! immediate one (`immediate_broadcast`) adds its rounds to its schedule.
//! A rank that waits on its requests is then never more than that many
//! calls ahead of another.

use super::{Call, Kind};
use crate::collective::node::NodeStep;
use crate::communicator::Communicator;
use crate::error::Result;

/// How many calls a rank may run ahead of another. A loop of 30,000
/// serde broadcasts on 2 ranks took 2.6-3.9 s with no barrier (the lagging
/// rank looked through thousands of queued messages at each call),
/// 0.24-0.31 s with one every 4096 calls, and 16-26 ms with one every 64;
/// on 32 ranks 64 was the best of 16 to 1024 as well.
pub(crate) const PACE_EVERY: u16 = 64;

const _: () = assert!(
    PACE_EVERY < 0x4000,
    "a rank's lead must stay well within half the numbers"
);

impl Communicator {
    /// Whether call `number`, of `kind`, must end with a barrier: it must
    /// if [`PACE_EVERY`] calls or more have been numbered since the last
    /// one that kept the ranks in step, which is one that ended with this
    /// barrier, one of a kind that [keeps them in step](Kind::keeps_in_step),
    /// or one that took a node-wide step (`in_step`), which waits for every
    /// rank. Every rank makes the same calls, by the same paths, so every
    /// rank comes to the same answer.
    pub(crate) fn pace_due(&self, number: u16, kind: Kind, in_step: bool) -> bool {
        let calls = self.calls();
        let in_step = in_step || kind.keeps_in_step();
        if !in_step && number.wrapping_sub(calls.paced.get()) < PACE_EVERY {
            return false;
        }
        calls.paced.set(number);
        !in_step
    }

    /// Ends the blocking `call` with a barrier if it is due; this rank had
    /// taken `steps` node-wide steps before the call.
    pub(crate) fn keep_pace(&self, call: &Call, kind: Kind, steps: u32) -> Result<()> {
        if !self.pace_due(call.number, kind, self.node_steps() != steps) {
            return Ok(());
        }
        self.barrier_in(call, NodeStep::Pace)
    }
}
