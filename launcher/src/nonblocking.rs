//! Reading a nonblocking pipe or socket without waiting: one chunk at a
//! time (output, read only while there is room for it) or all it holds
//! (messages, read as they come).

use std::os::fd::{AsRawFd, BorrowedFd};

use nix::errno::Errno;

/// The most one read takes.
const CHUNK: usize = 64 << 10;

/// How many bytes a pipe or socket holds now (0 if it cannot say).
pub fn held_bytes(fd: BorrowedFd<'_>) -> usize {
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int through the pointer it is given.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), libc::FIONREAD, &mut n) };
    if r == 0 { n.max(0) as usize } else { 0 }
}

/// Reads, through `read_one` (one chunk each call, returning its length),
/// the `held` bytes a pipe holds now and no more (a process that holds the
/// pipe too may keep writing), then once more, which finds the pipe's end
/// if nothing else holds it.
pub fn read_held(held: usize, mut read_one: impl FnMut() -> usize) {
    let mut left = held;
    while left > 0 {
        match read_one() {
            0 => return,
            n => left = left.saturating_sub(n),
        }
    }
    read_one();
}

/// Reads one chunk: `Some(bytes)`, empty when nothing is there now, or
/// `None` once the other end has closed (or the descriptor failed).
pub fn read_chunk(fd: BorrowedFd<'_>) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; CHUNK];
    loop {
        return match nix::unistd::read(fd, &mut buf) {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some(buf)
            }
            Err(Errno::EAGAIN) => Some(Vec::new()),
            Err(Errno::EINTR) => continue,
            Err(_) => None,
        };
    }
}

/// Appends everything `fd` holds now to `into`; true once the other end
/// has closed (or the descriptor failed).
pub fn read_all(fd: BorrowedFd<'_>, into: &mut Vec<u8>) -> bool {
    loop {
        match read_chunk(fd) {
            None => return true,
            Some(bytes) if bytes.is_empty() => return false,
            Some(bytes) => into.extend_from_slice(&bytes),
        }
    }
}

/// Makes `fd` nonblocking.
pub fn set_nonblocking(fd: BorrowedFd<'_>) -> Result<(), String> {
    use nix::fcntl::{FcntlArg, OFlag, fcntl};
    let flags = fcntl(fd, FcntlArg::F_GETFL).map_err(|e| format!("fcntl: {e}"))?;
    fcntl(
        fd,
        FcntlArg::F_SETFL(OFlag::from_bits_truncate(flags) | OFlag::O_NONBLOCK),
    )
    .map(|_| ())
    .map_err(|e| format!("fcntl on descriptor {}: {e}", fd.as_raw_fd()))
}
