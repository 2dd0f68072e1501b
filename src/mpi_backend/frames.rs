//! Frames (a header and a small message's payload, at most `FRAME` bytes)
//! for the MPI backend's requests, reused instead of allocated for each
//! message. A fresh 4 KiB receive frame per message made glibc grow and
//! shrink its heap with every window of a stream of small messages (a
//! `brk` call and page faults each time): `osu_bw` at 8 B ran at a tenth
//! of MPI's own rate.

use std::cell::RefCell;

use super::point_to_point::FRAME;

/// The most spare frames a thread keeps: up to 1 MiB idle per thread that
/// used the MPI backend.
const KEEP: usize = 256;

thread_local! {
    /// This thread's spare frames, empty, with room for `FRAME` bytes.
    static SPARE: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
}

/// An empty frame with room for `FRAME` bytes.
pub(super) fn take() -> Vec<u8> {
    let spare = SPARE.try_with(|s| s.try_borrow_mut().ok().and_then(|mut s| s.pop()));
    spare.ok().flatten().unwrap_or_else(|| Vec::with_capacity(FRAME))
}

/// Gives back a frame MPI no longer uses (others are simply freed).
pub(super) fn give(mut frame: Vec<u8>) {
    if !(FRAME..=2 * FRAME).contains(&frame.capacity()) {
        return;
    }
    frame.clear();
    // During thread exit the spares may be gone: the frame is freed.
    let _ = SPARE.try_with(|s| {
        if let Ok(mut s) = s.try_borrow_mut() {
            if s.len() < KEEP {
                s.push(frame);
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frame_given_back_is_taken_again() {
        let mut f = take();
        assert!(f.capacity() >= FRAME && f.is_empty());
        f.extend_from_slice(b"abc");
        let at = f.as_ptr();
        give(f);
        let again = take();
        assert_eq!((again.as_ptr(), again.len()), (at, 0));
        // Other buffers are not kept.
        give(Vec::with_capacity(10));
        assert!(take().capacity() >= FRAME);
    }
}
