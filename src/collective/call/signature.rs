//! A collective call's signature (which collective, whether large, which root), and the errors that name one.

use crate::envelope::Envelope;
use crate::error::Error;

/// Which collective a call is, for its signature and for messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Kind {
    Barrier = 1,
    Broadcast,
    Scatter,
    Gather,
    Allgather,
    Reduce,
    Allreduce,
    Scan,
    Alltoall,
    BroadcastInto,
    ScatterInto,
    GatherInto,
    AllgatherInto,
    ReduceInto,
    AllreduceInto,
    ScanInto,
    AlltoallInto,
    /// The exchange that makes a new communicator (`dup`, `split`, ...).
    Create,
    ImmediateBarrier,
    ImmediateBroadcast,
    ImmediateBroadcastInto,
    ImmediateAllreduce,
    ImmediateAllreduceInto,
    GathervInto,
    ScattervInto,
    AllgathervInto,
    AlltoallvInto,
    Exscan,
}

const KINDS: [Kind; 28] = [
    Kind::Barrier,
    Kind::Broadcast,
    Kind::Scatter,
    Kind::Gather,
    Kind::Allgather,
    Kind::Reduce,
    Kind::Allreduce,
    Kind::Scan,
    Kind::Alltoall,
    Kind::BroadcastInto,
    Kind::ScatterInto,
    Kind::GatherInto,
    Kind::AllgatherInto,
    Kind::ReduceInto,
    Kind::AllreduceInto,
    Kind::ScanInto,
    Kind::AlltoallInto,
    Kind::Create,
    Kind::ImmediateBarrier,
    Kind::ImmediateBroadcast,
    Kind::ImmediateBroadcastInto,
    Kind::ImmediateAllreduce,
    Kind::ImmediateAllreduceInto,
    Kind::GathervInto,
    Kind::ScattervInto,
    Kind::AllgathervInto,
    Kind::AlltoallvInto,
    Kind::Exscan,
];

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Barrier => "barrier",
            Kind::Broadcast => "broadcast",
            Kind::Scatter => "scatter",
            Kind::Gather => "gather",
            Kind::Allgather => "allgather",
            Kind::Reduce => "reduce",
            Kind::Allreduce => "allreduce",
            Kind::Scan => "scan",
            Kind::Alltoall => "alltoall",
            Kind::BroadcastInto => "broadcast_into",
            Kind::ScatterInto => "scatter_into",
            Kind::GatherInto => "gather_into",
            Kind::AllgatherInto => "allgather_into",
            Kind::ReduceInto => "reduce_into",
            Kind::AllreduceInto => "allreduce_into",
            Kind::ScanInto => "scan_into",
            Kind::AlltoallInto => "alltoall_into",
            Kind::Create => "the making of a communicator (dup, split, split_by_node or subset)",
            Kind::ImmediateBarrier => "immediate_barrier",
            Kind::ImmediateBroadcast => "immediate_broadcast",
            Kind::ImmediateBroadcastInto => "immediate_broadcast_into",
            Kind::ImmediateAllreduce => "immediate_allreduce",
            Kind::ImmediateAllreduceInto => "immediate_allreduce_into",
            Kind::GathervInto => "gatherv_into",
            Kind::ScattervInto => "scatterv_into",
            Kind::AllgathervInto => "allgatherv_into",
            Kind::AlltoallvInto => "alltoallv_into",
            Kind::Exscan => "the exchange of exscan or exscan_into",
        }
    }

    /// True for the collectives whose algorithm depends on the length.
    fn sized(self) -> bool {
        (Kind::BroadcastInto as u8..=Kind::AlltoallInto as u8).contains(&(self as u8)) && self != Kind::ScanInto
    }

    /// True for the blocking collectives in which no rank finishes before
    /// every rank has started (each rank's result depends on every rank's
    /// part); in the others, some ranks only send and may run ahead (see
    /// `pace.rs`). No immediate one is: the rank that starts it has not
    /// waited for anyone yet.
    pub fn keeps_in_step(self) -> bool {
        matches!(
            self,
            Kind::Barrier
                | Kind::Allgather
                | Kind::Allreduce
                | Kind::Alltoall
                | Kind::AllgatherInto
                | Kind::AllreduceInto
                | Kind::AlltoallInto
                | Kind::Create
                | Kind::AllgathervInto
                | Kind::AlltoallvInto
        )
    }

    /// True for the collectives that have a root.
    fn rooted(self) -> bool {
        matches!(
            self,
            Kind::Broadcast
                | Kind::Scatter
                | Kind::Gather
                | Kind::Reduce
                | Kind::BroadcastInto
                | Kind::ScatterInto
                | Kind::GatherInto
                | Kind::ReduceInto
                | Kind::ImmediateBroadcast
                | Kind::ImmediateBroadcastInto
                | Kind::GathervInto
                | Kind::ScattervInto
        )
    }
}

/// A collective's signature: which one (5 bits), whether it moves more
/// than 4 KiB per rank (1 bit: the algorithms differ), and its root (the
/// low 10 bits).
pub(crate) fn signature(kind: Kind, root: usize, large: bool) -> u16 {
    let root = if kind.rooted() { root & 0x3ff } else { 0 };
    (kind as u16) << 11 | u16::from(large) << 10 | root as u16
}

/// Names a signature for messages: "broadcast_into of more than 4 KiB (root 3)".
pub(crate) fn describe(sig: u16) -> String {
    let code = (sig >> 11) as u8;
    let Some(kind) = KINDS.iter().find(|k| **k as u8 == code) else {
        return format!("an unknown collective ({code})");
    };
    let size = match (kind.sized(), sig & 0x400 != 0) {
        (false, _) => "",
        (true, true) => " of more than 4 KiB",
        (true, false) => " of at most 4 KiB",
    };
    let root = if kind.rooted() {
        format!(" (root {})", sig & 0x3ff)
    } else {
        String::new()
    };
    format!("{}{size}{root}", kind.name())
}

/// The error for rank `source`, which called collective `theirs` where
/// this rank called `ours`, both as call `number` of the communicator.
pub(crate) fn different(number: u16, source: usize, theirs: u16, ours: u16) -> Error {
    Error::CollectiveMismatch {
        detail: format!(
            "ranks called different collectives at collective call #{number}: rank {source} called {} where this \
             rank called {}",
            describe(theirs),
            describe(ours)
        ),
    }
}

/// The error another rank's notice of failure `env` tells of.
pub(crate) fn noticed(env: &Envelope) -> Error {
    Error::CollectiveFailed {
        rank: env.source,
        detail: format!(
            "in {}: {}",
            describe(env.call as u16),
            String::from_utf8_lossy(&env.payload)
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_name_the_collective_and_its_root() {
        assert_eq!(describe(signature(Kind::Barrier, 5, false)), "barrier");
        assert_eq!(describe(signature(Kind::Broadcast, 3, false)), "broadcast (root 3)");
        assert_eq!(
            describe(signature(Kind::BroadcastInto, 3, true)),
            "broadcast_into of more than 4 KiB (root 3)"
        );
        assert_ne!(
            signature(Kind::Broadcast, 0, false),
            signature(Kind::Broadcast, 1, false)
        );
        assert_ne!(signature(Kind::ReduceInto, 0, false), signature(Kind::Reduce, 0, false));
        assert_ne!(
            signature(Kind::ReduceInto, 0, false),
            signature(Kind::ReduceInto, 0, true)
        );
        assert_eq!(describe(0), "an unknown collective (0)");
        for k in KINDS {
            assert_ne!(signature(k, 0, false), 0, "{k:?}");
        }
    }
}
