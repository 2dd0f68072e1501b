//! Reduction operators for `reduce`, `allreduce` and `scan`.
//!
//! An operator combines two values into one. For plain-number slices it is
//! applied element by element. Operators must be associative; `scan`, and
//! `reduce`/`allreduce` with root 0, combine in rank order, so a
//! non-commutative operator is fine there.
//!
//! Any closure `Fn(&T, &T) -> T` is an operator too:
//!
//! ```no_run
//! use spmd::op;
//! # let world = spmd::init().unwrap();
//! let total = world.allreduce(&(world.rank() as u64), &op::Sum)?;
//! let longest = world.allreduce(&"abc".to_string(), &|a: &String, b: &String| {
//!     if b.len() > a.len() { b.clone() } else { a.clone() }
//! })?;
//! # Ok::<(), spmd::Error>(())
//! ```

use std::ops::{Add, Mul};

/// Combines two values; see the [module docs](self).
pub trait Op<T> {
    /// Combines `a` (from lower ranks) with `b` (from higher ranks).
    fn combine(&self, a: &T, b: &T) -> T;

    /// True if `combine(a, b) == combine(b, a)` for all values, which lets
    /// large allreduces combine in any order (the built-in operators are;
    /// closures are assumed not to be).
    fn is_commutative(&self) -> bool {
        false
    }
}

impl<T, F: Fn(&T, &T) -> T> Op<T> for F {
    fn combine(&self, a: &T, b: &T) -> T {
        self(a, b)
    }
}

/// `a + b`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Sum;
/// `a * b`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Product;
/// The smaller of the two (the first if they compare equal or unordered).
#[derive(Debug, Clone, Copy, Default)]
pub struct Min;
/// The larger of the two (the first if they compare equal or unordered).
#[derive(Debug, Clone, Copy, Default)]
pub struct Max;
/// Logical and: true (1) when both are non-zero.
#[derive(Debug, Clone, Copy, Default)]
pub struct LogicalAnd;
/// Logical or: true (1) when either is non-zero.
#[derive(Debug, Clone, Copy, Default)]
pub struct LogicalOr;
/// Logical exclusive or: true (1) when exactly one is non-zero.
#[derive(Debug, Clone, Copy, Default)]
pub struct LogicalXor;
/// Bitwise `a & b`.
#[derive(Debug, Clone, Copy, Default)]
pub struct BitAnd;
/// Bitwise `a | b`.
#[derive(Debug, Clone, Copy, Default)]
pub struct BitOr;
/// Bitwise `a ^ b`.
#[derive(Debug, Clone, Copy, Default)]
pub struct BitXor;

impl<T: Clone + Add<Output = T>> Op<T> for Sum {
    fn combine(&self, a: &T, b: &T) -> T {
        a.clone() + b.clone()
    }

    fn is_commutative(&self) -> bool {
        true
    }
}

impl<T: Clone + Mul<Output = T>> Op<T> for Product {
    fn combine(&self, a: &T, b: &T) -> T {
        a.clone() * b.clone()
    }

    fn is_commutative(&self) -> bool {
        true
    }
}

impl<T: Clone + PartialOrd> Op<T> for Min {
    fn combine(&self, a: &T, b: &T) -> T {
        if b < a { b.clone() } else { a.clone() }
    }

    fn is_commutative(&self) -> bool {
        true
    }
}

impl<T: Clone + PartialOrd> Op<T> for Max {
    fn combine(&self, a: &T, b: &T) -> T {
        if b > a { b.clone() } else { a.clone() }
    }

    fn is_commutative(&self) -> bool {
        true
    }
}

impl<T: Clone + std::ops::BitAnd<Output = T>> Op<T> for BitAnd {
    fn combine(&self, a: &T, b: &T) -> T {
        a.clone() & b.clone()
    }

    fn is_commutative(&self) -> bool {
        true
    }
}

impl<T: Clone + std::ops::BitOr<Output = T>> Op<T> for BitOr {
    fn combine(&self, a: &T, b: &T) -> T {
        a.clone() | b.clone()
    }

    fn is_commutative(&self) -> bool {
        true
    }
}

impl<T: Clone + std::ops::BitXor<Output = T>> Op<T> for BitXor {
    fn combine(&self, a: &T, b: &T) -> T {
        a.clone() ^ b.clone()
    }

    fn is_commutative(&self) -> bool {
        true
    }
}

/// Values with a truth value, for the logical operators: `false`/`true`,
/// or zero/non-zero numbers (results are 0 or 1).
pub trait Truth {
    /// Whether the value counts as true.
    fn truth(&self) -> bool;
    /// The value that stands for `b`.
    fn from_truth(b: bool) -> Self;
}

impl Truth for bool {
    fn truth(&self) -> bool {
        *self
    }
    fn from_truth(b: bool) -> bool {
        b
    }
}

macro_rules! numeric_truth {
    ($($t:ty),*) => {$(
        impl Truth for $t {
            fn truth(&self) -> bool {
                *self != (0 as $t)
            }
            fn from_truth(b: bool) -> $t {
                if b { 1 as $t } else { 0 as $t }
            }
        }
    )*};
}
numeric_truth!(u8, u16, u32, u64, u128, usize, i8, i16, i32, i64, i128, isize, f32, f64);

impl<T: Truth> Op<T> for LogicalAnd {
    fn combine(&self, a: &T, b: &T) -> T {
        T::from_truth(a.truth() && b.truth())
    }

    fn is_commutative(&self) -> bool {
        true
    }
}

impl<T: Truth> Op<T> for LogicalOr {
    fn combine(&self, a: &T, b: &T) -> T {
        T::from_truth(a.truth() || b.truth())
    }

    fn is_commutative(&self) -> bool {
        true
    }
}

impl<T: Truth> Op<T> for LogicalXor {
    fn combine(&self, a: &T, b: &T) -> T {
        T::from_truth(a.truth() != b.truth())
    }

    fn is_commutative(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operators_do_what_they_say() {
        assert_eq!(Sum.combine(&2u128, &3), 5);
        assert_eq!(Product.combine(&2.0f64, &3.0), 6.0);
        assert_eq!(Min.combine(&-1i32, &4), -1);
        assert_eq!(Max.combine(&-1i32, &4), 4);
        assert_eq!(LogicalAnd.combine(&2u8, &0), 0);
        assert_eq!(LogicalOr.combine(&2u8, &0), 1);
        assert!(!LogicalXor.combine(&true, &true));
        assert_eq!(BitAnd.combine(&0b1100u8, &0b1010), 0b1000);
        assert_eq!(BitOr.combine(&0b1100u8, &0b1010), 0b1110);
        assert_eq!(BitXor.combine(&0b1100u8, &0b1010), 0b0110);
        let concat = |a: &String, b: &String| format!("{a}{b}");
        assert_eq!(concat.combine(&"a".into(), &"b".into()), "ab");
    }
}
