//! Copies of a few bytes in moves of a fixed size, for the hot paths of
//! small messages: a copy of a length the compiler does not know is a
//! call of `memcpy` (callgrind on `osu_bw 8`: about 5 instructions a
//! message more on each side than these moves).

use std::ptr::copy_nonoverlapping;

/// Copies `from` to `to`, writing exactly `from.len()` bytes there: two
/// moves of a fixed size that overlap unless the length is a power of two
/// (one `memcpy` for more than 64 bytes).
///
/// # Safety
///
/// `to` must be valid for writes of `from.len()` bytes, and must not
/// overlap `from`.
#[inline(always)]
pub(crate) unsafe fn copy_short(from: &[u8], to: *mut u8) {
    /// The first and the last `K` bytes (`K <= len <= 2K`).
    ///
    /// # Safety
    ///
    /// As for [`copy_short`], with `K <= from.len()`.
    #[inline(always)]
    unsafe fn ends<const K: usize>(from: &[u8], to: *mut u8) {
        let len = from.len();
        // SAFETY: both moves stay within the first `len` bytes of each
        // side (`K <= len`), which the caller vouches for.
        unsafe {
            copy_nonoverlapping(from.as_ptr(), to, K);
            copy_nonoverlapping(from.as_ptr().add(len - K), to.add(len - K), K);
        }
    }
    let len = from.len();
    // SAFETY: each arm stays within the first `len` bytes (see above).
    unsafe {
        match len {
            0 => {}
            1..=3 => {
                *to = from[0];
                *to.add(len / 2) = from[len / 2];
                *to.add(len - 1) = from[len - 1];
            }
            4..=7 => ends::<4>(from, to),
            8..=15 => ends::<8>(from, to),
            16..=31 => ends::<16>(from, to),
            32..=64 => ends::<32>(from, to),
            _ => copy_nonoverlapping(from.as_ptr(), to, len),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::copy_short;

    #[test]
    fn every_length_arrives_whole_and_nothing_past_it_is_written() {
        let from: Vec<u8> = (1..=100).collect();
        for len in 0..=100 {
            let mut to = [0xeeu8; 120];
            // SAFETY: `to` has room for 100 bytes, apart from `from`.
            unsafe { copy_short(&from[..len], to.as_mut_ptr()) };
            assert_eq!(to[..len], from[..len], "{len} bytes");
            assert!(
                to[len..].iter().all(|&b| b == 0xee),
                "{len} bytes: past the end {:?}",
                &to[len..]
            );
        }
    }
}
