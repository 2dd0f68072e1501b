//! The element type of a raw message: a 16-bit code in every raw frame
//! naming the plain-number type its bytes hold, so that a receive of
//! another type is a [`FormatMismatch`](crate::Error::FormatMismatch)
//! instead of reinterpreted bytes.
//!
//! The built-in number types have codes of their own; any other `Pod`
//! type is known by its size only (`0x8000 | size`).

use std::any::TypeId;

use bytemuck::Pod;

/// The code of a type known only by its size (or larger than 32 KiB).
const BY_SIZE: u16 = 0x8000;

/// The named number types and their codes (0 is not an element: it marks
/// a serde message).
const NAMED: [(u16, &str); 14] = [
    (1, "u8"),
    (2, "i8"),
    (3, "u16"),
    (4, "i16"),
    (5, "u32"),
    (6, "i32"),
    (7, "u64"),
    (8, "i64"),
    (9, "f32"),
    (10, "f64"),
    (11, "u128"),
    (12, "i128"),
    (13, "usize"),
    (14, "isize"),
];

/// The element code of `T`.
pub(crate) fn code_of<T: Pod>() -> u16 {
    let id = TypeId::of::<T>();
    let named = [
        TypeId::of::<u8>(),
        TypeId::of::<i8>(),
        TypeId::of::<u16>(),
        TypeId::of::<i16>(),
        TypeId::of::<u32>(),
        TypeId::of::<i32>(),
        TypeId::of::<u64>(),
        TypeId::of::<i64>(),
        TypeId::of::<f32>(),
        TypeId::of::<f64>(),
        TypeId::of::<u128>(),
        TypeId::of::<i128>(),
        TypeId::of::<usize>(),
        TypeId::of::<isize>(),
    ];
    if let Some(i) = named.iter().position(|t| *t == id) {
        return NAMED[i].0;
    }
    BY_SIZE | (std::mem::size_of::<T>().min(0x7fff) as u16)
}

/// A readable name of an element code, for errors.
pub(crate) fn describe(code: u16) -> String {
    if let Some((_, name)) = NAMED.iter().find(|(c, _)| *c == code) {
        return format!("numbers of type {name}");
    }
    if code & BY_SIZE != 0 {
        return format!("plain values of {} bytes each", code & !BY_SIZE);
    }
    format!("elements of unknown type {code}")
}

/// The size in bytes of one element of a code, where the code says it.
#[inline]
pub(crate) fn size_of_code(code: u16) -> Option<usize> {
    const SIZES: [usize; 14] = [1, 1, 2, 2, 4, 4, 8, 8, 4, 8, 16, 16, 8, 8];
    match code {
        1..=14 => Some(SIZES[code as usize - 1]),
        c if c & BY_SIZE != 0 && c != 0xffff => Some((c & !BY_SIZE) as usize),
        _ => None,
    }
}

/// True if `len` bytes are a whole number of elements of `size` bytes (a
/// mask for the usual sizes, powers of two, instead of a division on
/// every message).
#[inline]
pub(crate) fn whole_elements(len: u64, size: u64) -> bool {
    if size.is_power_of_two() {
        len & (size - 1) == 0
    } else {
        size != 0 && len % size == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, Copy, bytemuck::Zeroable, bytemuck::Pod)]
    #[repr(C)]
    struct Point {
        x: f32,
        y: f32,
        z: f32,
    }

    #[test]
    fn types_get_distinct_codes_and_readable_names() {
        assert_ne!(code_of::<u32>(), code_of::<u64>());
        assert_ne!(code_of::<u32>(), code_of::<f32>());
        assert_ne!(code_of::<u64>(), code_of::<usize>());
        assert_eq!(code_of::<Point>(), 0x8000 | 12);
        assert_eq!(describe(code_of::<f64>()), "numbers of type f64");
        assert_eq!(describe(code_of::<Point>()), "plain values of 12 bytes each");
        assert_eq!(size_of_code(code_of::<u16>()), Some(2));
        assert_eq!(size_of_code(code_of::<Point>()), Some(12));
        assert_eq!(size_of_code(0), None);
    }

    #[test]
    fn whole_elements_by_mask_and_by_division() {
        for (len, size, whole) in [
            (0, 8, true),
            (16, 8, true),
            (12, 8, false),
            (24, 12, true),
            (18, 12, false),
        ] {
            assert_eq!(whole_elements(len, size), whole, "{len} bytes of {size}");
        }
        assert!(!whole_elements(8, 0));
    }
}
