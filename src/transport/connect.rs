//! Making the connections between ranks at start-up: every handshake at
//! once, driven by one `poll` loop, under one deadline for them all. A
//! connection from a process of another user is closed before a byte is
//! read from it; one that does not prove the job's secret, or says nothing,
//! holds up nobody else and is dropped; strangers are counted, not logged
//! one line each.

use std::io::{ErrorKind, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};

use crate::auth::{Handshake, Identity};
use crate::error::{Error, Result};

/// How long start-up waits for all of a rank's connections.
pub(super) const CONNECT_TIMEOUT: Duration = Duration::from_secs(60);
/// The most handshakes an acceptor runs at once; more wait in the backlog.
const MAX_PENDING: usize = 256;

/// One connection being made.
struct Pending {
    stream: UnixStream,
    handshake: Handshake,
    /// The rank dialled, for connections this rank made.
    dialled: Option<usize>,
}

/// What strangers tried, for one line of report.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Refused {
    /// Connections from processes of another user.
    pub other_users: usize,
    /// Connections that failed the handshake or closed during it.
    pub failed: usize,
}

impl Refused {
    fn any(&self) -> bool {
        self.other_users + self.failed > 0
    }
}

/// Connects to every rank of `dial` (rank, socket path) and accepts every
/// rank of `expect` on `listener`, proving the job's secret on each;
/// returns the connected streams by rank, in blocking mode.
pub(super) fn connect_all(
    listener: &UnixListener,
    id: Identity<'_>,
    dial: Vec<(usize, PathBuf)>,
    expect: &[usize],
) -> Result<(Vec<(usize, UnixStream)>, Refused)> {
    let deadline = Instant::now() + CONNECT_TIMEOUT;
    listener
        .set_nonblocking(true)
        .map_err(|e| Error::io("making the listener non-blocking", e))?;
    let me = geteuid();
    let mut to_dial = dial;
    let mut pending: Vec<Pending> = Vec::new();
    let mut done: Vec<(usize, UnixStream)> = Vec::new();
    let mut refused = Refused::default();
    let wanted = to_dial.len() + expect.len();
    while done.len() < wanted {
        // Dial what can be dialled (a full backlog says "try again").
        let mut still = Vec::new();
        for (rank, path) in to_dial {
            match UnixStream::connect(&path) {
                Ok(stream) => {
                    let name = format!("rank {rank}");
                    stream
                        .set_nonblocking(true)
                        .map_err(|e| Error::io(format!("configuring the connection to {name}"), e))?;
                    let handshake = Handshake::connector(id, rank as u32, name)?;
                    pending.push(Pending {
                        stream,
                        handshake,
                        dialled: Some(rank),
                    });
                }
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => {
                    still.push((rank, path));
                }
                Err(e) => return Err(Error::io(format!("connecting to rank {rank} at {}", path.display()), e)),
            }
        }
        to_dial = still;
        // Accept whoever knocks, while ranks are missing.
        let accepting = expect.iter().any(|r| !done.iter().any(|(d, _)| d == r));
        while accepting && pending.iter().filter(|p| p.dialled.is_none()).count() < MAX_PENDING {
            match listener.accept() {
                Ok((stream, _)) => {
                    // Another user's process is refused before anything is read.
                    let same_user = getsockopt(&stream, PeerCredentials).is_ok_and(|c| c.uid() == me);
                    if !same_user {
                        refused.other_users += 1;
                        continue;
                    }
                    stream
                        .set_nonblocking(true)
                        .map_err(|e| Error::io("configuring a peer connection", e))?;
                    let handshake = Handshake::acceptor(id, "a connecting peer")?;
                    pending.push(Pending {
                        stream,
                        handshake,
                        dialled: None,
                    });
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                // Out of descriptors, say: this rank's own failure.
                Err(e) => return Err(Error::io("accepting a peer connection", e)),
            }
        }
        // Move every handshake as far as it goes without waiting.
        let mut i = 0;
        while i < pending.len() {
            match step(&mut pending[i]) {
                Ok(None) => i += 1,
                Ok(Some(peer)) => {
                    let p = pending.swap_remove(i);
                    let peer = peer as usize;
                    let fits = match p.dialled {
                        Some(r) => r == peer,
                        None => expect.contains(&peer) && !done.iter().any(|(d, _)| *d == peer),
                    };
                    if fits {
                        p.stream
                            .set_nonblocking(false)
                            .map_err(|e| Error::io(format!("configuring the connection to rank {peer}"), e))?;
                        done.push((peer, p.stream));
                    } else {
                        refused.failed += 1;
                    }
                }
                Err(e) => {
                    let p = pending.swap_remove(i);
                    match p.dialled {
                        // A rank this one dialled must answer properly.
                        Some(_) => return Err(e),
                        None => refused.failed += 1,
                    }
                }
            }
        }
        if done.len() == wanted {
            break;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(timed_out(&done, expect, &to_dial, &pending, refused));
        }
        wait(listener, &pending, accepting, !to_dial.is_empty(), left)?;
    }
    Ok((done, refused))
}

/// Writes and reads what a handshake can without waiting; the peer's id
/// once it is done.
fn step(p: &mut Pending) -> Result<Option<u32>> {
    loop {
        if !p.handshake.output().is_empty() {
            match p.stream.write(p.handshake.output()) {
                Ok(n) => p.handshake.written(n),
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(None),
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(Error::io("writing a handshake", e)),
            }
            continue;
        }
        if let Some(peer) = p.handshake.peer() {
            return Ok(Some(peer));
        }
        let mut buf = [0u8; 128];
        let n = p.handshake.wanted().min(buf.len());
        match p.stream.read(&mut buf[..n]) {
            Ok(0) => {
                return Err(Error::protocol(
                    "a connecting peer",
                    "stream",
                    "the connection closed during the handshake",
                ));
            }
            Ok(got) => p.handshake.input(&buf[..got])?,
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(None),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(Error::io("reading a handshake", e)),
        }
    }
}

/// Sleeps until a handshake, or the listener, can move, or a little while
/// when a dial must be tried again.
fn wait(listener: &UnixListener, pending: &[Pending], accepting: bool, redial: bool, left: Duration) -> Result<()> {
    let mut fds = Vec::with_capacity(pending.len() + 1);
    if accepting {
        fds.push(PollFd::new(listener.as_fd(), PollFlags::POLLIN));
    }
    for p in pending {
        let events = if p.handshake.output().is_empty() {
            PollFlags::POLLIN
        } else {
            PollFlags::POLLOUT
        };
        fds.push(PollFd::new(p.stream.as_fd(), events));
    }
    let cap = if redial { Duration::from_millis(1) } else { left };
    let ms = left.min(cap).as_millis().clamp(1, 60_000) as i32;
    match poll(&mut fds, PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX)) {
        Ok(_) | Err(Errno::EINTR) => Ok(()),
        Err(e) => Err(Error::io("waiting for peers to connect", e.into())),
    }
}

fn timed_out(
    done: &[(usize, UnixStream)],
    expect: &[usize],
    to_dial: &[(usize, PathBuf)],
    pending: &[Pending],
    refused: Refused,
) -> Error {
    let mut missing: Vec<usize> = expect
        .iter()
        .copied()
        .filter(|r| !done.iter().any(|(d, _)| d == r))
        .collect();
    missing.extend(to_dial.iter().map(|(r, _)| *r));
    missing.extend(pending.iter().filter_map(|p| p.dialled));
    missing.sort_unstable();
    let list: Vec<String> = missing.iter().map(ToString::to_string).collect();
    let strangers = if refused.any() {
        format!(
            " (meanwhile {} connections from other users and {} that failed the handshake were refused)",
            refused.other_users, refused.failed
        )
    } else {
        String::new()
    };
    Error::Timeout {
        what: format!("ranks {} to connect{strangers}", list.join(", ")),
        seconds: CONNECT_TIMEOUT.as_secs_f64(),
    }
}

fn geteuid() -> u32 {
    nix::unistd::geteuid().as_raw()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Secret;
    use std::io::Write;

    /// Real ranks connect while same-user strangers hold connections idle,
    /// send garbage, or send the start of a Hello and nothing more: every
    /// real connection is made, at once, and the strangers are counted.
    #[test]
    fn strangers_hold_up_nobody() {
        let dir = std::env::temp_dir().join(format!("spmd-connect-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("0.sock");
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path).unwrap();
        let secret = Secret::random().unwrap();
        let id = Identity {
            secret: &secret,
            job: 5,
            me: 0,
        };
        // Strangers first, so that they are ahead of the ranks in the backlog.
        let mut strangers = Vec::new();
        for i in 0..6 {
            let mut s = UnixStream::connect(&path).unwrap();
            match i % 3 {
                0 => {}
                1 => s.write_all(&[0xa5; 100]).unwrap(),
                _ => s.write_all(b"SPMD\x02\x04").unwrap(),
            }
            strangers.push(s);
        }
        let ranks: Vec<_> = (1..4u32)
            .map(|me| {
                let (path, secret) = (path.clone(), secret.clone());
                std::thread::spawn(move || {
                    let id = Identity {
                        secret: &secret,
                        job: 5,
                        me,
                    };
                    let mut s = UnixStream::connect(&path).unwrap();
                    crate::auth::connect(&mut s, id, 0, "rank 0")
                })
            })
            .collect();
        let started = Instant::now();
        let (done, refused) = connect_all(&listener, id, Vec::new(), &[1, 2, 3]).unwrap();
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "strangers held up the ranks"
        );
        let mut got: Vec<usize> = done.iter().map(|(r, _)| *r).collect();
        got.sort_unstable();
        assert_eq!(got, [1, 2, 3]);
        for r in ranks {
            r.join().unwrap().unwrap();
        }
        // The garbage was refused; the idle ones were simply not waited for.
        assert!(refused.failed >= 2, "{refused:?}");
        drop(strangers);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
