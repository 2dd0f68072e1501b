//! What the descriptors a rank offers with its card must be, checked by
//! whoever receives them (the launcher, the agent, the peer that uses
//! them): a rank that passes something else (a pipe no one reads as its
//! wake-up eventfd, say) must not stop the ranks that write to it.

use std::os::fd::{AsRawFd, BorrowedFd};

/// `Ok` if `fd` is an eventfd; otherwise what it is instead, in words
/// that follow "is".
/// An eventfd is an anonymous inode (no file type); where `/proc` is
/// mounted, its link also names the kind of anonymous inode, which tells
/// an eventfd from, say, an epoll descriptor.
pub fn check_eventfd(fd: BorrowedFd<'_>) -> Result<(), String> {
    let mode = nix::sys::stat::fstat(fd)
        .map_err(|e| format!("not open ({e})"))?
        .st_mode;
    let link = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()));
    let kind = link.map(|l| l.to_string_lossy().into_owned());
    if mode & libc::S_IFMT != 0 || kind.as_ref().is_ok_and(|k| k != "anon_inode:[eventfd]") {
        let what = kind.unwrap_or_else(|_| format!("mode {mode:#o}"));
        return Err(format!("not an eventfd ({what})"));
    }
    Ok(())
}

/// `Ok` if `fd` is a memory file sealed against shrinking and growing, as
/// a rank's shared-memory segment is; otherwise what is wrong, in words
/// that follow "is".
pub fn check_segment(fd: BorrowedFd<'_>) -> Result<(), String> {
    // SAFETY: a plain fcntl on a descriptor the caller holds.
    let seals = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GET_SEALS) };
    let needed = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW;
    if seals < 0 || seals & needed != needed {
        return Err(format!("not sealed against resizing (seals {seals:#x})"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::{AsFd, FromRawFd, OwnedFd};

    #[test]
    fn only_an_eventfd_is_an_eventfd() {
        // SAFETY: plain descriptor creation; the results are checked.
        let event = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
        assert!(event >= 0);
        // SAFETY: just made, owned here.
        let event = unsafe { OwnedFd::from_raw_fd(event) };
        assert_eq!(check_eventfd(event.as_fd()), Ok(()));
        let (read, write) = nix::unistd::pipe().expect("pipe");
        for fd in [read.as_fd(), write.as_fd()] {
            let why = check_eventfd(fd).expect_err("a pipe");
            assert!(why.starts_with("not an eventfd (pipe:"), "{why}");
        }
        // SAFETY: plain epoll creation; the result is checked.
        let epoll = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        assert!(epoll >= 0);
        // SAFETY: just made, owned here.
        let epoll = unsafe { OwnedFd::from_raw_fd(epoll) };
        assert!(check_eventfd(epoll.as_fd()).is_err());
        let file = std::fs::File::open("/proc/self/stat").expect("a file");
        assert!(check_eventfd(file.as_fd()).is_err());
    }
}
