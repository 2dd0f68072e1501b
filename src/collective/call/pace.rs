//! The pacing barrier. In a collective where some ranks only send (the
//! root of a broadcast or scatter, the other ranks of a reduce or gather,
//! rank 0 of a scan) those ranks may run ahead, and a rank that lags pays
//! for it: each of its waits looks through the messages of later calls
//! queued for it, and call numbers of 16 bits wrap, so that a lead of
//! 32,768 calls reads as a message of an earlier call. Every
//! [`PACE_EVERY`] calls on a communicator, a blocking collective therefore
//! ends with a barrier, and no rank is ever that many calls ahead.

use super::Call;
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
    /// Ends `call` with a barrier if [`PACE_EVERY`] calls or more have been
    /// numbered since the last call that kept the ranks in step: one that
    /// ended with this barrier, or that took a node-wide step (this rank
    /// had taken `steps` before it), which waits for every rank. Every rank
    /// makes the same calls, by the same paths, so every rank comes to the
    /// same answer.
    pub(crate) fn keep_pace(&self, call: &Call, steps: u32) -> Result<()> {
        let calls = self.calls();
        if self.node_steps() != steps {
            calls.paced.set(call.number);
            return Ok(());
        }
        if call.number.wrapping_sub(calls.paced.get()) < PACE_EVERY {
            return Ok(());
        }
        calls.paced.set(call.number);
        match self.node_step(call, NodeStep::Pace, 0, &[], &mut |_| Ok(Vec::new())) {
            Some(done) => done.map(|_| ()),
            None => self.barrier_messages(call),
        }
    }
}
