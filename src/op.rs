//! Reduction operators for `reduce`, `allreduce`, `scan` and their kin.
//!
//! An operator combines two values into one. The built-in ones combine
//! plain-number slices (the `_into` forms), `Vec`s and arrays element by
//! element, and any [`Scalar`] as a whole. Operators must be associative;
//! every reduction combines in rank order (0, 1, ..., whatever the root),
//! so a non-commutative operator is fine.
//!
//! Any closure `Fn(&T, &T) -> T` is an operator too; passed straight to a
//! collective its parameters need types, or wrap it in [`from_fn`]:
//!
//! ```no_run
//! use spmd::op;
//! # let world = spmd::init().unwrap();
//! let total = world.allreduce(&(world.rank() as u64), &op::Sum)?;
//! let sums = world.allreduce(&vec![1.0, 2.0], &op::Sum)?; // element by element
//! let longest = world.allreduce(&"abc".to_string(), &|a: &String, b: &String| {
//!     if b.len() > a.len() { b.clone() } else { a.clone() }
//! })?;
//! let product = world.allreduce(&3u64, &op::from_fn(|a, b| a * b))?;
//! # Ok::<(), spmd::Error>(())
//! ```

use std::ops::{Add, Mul};

/// Combines two values; see the [module docs](self).
pub trait Op<T> {
    /// Combines `a` (from lower ranks) with `b` (from higher ranks).
    ///
    /// It must only combine: spmd called from inside it (a collective, a
    /// send) returns [`Error::Reentered`](crate::Error::Reentered).
    fn combine(&self, a: &T, b: &T) -> T;

    /// True if `combine(a, b) == combine(b, a)` for all values, which lets
    /// large allreduces combine in any order (the built-in operators are;
    /// closures are assumed not to be).
    fn is_commutative(&self) -> bool {
        false
    }

    /// Which built-in operator this is on single numbers, so that a
    /// backend may combine with its own (MPI's `MPI_SUM`, ...); `None` for
    /// any other operator. Not for programs to implement.
    #[doc(hidden)]
    fn builtin(&self) -> Option<Builtin> {
        None
    }
}

/// The built-in operators, as [`Op::builtin`] names them.
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Builtin {
    Sum,
    Product,
    Min,
    Max,
    LogicalAnd,
    LogicalOr,
    LogicalXor,
    BitAnd,
    BitOr,
    BitXor,
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

/// A value the built-in arithmetic, ordering and bitwise operators
/// combine as a whole: the numbers, `bool`, `char` and `String` are. A
/// `Vec` or an array of them is combined element by element instead, as in
/// MPI. Implement it (one empty line) for a type of your own that has the
/// operations an operator needs:
///
/// ```
/// #[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
/// struct Complex { re: f64, im: f64 }
///
/// impl std::ops::Add for Complex {
///     type Output = Complex;
///     fn add(self, o: Complex) -> Complex { Complex { re: self.re + o.re, im: self.im + o.im } }
/// }
/// impl spmd::op::Scalar for Complex {}
///
/// let world = spmd::init()?;
/// let z = world.allreduce(&vec![Complex { re: 1.0, im: 2.0 }; 3], &spmd::op::Sum)?;
/// assert_eq!(z[2].re, world.size() as f64);
/// # Ok::<(), spmd::Error>(())
/// ```
pub trait Scalar: Clone {}

macro_rules! scalars {
    ($($t:ty),*) => {$( impl Scalar for $t {} )*};
}
scalars!(
    u8, u16, u32, u64, u128, usize, i8, i16, i32, i64, i128, isize, f32, f64, bool, char, String
);
scalars!(std::time::Duration, ());
impl<T: Scalar> Scalar for Option<T> {}
impl<T: Scalar> Scalar for std::num::Wrapping<T> {}
impl<T: Scalar> Scalar for std::cmp::Reverse<T> {}

/// Tuples of scalars are scalars, compared in order: `Max` over
/// `(value, rank)` pairs gives the largest value and its rank (of equal
/// values the largest rank, where MPI's `MAXLOC` keeps the smallest);
/// `Min` gives the smallest value and, of equal ones, the smallest rank,
/// as `MINLOC`.
macro_rules! tuple_scalars {
    ($(($($t:ident),+)),*) => {$( impl<$($t: Scalar),+> Scalar for ($($t,)+) {} )*};
}
tuple_scalars!((A), (A, B), (A, B, C), (A, B, C, D));

/// Combines two sequences element by element with `f`; where one is
/// longer, its extra elements are kept as they are (as if the shorter one
/// went on with elements that change nothing).
fn each<T: Clone>(a: &[T], b: &[T], f: impl Fn(&T, &T) -> T) -> Vec<T> {
    let common = a.len().min(b.len());
    let mut out: Vec<T> = a.iter().zip(b).map(|(x, y)| f(x, y)).collect();
    let rest = if a.len() > common { &a[common..] } else { &b[common..] };
    out.extend_from_slice(rest);
    out
}

/// Implements a built-in operator for scalars (`$bound` being what it
/// needs), and element by element for `Vec`s and arrays of them.
macro_rules! operator {
    ($op:ident, $bound:path, |$a:ident, $b:ident| $body:expr) => {
        impl<T: Scalar + $bound> Op<T> for $op {
            fn combine(&self, $a: &T, $b: &T) -> T {
                $body
            }

            fn is_commutative(&self) -> bool {
                true
            }

            fn builtin(&self) -> Option<Builtin> {
                Some(Builtin::$op)
            }
        }

        impl<T: Scalar + $bound> Op<Vec<T>> for $op {
            fn combine(&self, a: &Vec<T>, b: &Vec<T>) -> Vec<T> {
                each(a, b, |x, y| self.combine(x, y))
            }

            fn is_commutative(&self) -> bool {
                true
            }
        }

        impl<T: Scalar + $bound, const N: usize> Op<[T; N]> for $op {
            fn combine(&self, a: &[T; N], b: &[T; N]) -> [T; N] {
                std::array::from_fn(|i| self.combine(&a[i], &b[i]))
            }

            fn is_commutative(&self) -> bool {
                true
            }
        }
    };
}

operator!(Sum, Add<Output = T>, |a, b| a.clone() + b.clone());
operator!(Product, Mul<Output = T>, |a, b| a.clone() * b.clone());
operator!(Min, PartialOrd, |a, b| if b < a { b.clone() } else { a.clone() });
operator!(Max, PartialOrd, |a, b| if b > a { b.clone() } else { a.clone() });
operator!(BitAnd, std::ops::BitAnd<Output = T>, |a, b| a.clone() & b.clone());
operator!(BitOr, std::ops::BitOr<Output = T>, |a, b| a.clone() | b.clone());
operator!(BitXor, std::ops::BitXor<Output = T>, |a, b| a.clone() ^ b.clone());

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

/// Implements a logical operator for values with a truth value, and
/// element by element for `Vec`s and arrays of them.
macro_rules! logical {
    ($op:ident, |$a:ident, $b:ident| $body:expr) => {
        impl<T: Truth> Op<T> for $op {
            fn combine(&self, a: &T, b: &T) -> T {
                let ($a, $b) = (a.truth(), b.truth());
                T::from_truth($body)
            }

            fn is_commutative(&self) -> bool {
                true
            }

            fn builtin(&self) -> Option<Builtin> {
                Some(Builtin::$op)
            }
        }

        impl<T: Truth + Clone> Op<Vec<T>> for $op {
            fn combine(&self, a: &Vec<T>, b: &Vec<T>) -> Vec<T> {
                // The longer one's extra elements become 0 or 1 too.
                let mut out = each(a, b, |x, y| self.combine(x, y));
                for x in out.iter_mut().skip(a.len().min(b.len())) {
                    *x = T::from_truth(x.truth());
                }
                out
            }

            fn is_commutative(&self) -> bool {
                true
            }
        }

        impl<T: Truth, const N: usize> Op<[T; N]> for $op {
            fn combine(&self, a: &[T; N], b: &[T; N]) -> [T; N] {
                std::array::from_fn(|i| self.combine(&a[i], &b[i]))
            }

            fn is_commutative(&self) -> bool {
                true
            }
        }
    };
}

logical!(LogicalAnd, |a, b| a && b);
logical!(LogicalOr, |a, b| a || b);
logical!(LogicalXor, |a, b| a != b);

/// Makes an operator of a closure whose parameters need no types as long
/// as its body uses operators on them (`op::from_fn(|a, b| a * b)`); a
/// method call on a parameter needs its type (`|a: &f64, b| a.max(*b)`),
/// as Rust checks a closure's body before it learns the collective's value
/// type. A closure passed straight to `allreduce` needs both types
/// (`|a: &String, b: &String| ..`): Rust gives a closure the signature
/// "for any lifetime" only when the parameter it is passed to asks for an
/// `Fn` directly, and an operator parameter asks for an [`Op`] (so that
/// `op::Sum` and closures go in the same place). Without the types, the
/// error is "implementation of `FnOnce` is not general enough".
///
/// ```
/// use spmd::op;
/// let world = spmd::init()?;
/// let longest = world.allreduce(&"abc".to_string(), &op::from_fn(|a: &String, b| {
///     if b.len() > a.len() { b.clone() } else { a.clone() }
/// }))?;
/// let product = world.allreduce(&2u64, &op::from_fn(|a, b| a * b))?;
/// // A method call needs the type of its receiver, on the first parameter:
/// let largest = world.allreduce(&1.5f64, &op::from_fn(|a: &f64, b| a.max(*b)))?;
/// # Ok::<(), spmd::Error>(())
/// ```
pub fn from_fn<T, F: Fn(&T, &T) -> T>(f: F) -> FromFn<F> {
    FromFn(f)
}

/// An operator made of a closure by [`from_fn`].
#[derive(Debug, Clone, Copy)]
pub struct FromFn<F>(F);

impl<T, F: Fn(&T, &T) -> T> Op<T> for FromFn<F> {
    fn combine(&self, a: &T, b: &T) -> T {
        (self.0)(a, b)
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

    #[test]
    fn built_in_operators_go_element_by_element_over_vecs_and_arrays() {
        assert_eq!(Sum.combine(&vec![1, 2, 3], &vec![10, 20, 30]), [11, 22, 33]);
        assert_eq!(Max.combine(&vec![1, 5], &vec![4, 2]), [4, 5]);
        assert_eq!(Min.combine(&[1.5, 5.0], &[4.0, 2.0]), [1.5, 2.0]);
        assert_eq!(
            LogicalOr.combine(&vec![true, false], &vec![false, false]),
            [true, false]
        );
        assert_eq!(BitXor.combine(&[0b11u8; 2], &[0b01; 2]), [0b10; 2]);
        // The longer keeps its extra elements.
        assert_eq!(Sum.combine(&vec![1, 2], &vec![10, 20, 30]), [11, 22, 30]);
        assert_eq!(Product.combine(&vec![2, 3, 4], &vec![5]), [10, 3, 4]);
        let add = from_fn(|a: &u8, b| a + b);
        assert_eq!(add.combine(&1, &2), 3);
        assert_eq!(LogicalOr.combine(&vec![3, 0], &vec![0, 0, 72]), [1, 0, 1]);
        assert_eq!(Max.combine(&(2.5, 1usize), &(2.5, 3)), (2.5, 3), "MAXLOC");
        assert_eq!(Min.combine(&(1.0, 4usize), &(1.0, 2)), (1.0, 2), "MINLOC");
        let d = |ms| std::time::Duration::from_millis(ms);
        assert_eq!(Sum.combine(&d(5), &d(7)), d(12));
        assert_eq!(Max.combine(&Some(3), &None), Some(3));
        assert_eq!(Min.combine(&Some(3), &Some(1)), Some(1));
        assert_eq!(Min.combine(&"b".to_string(), &"a".to_string()), "a");
    }
}
