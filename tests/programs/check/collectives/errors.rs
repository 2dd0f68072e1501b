//! Collectives in which one rank fails: it gets its error, every other rank hears of it, and none is left waiting.

use spmd::op;
use spmd::{Communicator, Error};

/// A rank whose receive buffer alone is wrong (allreduce_into of a few
/// bytes and of more than 4 KiB, the root's of reduce_into, scan_into)
/// gets an error, and so does every other rank: in the same call, or at
/// its next collective on the communicator, whose collectives are then
/// broken (each case on a duplicate). On MPI the others have their result
/// and the communicator goes on (README, "Running on a cluster").
pub(super) fn short_buffer(world: &Communicator) -> Result<(), Error> {
    let (me, n) = (world.rank(), world.size());
    if n < 2 {
        return Ok(());
    }
    let on_mpi = world.backend() == spmd::Backend::Mpi;
    for (what, len) in [
        ("allreduce_into", 4),
        ("allreduce_into", 1000),
        ("reduce_into", 4),
        ("reduce_into", 1000),
        ("scan_into", 4),
        ("scan_into", 1000),
    ] {
        let dup = world.dup()?;
        // Rank 1 is the bad one, and the root of the reduce.
        let send = vec![1i64; len];
        let mut recv = vec![0i64; if me == 1 { len - 1 } else { len }];
        let got = match what {
            "allreduce_into" => dup.allreduce_into(&send, &mut recv, &op::Sum),
            "reduce_into" => dup.reduce_into(&send, &mut recv, &op::Sum, 1),
            _ => dup.scan_into(&send, &mut recv, &op::Sum),
        };
        let then = dup.barrier();
        let case = format!("rank {me}: {what} of {len} i64 with a short receive buffer on rank 1");
        match (got, then) {
            (Err(Error::InvalidArgument(text)), then) if me == 1 => {
                assert!(text.contains("receive buffer"), "{case}: {text}");
                assert!(
                    on_mpi || matches!(then, Err(Error::CollectivesBroken { .. })),
                    "{case}: then {then:?}"
                );
            }
            (Ok(()), Ok(())) if on_mpi && me != 1 => {}
            // Heard in the call (from rank 1 or another rank that failed,
            // or the lengths compared together), or at the barrier after.
            (
                Err(e @ (Error::CollectiveFailed { .. } | Error::CollectiveMismatch { .. })),
                Err(Error::CollectivesBroken { .. }),
            )
            | (Ok(()), Err(e @ Error::CollectiveFailed { .. }))
                if !on_mpi && me != 1 =>
            {
                assert!(e.to_string().contains("receive buffer"), "{case}: {e}")
            }
            other => panic!("{case} gave {other:?}"),
        }
    }
    Ok(())
}

/// Ranks that give numbers of different types of the same size (`u64`
/// on rank 0, `f64` elsewhere) to a plain-number collective all get an
/// error naming both types, in the call or (a rank that only sends) at the
/// next one; none gets the other's bits (small and large, every kind, each
/// on a duplicate). On MPI, whose reductions move bytes, the kinds in
/// which every rank copies the others' parts, each failing in the call
/// (README, "Running on a cluster").
pub(super) fn mixed_types(world: &Communicator) -> Result<(), Error> {
    let (me, n) = (world.rank(), world.size());
    if n < 2 {
        return Ok(());
    }
    let on_mpi = world.backend() == spmd::Backend::Mpi;
    let kinds: &[&str] = if on_mpi {
        &["allgather_into", "alltoall_into"]
    } else {
        &[
            "allreduce_into",
            "reduce_into",
            "broadcast_into",
            "gather_into",
            "allgather_into",
            "scatter_into",
            "alltoall_into",
            "scan_into",
        ]
    };
    for len in [4usize, 1000] {
        for &what in kinds {
            let dup = world.dup()?;
            let got = if me == 0 {
                typed_call(&dup, what, len, 3u64).map(drop)
            } else {
                typed_call(&dup, what, len, 3f64).map(drop)
            };
            // Root 0: the ranks that only send, whose call may end before
            // anyone has compared.
            let only_sends = match what {
                "gather_into" | "reduce_into" => me != 0,
                "broadcast_into" | "scatter_into" | "scan_into" => me == 0,
                _ => false,
            };
            let then = if on_mpi { Ok(()) } else { dup.barrier() };
            let case = format!("rank {me}: {what} of {len} u64 on rank 0 and f64 elsewhere");
            let text = match (got, then) {
                (Err(e @ (Error::CollectiveMismatch { .. } | Error::CollectiveFailed { .. })), then)
                    if on_mpi || then.is_err() =>
                {
                    e.to_string()
                }
                (Ok(()), Err(e @ Error::CollectiveFailed { .. })) if only_sends && !on_mpi => e.to_string(),
                other => panic!("{case} gave {other:?}"),
            };
            assert!(text.contains("type u64") && text.contains("type f64"), "{case}: {text}");
        }
    }
    Ok(())
}

/// Calls the plain-number collective `what` with `len` elements of
/// `value`'s type on each rank (root 0); what the receive buffer holds.
fn typed_call<E: bytemuck::Pod + Default>(
    comm: &Communicator,
    what: &str,
    len: usize,
    value: E,
) -> Result<Vec<E>, Error>
where
    op::Sum: op::Op<E>,
{
    let n = comm.size();
    let send = vec![value; len];
    let mut all = vec![E::default(); len * n];
    match what {
        "allreduce_into" => comm.allreduce_into(&send, &mut all[..len], &op::Sum)?,
        "reduce_into" => comm.reduce_into(&send, &mut all[..len], &op::Sum, 0)?,
        "broadcast_into" => {
            let mut buf = send.clone();
            comm.broadcast_into(&mut buf, 0)?;
            return Ok(buf);
        }
        "gather_into" => comm.gather_into(&send, if comm.rank() == 0 { &mut all } else { &mut [] }, 0)?,
        "allgather_into" => comm.allgather_into(&send, &mut all)?,
        "scatter_into" => {
            let whole = vec![value; len * n];
            comm.scatter_into(&whole, &mut all[..len], 0)?
        }
        "alltoall_into" => comm.alltoall_into(&vec![value; len * n], &mut all)?,
        _ => comm.scan_into(&send, &mut all[..len], &op::Sum)?,
    }
    Ok(all)
}

/// A rank whose counts do not add up fails inside the call, and every
/// other rank hears of it instead of waiting for its part (on a duplicate,
/// whose collectives the failure ends).
pub(super) fn wrong_counts(world: &Communicator) -> Result<(), Error> {
    let (me, n) = (world.rank(), world.size());
    if n < 2 {
        return Ok(());
    }
    // A rank that did its part without waiting hears at its next call.
    // On MPI, whose collectives cannot be interrupted, the others hear in
    // the same call, except where they only send to a root that fails
    // (README, "Running on a cluster"): then they succeed.
    let on_mpi = world.backend() == spmd::Backend::Mpi;
    let expect = |what: &str, bad: usize, got: Result<(), Error>, says: &str, comm: &Communicator| match got
        .and_then(|()| if on_mpi { Ok(()) } else { comm.barrier() })
    {
        Err(Error::InvalidArgument(text)) if me == bad => assert!(text.contains(says), "{what}: {text}"),
        Err(Error::CollectiveFailed { rank, .. }) if me != bad && rank == bad => {}
        Ok(()) if on_mpi && me != bad && what == "gatherv_into" => {}
        other => panic!("rank {me}: {what} with wrong counts on rank {bad} gave {other:?}"),
    };
    let dup = world.dup()?;
    let counts = vec![1; if me == 1 { n + 1 } else { n }];
    let mut recv = vec![0u32; n];
    expect(
        "allgatherv_into",
        1,
        dup.allgatherv_into(&[me as u32], &mut recv, &counts),
        "counts",
        &dup,
    );
    // Counts past usize::MAX on the root, whose buffer has the wrapped sum.
    let dup = world.dup()?;
    let counts: Vec<usize> = (0..n).map(|r| if r == 0 { usize::MAX } else { 1 }).collect();
    let mut recv = vec![0u32; if me == 0 { n - 2 } else { 0 }];
    let root_counts = if me == 0 { &counts[..] } else { &[] };
    expect(
        "gatherv_into",
        0,
        dup.gatherv_into(&[1], &mut recv, root_counts, 0),
        "usize::MAX",
        &dup,
    );
    // reduce_scatter_into: counts that do not add up on the last rank only.
    let dup = world.dup()?;
    let counts: Vec<usize> = (0..n).map(|r| if me == n - 1 && r == 0 { 5 } else { 1 }).collect();
    let mut part = [0u32];
    let got = dup.reduce_scatter_into(&vec![1u32; n], &mut part, &counts, &op::Sum);
    expect("reduce_scatter_into", n - 1, got, "reduce_scatter_into", &dup);
    // No rank leaves before every rank has its error (a rank that has
    // left is an error of its own kind): a barrier of messages.
    if me == 0 {
        (1..n).try_for_each(|r| world.receive_with_tag::<()>(r, 12))?;
        (1..n).try_for_each(|r| world.send_with_tag(&(), r, 13))?;
    } else {
        world.send_with_tag(&(), 0, 12)?;
        world.receive_with_tag::<()>(0, 13)?;
    }
    Ok(())
}

/// A root whose send buffer is short for `scatter_into` (parts of a few
/// bytes, and of more than 4 KiB, which go through the windows) gets one
/// plain error, not an error wrapped in another; the others hear of it.
pub(super) fn short_scatter(world: &Communicator) -> Result<(), Error> {
    let (me, n) = (world.rank(), world.size());
    // On MPI a root that fails before MPI's scatter leaves the others in it.
    if n < 2 || world.backend() == spmd::Backend::Mpi {
        return Ok(());
    }
    for part in [4usize, 2048] {
        let dup = world.dup()?;
        let send = vec![1u32; if me == 0 { part * n - 1 } else { 0 }];
        let mut recv = vec![0u32; part];
        match dup.scatter_into(&send, &mut recv, 0).and_then(|()| dup.barrier()) {
            Err(Error::InvalidArgument(text)) if me == 0 => {
                assert!(text.starts_with("scatter_into: the root's send buffer has"), "{text}")
            }
            // Through the windows, every rank learns it when the lengths
            // are checked together, or from another rank that did.
            Err(Error::CollectiveFailed { .. } | Error::CollectiveMismatch { .. }) if me != 0 => {}
            other => panic!("rank {me}: scatter_into of {part} u32 a rank from a short root buffer gave {other:?}"),
        }
    }
    Ok(())
}

/// A value whose encoding fails on one rank only.
#[derive(Clone)]
struct Unencodable {
    fails: bool,
}

impl serde::Serialize for Unencodable {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.fails {
            return Err(serde::ser::Error::custom("this value refuses to be encoded"));
        }
        s.serialize_u8(7)
    }
}

impl<'de> serde::Deserialize<'de> for Unencodable {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        u8::deserialize(d).map(|_| Unencodable { fails: false })
    }
}

/// A value that fails to encode on the last rank, in the serde
/// collectives where the others wait on it: that rank gets `Encode`, and
/// no rank is left waiting; each other rank gets `CollectiveFailed` naming
/// it, or (on the native backend, where it may have finished its part)
/// hears at the next collective. Each on a duplicate, whose collectives
/// the failure may end.
pub(super) fn unencodable(world: &Communicator) -> Result<(), Error> {
    let (me, n) = (world.rank(), world.size());
    if n < 2 {
        return Ok(());
    }
    let bad = n - 1;
    let value = Unencodable { fails: me == bad };
    let on_mpi = world.backend() == spmd::Backend::Mpi;
    let check = |what: &str, got: Result<(), Error>, comm: &Communicator| match got
        .and_then(|()| if on_mpi || me == bad { Ok(()) } else { comm.barrier() })
    {
        Err(Error::Encode { .. }) if me == bad => {}
        Err(Error::CollectiveFailed { rank, .. }) if me != bad && rank == bad => {}
        other => panic!("rank {me}: {what} with a value rank {bad} cannot encode gave {other:?}"),
    };
    let dup = world.dup()?;
    check("allgather", dup.allgather(&value).map(|_| ()), &dup);
    let dup = world.dup()?;
    let sum = |a: &Unencodable, _: &Unencodable| Unencodable { fails: a.fails };
    check("allreduce", dup.allreduce(&value, &sum).map(|_| ()), &dup);
    let dup = world.dup()?;
    let mut from_bad = Unencodable { fails: me == bad };
    check("broadcast", dup.broadcast(&mut from_bad, bad), &dup);
    // No rank leaves before every rank has its error.
    world.barrier()
}
