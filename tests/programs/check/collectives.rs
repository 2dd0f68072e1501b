//! Property checks of every collective: random cases (operation, root,
//! length, operator, data) drawn from a seed that all ranks share, each
//! result compared with a sequential reference every rank computes from
//! every rank's data. A failure names the seed and the case.

use spmd::op::{self, Op};
use spmd::{Communicator, Error};

use crate::rng::Rng;

pub const LENGTHS: [usize; 7] = [0, 1, 2, 7, 64, 1000, 70_000];

/// The data rank `rank` contributes in a case: small integers, so that
/// sums and products of up to 16 ranks stay exact.
pub fn data(case_seed: u64, rank: usize, len: usize) -> Vec<i64> {
    let mut rng = Rng::new(case_seed ^ (rank as u64).wrapping_mul(0x1000_0001));
    (0..len).map(|_| rng.below(7) as i64 - 3).collect()
}

pub fn text(case_seed: u64, rank: usize) -> String {
    let mut rng = Rng::new(case_seed ^ 0xabcd ^ rank as u64);
    let len = rng.below(40);
    (0..len).map(|_| (b'a' + rng.below(26) as u8) as char).collect()
}

/// A 2×2 integer matrix: multiplication is associative but not
/// commutative, so it shows whether results combine in rank order.
pub type Matrix = [i64; 4];

pub fn matrix(case_seed: u64, rank: usize) -> Matrix {
    let d = data(case_seed ^ 0x55, rank, 4);
    [d[0], d[1], d[2], d[3]]
}

pub fn matmul(a: &Matrix, b: &Matrix) -> Matrix {
    let m = |x: i64, y: i64| x.wrapping_mul(y);
    [
        m(a[0], b[0]).wrapping_add(m(a[1], b[2])),
        m(a[0], b[1]).wrapping_add(m(a[1], b[3])),
        m(a[2], b[0]).wrapping_add(m(a[3], b[2])),
        m(a[2], b[1]).wrapping_add(m(a[3], b[3])),
    ]
}

/// Runs an elementwise operator chosen by `which` over two slices.
fn apply(which: usize, a: &[i64], b: &[i64]) -> Vec<i64> {
    a.iter().zip(b).map(|(x, y)| apply_one(which, x, y)).collect()
}

/// The last, "first", keeps the left operand: associative but not
/// commutative, so it shows the order in which parts are combined.
pub const OPERATORS: [&str; 12] = [
    "sum", "product", "min", "max", "land", "lor", "lxor", "band", "bor", "bxor", "closure", "first",
];

pub fn apply_one(which: usize, x: &i64, y: &i64) -> i64 {
    match which {
        0 => op::Sum.combine(x, y),
        1 => op::Product.combine(x, y),
        2 => op::Min.combine(x, y),
        3 => op::Max.combine(x, y),
        4 => op::LogicalAnd.combine(x, y),
        5 => op::LogicalOr.combine(x, y),
        6 => op::LogicalXor.combine(x, y),
        7 => op::BitAnd.combine(x, y),
        8 => op::BitOr.combine(x, y),
        9 => op::BitXor.combine(x, y),
        10 => x.wrapping_mul(3).wrapping_add(*y).wrapping_sub(x.wrapping_mul(2)),
        _ => *x,
    }
}

/// Calls `f` with the operator chosen by `which` as a value of its own type.
macro_rules! with_op {
    ($which:expr, |$o:ident| $body:expr) => {
        match $which {
            0 => {
                let $o = &op::Sum;
                $body
            }
            1 => {
                let $o = &op::Product;
                $body
            }
            2 => {
                let $o = &op::Min;
                $body
            }
            3 => {
                let $o = &op::Max;
                $body
            }
            4 => {
                let $o = &op::LogicalAnd;
                $body
            }
            5 => {
                let $o = &op::LogicalOr;
                $body
            }
            6 => {
                let $o = &op::LogicalXor;
                $body
            }
            7 => {
                let $o = &op::BitAnd;
                $body
            }
            8 => {
                let $o = &op::BitOr;
                $body
            }
            9 => {
                let $o = &op::BitXor;
                $body
            }
            10 => {
                let $o = &|x: &i64, y: &i64| $crate::collectives::apply_one(10, x, y);
                $body
            }
            _ => {
                let $o = &|x: &i64, _: &i64| *x;
                $body
            }
        }
    };
}
pub(crate) use with_op;

pub fn fold(which: usize, parts: &[Vec<i64>], order: impl Iterator<Item = usize>) -> Vec<i64> {
    let mut order = order;
    let first = order.next().expect("at least one rank");
    order.fold(parts[first].clone(), |acc, r| apply(which, &acc, &parts[r]))
}

pub fn run(world: &Communicator, seed: u64, cases: usize) -> Result<(), Error> {
    let (me, n) = (world.rank(), world.size());
    let mut rng = Rng::new(seed);
    for case in 0..cases {
        let case_seed = rng.next_u64();
        let root = rng.below(n);
        let len = LENGTHS[rng.below(LENGTHS.len())];
        let which = rng.below(OPERATORS.len());
        let kind = rng.below(25);
        let parts: Vec<Vec<i64>> = (0..n).map(|r| data(case_seed, r, len)).collect();
        let mine = &parts[me];
        let ctx = format!(
            "seed {seed} case {case}: kind {kind}, root {root}, len {len}, op {} on rank {me} of {n}",
            OPERATORS[which]
        );
        match kind {
            0 => world.barrier()?,
            1 => {
                let mut v = if me == root { parts[root].clone() } else { Vec::new() };
                world.broadcast(&mut v, root)?;
                assert_eq!(v, parts[root], "{ctx}");
            }
            2 => {
                let mut v = if me == root { parts[root].clone() } else { vec![0; len] };
                world.broadcast_into(&mut v, root)?;
                assert_eq!(v, parts[root], "{ctx}");
            }
            3 => {
                let all: Vec<String> = (0..n).map(|r| text(case_seed, r)).collect();
                let given = if me == root { all.clone() } else { Vec::new() };
                assert_eq!(world.scatter(&given, root)?, all[me], "{ctx}");
            }
            4 => {
                let flat: Vec<i64> = parts.concat();
                let mut recv = vec![0; len];
                let send = if me == root { flat.clone() } else { Vec::new() };
                world.scatter_into(&send, &mut recv, root)?;
                assert_eq!(recv, parts[me], "{ctx}");
            }
            5 => {
                let got = world.gather(&text(case_seed, me), root)?;
                let want: Vec<String> = (0..n).map(|r| text(case_seed, r)).collect();
                assert_eq!(got, (me == root).then_some(want), "{ctx}");
            }
            6 => {
                let mut recv = if me == root { vec![0; len * n] } else { Vec::new() };
                world.gather_into(mine, &mut recv, root)?;
                if me == root {
                    assert_eq!(recv, parts.concat(), "{ctx}");
                }
            }
            7 => {
                let got = world.allgather(&(me, text(case_seed, me)))?;
                let want: Vec<(usize, String)> = (0..n).map(|r| (r, text(case_seed, r))).collect();
                assert_eq!(got, want, "{ctx}");
            }
            8 => {
                let mut recv = vec![0; len * n];
                world.allgather_into(mine, &mut recv)?;
                assert_eq!(recv, parts.concat(), "{ctx}");
            }
            9 => {
                let scalar = mine.first().copied().unwrap_or(me as i64);
                let scalars: Vec<Vec<i64>> = (0..n)
                    .map(|r| vec![parts[r].first().copied().unwrap_or(r as i64)])
                    .collect();
                let got = with_op!(which, |o| world.reduce(&scalar, o, root)?);
                // Reduce combines in rank order, whatever the root.
                let want = fold(which, &scalars, 0..n)[0];
                assert_eq!(got, (me == root).then_some(want), "{ctx}");
            }
            10 => {
                let mut recv = vec![0; if me == root { len } else { 0 }];
                with_op!(which, |o| world.reduce_into(mine, &mut recv, o, root)?);
                if me == root {
                    assert_eq!(recv, fold(which, &parts, 0..n), "{ctx}");
                }
            }
            11 => {
                let scalar = mine.first().copied().unwrap_or(1);
                let scalars: Vec<Vec<i64>> = (0..n).map(|r| vec![parts[r].first().copied().unwrap_or(1)]).collect();
                let got = with_op!(which, |o| world.allreduce(&scalar, o)?);
                assert_eq!(got, fold(which, &scalars, 0..n)[0], "{ctx}");
            }
            12 => {
                let mut recv = vec![0; len];
                with_op!(which, |o| world.allreduce_into(mine, &mut recv, o)?);
                assert_eq!(recv, fold(which, &parts, 0..n), "{ctx}");
                // The built-in operators go element by element over a Vec
                // in the serde forms too.
                let sums = world.allreduce(mine, &op::Sum)?;
                assert_eq!(sums, fold(0, &parts, 0..n), "{ctx} (allreduce of a Vec with op::Sum)");
                let least = world.reduce(mine, &op::Min, root)?;
                assert_eq!(
                    least,
                    (me == root).then(|| fold(2, &parts, 0..n)),
                    "{ctx} (reduce of a Vec with op::Min)"
                );
            }
            13 => {
                // Non-commutative: matrices must multiply in rank order.
                let got = world.scan(&matrix(case_seed, me), &matmul)?;
                let want = (1..=me).fold(matrix(case_seed, 0), |acc, r| matmul(&acc, &matrix(case_seed, r)));
                assert_eq!(got, want, "{ctx} (scan of matrices)");
                let all = world.allreduce(&matrix(case_seed, me), &matmul)?;
                let want_all = (1..n).fold(matrix(case_seed, 0), |acc, r| matmul(&acc, &matrix(case_seed, r)));
                assert_eq!(all, want_all, "{ctx} (allreduce of matrices)");
            }
            14 => {
                let mut recv = vec![0; len];
                with_op!(which, |o| world.scan_into(mine, &mut recv, o)?);
                assert_eq!(recv, fold(which, &parts, 0..=me), "{ctx}");
            }
            15 => {
                let values: Vec<String> = (0..n)
                    .map(|d| format!("{me}->{d}:{}", text(case_seed, me + d)))
                    .collect();
                let got = world.alltoall(&values)?;
                let want: Vec<String> = (0..n)
                    .map(|s| format!("{s}->{me}:{}", text(case_seed, s + me)))
                    .collect();
                assert_eq!(got, want, "{ctx}");
            }
            16 => {
                let k = len.min(1000);
                let send: Vec<i64> = (0..n * k).map(|i| (me * 1_000_000 + i) as i64).collect();
                let mut recv = vec![0; n * k];
                world.alltoall_into(&send, &mut recv)?;
                let want: Vec<i64> = (0..n)
                    .flat_map(|s| (0..k).map(move |j| (s * 1_000_000 + me * k + j) as i64))
                    .collect();
                assert_eq!(recv, want, "{ctx}");
            }
            18..=22 => varying(world, kind, case_seed, which, &ctx)?,
            23 => {
                let mut recv = vec![99; len];
                with_op!(which, |o| world.exscan_into(mine, &mut recv, o)?);
                let want = if me == 0 {
                    vec![99; len]
                } else {
                    fold(which, &parts, 0..me)
                };
                assert_eq!(recv, want, "{ctx} (exscan_into)");
                let got = world.exscan(&matrix(case_seed, me), &matmul)?;
                let want =
                    (me > 0).then(|| (1..me).fold(matrix(case_seed, 0), |acc, r| matmul(&acc, &matrix(case_seed, r))));
                assert_eq!(got, want, "{ctx} (exscan of matrices)");
            }
            _ => {
                // Floating point: every rank gets the same bits, close to the
                // sequential sum.
                let xs: Vec<f64> = mine.iter().map(|v| *v as f64 * 0.1 + me as f64 * 1e-3).collect();
                let mut sum = vec![0.0; len];
                world.allreduce_into(&xs, &mut sum, &op::Sum)?;
                let bits: Vec<u64> = sum.iter().map(|v| v.to_bits()).collect();
                let everyone = world.allgather(&bits)?;
                assert!(
                    everyone.iter().all(|b| *b == bits),
                    "{ctx}: ranks disagree on the float sum"
                );
                for (i, s) in sum.iter().enumerate() {
                    let want: f64 = (0..n).map(|r| parts[r][i] as f64 * 0.1 + r as f64 * 1e-3).sum();
                    assert!((s - want).abs() < 1e-9, "{ctx}: element {i} is {s}, want {want}");
                }
            }
        }
    }
    short_buffer(world)?;
    wrong_counts(world)?;
    unencodable(world)?;
    if me == 0 {
        println!("ok {cases} random collective cases from seed {seed}");
    }
    Ok(())
}

/// How many elements rank `from` gives rank `to` in a case of the
/// collectives with a count per rank (zero included).
fn count(case_seed: u64, from: usize, to: usize) -> usize {
    (case_seed as usize % 7 + 3 * from + 5 * to) % 6
}

/// The v-collectives and `reduce_scatter`: parts of a count per rank,
/// compared with the parts cut from every rank's data.
fn varying(world: &Communicator, kind: usize, case_seed: u64, which: usize, ctx: &str) -> Result<(), Error> {
    let (me, n) = (world.rank(), world.size());
    let root = case_seed as usize % n;
    // Rank r's own part in the gathers: `count(r, r)` elements.
    let own = |r: usize| data(case_seed, r, count(case_seed, r, r));
    let own_counts: Vec<usize> = (0..n).map(|r| count(case_seed, r, r)).collect();
    let total: usize = own_counts.iter().sum();
    match kind {
        18 => {
            let mut recv = vec![0; if me == root { total } else { 0 }];
            let counts = if me == root { own_counts.clone() } else { Vec::new() };
            world.gatherv_into(&own(me), &mut recv, &counts, root)?;
            if me == root {
                assert_eq!(recv, (0..n).flat_map(own).collect::<Vec<_>>(), "{ctx} (gatherv_into)");
            }
        }
        19 => {
            let all: Vec<i64> = (0..n).flat_map(own).collect();
            let send = if me == root { all } else { Vec::new() };
            let mut recv = vec![0; own_counts[me]];
            world.scatterv_into(&send, &own_counts, &mut recv, root)?;
            assert_eq!(recv, own(me), "{ctx} (scatterv_into)");
        }
        20 => {
            let mut recv = vec![0; total];
            world.allgatherv_into(&own(me), &mut recv, &own_counts)?;
            assert_eq!(
                recv,
                (0..n).flat_map(own).collect::<Vec<_>>(),
                "{ctx} (allgatherv_into)"
            );
        }
        21 => {
            // Rank s gives rank d the part `data(seed ^ (s, d))`.
            let part = |s: usize, d: usize| data(case_seed ^ (s * 64 + d) as u64, s, count(case_seed, s, d));
            let send: Vec<i64> = (0..n).flat_map(|d| part(me, d)).collect();
            let send_counts: Vec<usize> = (0..n).map(|d| count(case_seed, me, d)).collect();
            let recv_counts: Vec<usize> = (0..n).map(|s| count(case_seed, s, me)).collect();
            let mut recv = vec![0; recv_counts.iter().sum()];
            world.alltoallv_into(&send, &send_counts, &mut recv, &recv_counts)?;
            let want: Vec<i64> = (0..n).flat_map(|s| part(s, me)).collect();
            assert_eq!(recv, want, "{ctx} (alltoallv_into)");
        }
        _ => {
            let parts: Vec<Vec<i64>> = (0..n).map(|r| data(case_seed ^ 0x77, r, total)).collect();
            let mut recv = vec![0; own_counts[me]];
            with_op!(which, |o| world.reduce_scatter_into(
                &parts[me],
                &mut recv,
                &own_counts,
                o
            )?);
            let whole = fold(which, &parts, 0..n);
            let at: usize = own_counts[..me].iter().sum();
            assert_eq!(recv, whole[at..at + own_counts[me]], "{ctx} (reduce_scatter_into)");
        }
    }
    Ok(())
}

/// A rank whose receive buffer alone is wrong in a small allreduce takes
/// part and gets an error; the others get their result, and the next
/// collective works.
fn short_buffer(world: &Communicator) -> Result<(), Error> {
    let (me, n) = (world.rank(), world.size());
    if n < 2 {
        return Ok(());
    }
    let mut recv = vec![0i64; if me == 1 { 3 } else { 4 }];
    match world.allreduce_into(&[1i64; 4], &mut recv, &op::Sum) {
        Err(Error::InvalidArgument(text)) if me == 1 => assert!(text.contains("elements"), "{text}"),
        Ok(()) if me != 1 => assert_eq!(recv, vec![n as i64; 4]),
        other => panic!("rank {me}: a small allreduce with a short buffer on rank 1 gave {other:?}"),
    }
    let total: u64 = world.allreduce(&1u64, &op::Sum)?;
    assert_eq!(total, n as u64, "the collective after a short buffer");
    Ok(())
}

/// A rank whose counts do not add up fails inside the call, and every
/// other rank hears of it instead of waiting for its part (on a duplicate,
/// whose collectives the failure ends).
fn wrong_counts(world: &Communicator) -> Result<(), Error> {
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
fn unencodable(world: &Communicator) -> Result<(), Error> {
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
