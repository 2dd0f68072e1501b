//! What the descriptors a rank offers with its card must be, checked by
//! whoever receives them (the launcher, the agent, the peer that uses
//! them): a rank that passes something else (a pipe no one reads as its
//! wake-up socket, say) must not stop the ranks that write to it. The
//! errors name the kind of descriptor, never its name (which the rank
//! chose).

use std::os::fd::{AsRawFd, BorrowedFd};

/// `Ok` if `fd` is a Unix datagram socket, as a rank's wake-up descriptor
/// is; otherwise what it is instead, in words that follow "is" (its kind
/// only: nothing a rank could choose, such as a file's name).
pub fn check_wake_socket(fd: BorrowedFd<'_>) -> Result<(), String> {
    use nix::sys::socket::{getsockopt, sockopt};
    let mode = nix::sys::stat::fstat(fd)
        .map_err(|e| format!("not open ({e})"))?
        .st_mode;
    if mode & libc::S_IFMT != libc::S_IFSOCK {
        return Err(format!("not a datagram socket ({})", kind(mode)));
    }
    let datagram = getsockopt(&fd, sockopt::SockType).is_ok_and(|t| t == nix::sys::socket::SockType::Datagram);
    if !datagram || !is_unix(fd) {
        return Err("not a Unix datagram socket (a socket of another kind)".into());
    }
    Ok(())
}

/// True if `fd`, a socket, is of the Unix domain.
fn is_unix(fd: BorrowedFd<'_>) -> bool {
    let mut domain: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: a plain getsockopt into a live int of the length given.
    let got = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_DOMAIN,
            (&raw mut domain).cast(),
            &mut len,
        )
    };
    got == 0 && domain == libc::AF_UNIX
}

/// The kind of file a mode says, in words.
fn kind(mode: libc::mode_t) -> &'static str {
    match mode & libc::S_IFMT {
        libc::S_IFIFO => "a pipe",
        libc::S_IFREG => "a file",
        libc::S_IFDIR => "a directory",
        libc::S_IFCHR | libc::S_IFBLK => "a device",
        libc::S_IFSOCK => "a socket",
        libc::S_IFLNK => "a link",
        _ => "an anonymous descriptor",
    }
}

/// `Ok` if `fd` is a memory file sealed against shrinking and growing, as
/// a rank's shared-memory segment is; otherwise what is wrong, in words
/// that follow "is".
pub fn check_segment(fd: BorrowedFd<'_>) -> Result<(), String> {
    // SAFETY: a plain fcntl on a descriptor the caller holds.
    let seals = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GET_SEALS) };
    let needed = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW;
    if seals < 0 {
        let mode = nix::sys::stat::fstat(fd).map_or(0, |st| st.st_mode);
        return Err(format!("not a memory file ({})", kind(mode)));
    }
    if seals & needed != needed {
        return Err(format!("not sealed against resizing (seals {seals:#x})"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::socket::{AddressFamily, SockFlag, SockType, socketpair};
    use std::os::fd::{AsFd, FromRawFd, OwnedFd};

    #[test]
    fn only_a_unix_datagram_socket_wakes() {
        let (a, b) = socketpair(AddressFamily::Unix, SockType::Datagram, None, SockFlag::empty()).expect("a pair");
        assert_eq!(check_wake_socket(a.as_fd()), Ok(()));
        assert_eq!(check_wake_socket(b.as_fd()), Ok(()));
        let (s, _t) = socketpair(AddressFamily::Unix, SockType::Stream, None, SockFlag::empty()).expect("a pair");
        assert_eq!(
            check_wake_socket(s.as_fd()),
            Err("not a Unix datagram socket (a socket of another kind)".into())
        );
        let (read, write) = nix::unistd::pipe().expect("pipe");
        for fd in [read.as_fd(), write.as_fd()] {
            assert_eq!(check_wake_socket(fd), Err("not a datagram socket (a pipe)".into()));
        }
        // SAFETY: plain eventfd creation; the result is checked.
        let event = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
        assert!(event >= 0);
        // SAFETY: just made, owned here.
        let event = unsafe { OwnedFd::from_raw_fd(event) };
        assert_eq!(
            check_wake_socket(event.as_fd()),
            Err("not a datagram socket (an anonymous descriptor)".into())
        );
        let file = std::fs::File::open("/proc/self/stat").expect("a file");
        assert_eq!(
            check_wake_socket(file.as_fd()),
            Err("not a datagram socket (a file)".into())
        );
        assert_eq!(check_segment(file.as_fd()), Err("not a memory file (a file)".into()));
    }
}
