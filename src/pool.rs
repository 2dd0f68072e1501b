//! Reusable buffers for large message payloads. Allocating a fresh megabyte
//! for every message costs more in page faults than copying it; buffers
//! given back when a message is done are handed out again instead.
//!
//! The pool is per thread (a rank's engine runs on one thread), keeps only
//! buffers of at least [`MIN_POOLED`] bytes, and at most [`MAX_BUFFERS`] of
//! them holding [`MAX_BYTES`] in all.

use std::cell::RefCell;

/// Smaller buffers come from the allocator as usual.
pub(crate) const MIN_POOLED: usize = 64 << 10;
const MAX_BUFFERS: usize = 64;
const MAX_BYTES: usize = 32 << 20;

thread_local! {
    static POOL: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
}

/// A buffer of exactly `len` initialized bytes (contents unspecified), or
/// `None` if memory runs out.
pub(crate) fn take(len: usize) -> Option<Vec<u8>> {
    if len >= MIN_POOLED {
        let reused = POOL.with(|p| {
            let mut p = p.borrow_mut();
            // The smallest buffer that is large enough.
            let best = p
                .iter()
                .enumerate()
                .filter(|(_, b)| b.capacity() >= len)
                .min_by_key(|(_, b)| b.capacity())
                .map(|(i, _)| i);
            best.map(|i| p.swap_remove(i))
        });
        if let Some(mut buf) = reused {
            if buf.len() >= len {
                buf.truncate(len);
            } else {
                buf.resize(len, 0);
            }
            return Some(buf);
        }
    }
    let mut buf = Vec::new();
    buf.try_reserve_exact(len).ok()?;
    buf.resize(len, 0);
    Some(buf)
}

/// A copy of `bytes` in a pooled buffer.
pub(crate) fn copy_of(bytes: &[u8]) -> Vec<u8> {
    if bytes.len() < MIN_POOLED {
        return bytes.to_vec();
    }
    match take(bytes.len()) {
        Some(mut buf) => {
            buf.copy_from_slice(bytes);
            buf
        }
        None => bytes.to_vec(),
    }
}

/// Gives a buffer back for reuse (small ones are simply freed: an empty
/// one, as every message that landed in its receive's buffer has, costs a
/// comparison).
#[inline]
pub(crate) fn give(buf: Vec<u8>) {
    if buf.capacity() < MIN_POOLED || buf.capacity() > MAX_BYTES {
        return;
    }
    keep(buf);
}

/// Keeps a buffer of a size worth pooling.
fn keep(buf: Vec<u8>) {
    POOL.with(|p| {
        let Ok(mut p) = p.try_borrow_mut() else { return };
        // Make room by dropping smaller buffers: recent sizes are the ones
        // that will be asked for again.
        loop {
            let held: usize = p.iter().map(Vec::capacity).sum();
            if p.len() < MAX_BUFFERS && held + buf.capacity() <= MAX_BYTES {
                p.push(buf);
                return;
            }
            let smallest = p
                .iter()
                .enumerate()
                .min_by_key(|(_, b)| b.capacity())
                .map(|(i, b)| (i, b.capacity()));
            match smallest {
                Some((i, cap)) if cap <= buf.capacity() => {
                    p.swap_remove(i);
                }
                _ => return,
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_come_back_with_the_right_length() {
        let a = take(MIN_POOLED * 2).unwrap();
        let ptr = a.as_ptr();
        give(a);
        let b = take(MIN_POOLED + 1).unwrap();
        assert_eq!(b.len(), MIN_POOLED + 1);
        assert_eq!(b.as_ptr(), ptr, "the pooled buffer is reused");
        give(b);
        let c = take(MIN_POOLED * 2).unwrap();
        assert_eq!(c.len(), MIN_POOLED * 2);
        assert_eq!(copy_of(&[1, 2, 3]), vec![1, 2, 3]);
    }
}
