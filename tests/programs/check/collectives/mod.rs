//! Property checks of every collective: random cases (operation, root,
//! length, operator, data) drawn from a seed that all ranks share, each
//! result compared with a sequential reference every rank computes from
//! every rank's data. A failure names the seed and the case.

use spmd::op;
use spmd::{Communicator, Error};

use crate::rng::Rng;

mod errors;
mod reference;

use errors::{mixed_types, short_buffer, short_scatter, unencodable, wrong_counts};
pub(crate) use reference::with_op;
pub use reference::{LENGTHS, OPERATORS, apply_one, data, fold, matmul, matrix, text};

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
    mixed_types(world)?;
    wrong_counts(world)?;
    short_scatter(world)?;
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
