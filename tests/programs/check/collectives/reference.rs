//! The data of the collective cases, the operators, and the sequential references every rank checks results against.

use spmd::op::{self, Op};

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
