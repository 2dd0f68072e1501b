//! TCP connections between ranks, made at start-up: each rank takes a port
//! on the address its launcher gave it when it registers, listens there
//! once it has the table of every rank's (before that a connection is
//! refused: nobody waits in its queue while the job starts), connects to
//! every rank below it (trying again while the peer is not listening yet)
//! and accepts every rank above it, and each connection proves the job's
//! secret both ways ([`crate::auth::Handshake`]) before it carries a frame.
//! All handshakes run at once on one thread, without blocking on any of
//! them. A stranger's connection is closed: at once if it says something
//! wrong, after a while if it says nothing; one that does not name the
//! job gets no answer at all (one that does gets a challenge it cannot
//! meet without the secret). Strangers do not hold up the job's own
//! connections; once every peer is connected the listener closes, so
//! there is nothing left to connect to.
//! What is left are connected stream sockets, which the socket mesh drives
//! as it drives Unix sockets.

use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::auth::{Handshake, Identity};
use crate::error::{Error, Result};
use crate::wire::Access;

use super::socket::poll_descriptors;

/// How long start-up may take to connect every peer, after the table.
pub(crate) const CONNECT_TIME: Duration = Duration::from_secs(60);

/// How long one accepted connection may take to prove itself.
const PROOF_TIME: Duration = Duration::from_secs(10);

/// The most accepted connections proving themselves at once; past it, the
/// oldest that has not named the job is closed (a peer names it at once;
/// a stranger's flood must not hold descriptors without bound).
const MOST_PENDING: usize = 256;

/// The most connections accepted per look at the listener, so that a
/// flood cannot keep this rank from its handshakes and its deadline.
const ACCEPTS_PER_LOOK: usize = 64;

/// How long the listener rests when this process is out of descriptors.
const OUT_OF_DESCRIPTORS_REST: Duration = Duration::from_millis(10);

/// How many times a connection to a peer is tried again after it closed
/// during the handshake (its listener may have shed it under a flood).
const RETRIES: u32 = 3;

/// A rank's port for its peers, taken before it registers (its card
/// gives the address), listened on from the table until every peer has
/// connected.
#[derive(Debug)]
pub(crate) struct TcpEndpoint {
    /// Bound, not yet listening.
    socket: OwnedFd,
    address: SocketAddr,
}

/// How long a peer that is not listening yet (it has not read the table)
/// is waited for between two tries, at most.
const REFUSED_PAUSE: Duration = Duration::from_millis(20);

impl TcpEndpoint {
    /// Takes a port the kernel picks on `ip` (bound: a connection is
    /// refused until [`TcpEndpoint::listen`]).
    pub fn open(ip: IpAddr) -> Result<TcpEndpoint> {
        use nix::sys::socket::{AddressFamily, SockFlag, SockType, SockaddrStorage, bind, getsockname, socket};
        let failed = |what: &str, e: nix::Error| Error::io(format!("{what} for peers on {ip}"), e.into());
        let family = if ip.is_ipv4() {
            AddressFamily::Inet
        } else {
            AddressFamily::Inet6
        };
        let flags = SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK;
        let socket = socket(family, SockType::Stream, flags, None).map_err(|e| failed("making a socket", e))?;
        bind(socket.as_raw_fd(), &SockaddrStorage::from(SocketAddr::new(ip, 0)))
            .map_err(|e| failed("taking a port", e))?;
        let bound: SockaddrStorage = getsockname(socket.as_raw_fd()).map_err(|e| failed("reading the port", e))?;
        let address = match (bound.as_sockaddr_in(), bound.as_sockaddr_in6()) {
            (Some(v4), _) => SocketAddr::V4((*v4).into()),
            (None, Some(v6)) => SocketAddr::V6((*v6).into()),
            (None, None) => {
                return Err(Error::Bootstrap(format!("the port taken on {ip} has no IP address")));
            }
        };
        Ok(TcpEndpoint { socket, address })
    }

    /// Starts taking connections (once the rank has the table: its peers
    /// connect from then on).
    pub fn listen(self) -> Result<TcpListener> {
        use nix::sys::socket::{Backlog, listen};
        let backlog = Backlog::new(128).map_err(|e| Error::io("listening for peers", e.into()))?;
        listen(&self.socket, backlog)
            .map_err(|e| Error::io(format!("listening for peers on {}", self.address), e.into()))?;
        Ok(TcpListener::from(self.socket))
    }

    /// Where peers reach it.
    pub fn address(&self) -> SocketAddr {
        self.address
    }
}

/// One connection whose handshake is under way.
struct Pending {
    stream: TcpStream,
    shake: Handshake,
    /// The rank this side connected to, or `None` for an accepted one.
    to: Option<usize>,
    /// When an accepted connection must have proved itself.
    until: Instant,
    tries: u32,
    /// An accepted connection that named the job (this side answered it):
    /// a peer, or someone who knows the job's id; never shed for a flood.
    answered: bool,
}

/// What one step of a handshake came to.
enum Step {
    Waiting,
    Done(usize),
    /// The other end closed or broke the connection.
    Closed(Error),
    /// The other end does not know the secret, or said something wrong.
    Refused(Error),
}

/// Connects rank `me` to every other rank of the job, whose listeners are
/// at `addresses` (indexed by rank), by `deadline`; returns each peer's
/// connection, by rank, ready for the socket mesh (non-blocking,
/// `TCP_NODELAY`).
pub(crate) fn connect_all(
    listener: TcpListener,
    me: usize,
    addresses: &[Option<SocketAddr>],
    over_tcp: &[bool],
    access: &Access,
    deadline: Instant,
) -> Result<Vec<(usize, OwnedFd)>> {
    let size = addresses.len();
    let wanted = |r: usize| r != me && over_tcp.get(r).copied().unwrap_or(false);
    if access.keys.rank() as usize != me {
        return Err(Error::protocol(
            "the launcher",
            "access",
            format!("keys of rank {} given to rank {me}", access.keys.rank()),
        ));
    }
    let keys = Arc::new(access.keys.clone());
    let id = Identity {
        keys: &keys,
        job: access.job,
    };
    let mut pending: Vec<Pending> = Vec::new();
    for rank in (0..me).filter(|r| wanted(*r)) {
        pending.push(dial(id, rank, addresses, deadline, 0)?);
    }
    let mut links: Vec<Option<TcpStream>> = (0..size).map(|_| None).collect();
    let mut missing = (0..size).filter(|r| wanted(*r)).count();
    // Out of descriptors, the listener rests a moment rather than wake
    // this rank at once, again and again.
    let mut resting_until: Option<Instant> = None;
    while missing > 0 {
        let now = Instant::now();
        if now >= deadline {
            let absent: Vec<usize> = (0..size).filter(|r| wanted(*r) && links[*r].is_none()).collect();
            return Err(Error::Bootstrap(format!(
                "rank {me} has no TCP connection to rank(s) {absent:?} by the deadline of start-up"
            )));
        }
        // Strangers past their time are closed.
        pending.retain(|p| p.to.is_some() || p.until > now);
        let resting = resting_until.is_some_and(|t| t > now);
        let mut fds = vec![libc::pollfd {
            fd: listener.as_raw_fd(),
            events: if resting { 0 } else { libc::POLLIN },
            revents: 0,
        }];
        fds.extend(pending.iter().map(|p| libc::pollfd {
            fd: p.stream.as_raw_fd(),
            events: if p.shake.output().is_empty() {
                libc::POLLIN
            } else {
                libc::POLLIN | libc::POLLOUT
            },
            revents: 0,
        }));
        let soonest = pending
            .iter()
            .filter(|p| p.to.is_none())
            .map(|p| p.until)
            .chain(resting_until.filter(|_| resting))
            .fold(deadline, Instant::min);
        poll_descriptors(&mut fds, Some(soonest.saturating_duration_since(now)))?;
        if fds[0].revents != 0 && !accept_some(&listener, id, &mut pending)? {
            resting_until = Some(Instant::now() + OUT_OF_DESCRIPTORS_REST);
        }
        let mut at = 0;
        while at < pending.len() {
            match step(&mut pending[at]) {
                Step::Waiting => {
                    at += 1;
                    continue;
                }
                Step::Done(peer) => {
                    let p = pending.swap_remove(at);
                    let expected_from_above = p.to.is_none() && peer > me && peer < size && wanted(peer);
                    if p.to != Some(peer) && !expected_from_above {
                        return Err(Error::protocol(
                            format!("rank {peer}"),
                            "rank",
                            format!(
                                "rank {me} of {size} accepted a connection from rank {peer}; only ranks above {me} \
                                 on other nodes connect to it"
                            ),
                        ));
                    }
                    if links[peer].is_some() {
                        return Err(Error::protocol(
                            format!("rank {peer}"),
                            "rank",
                            format!("a second connection from rank {peer} to rank {me}"),
                        ));
                    }
                    links[peer] = Some(p.stream);
                    missing -= 1;
                }
                Step::Closed(_) | Step::Refused(_) if pending[at].to.is_none() => {
                    // A stranger, or a peer whose first try broke off (it
                    // tries again): closed without an answer.
                    pending.swap_remove(at);
                }
                Step::Closed(e) => {
                    let p = pending.swap_remove(at);
                    let rank = p.to.unwrap_or_default();
                    if p.tries >= RETRIES {
                        return Err(e);
                    }
                    pending.push(dial(id, rank, addresses, deadline, p.tries + 1)?);
                }
                Step::Refused(e) => return Err(e),
            }
        }
    }
    links
        .into_iter()
        .enumerate()
        .filter_map(|(rank, s)| s.map(|s| (rank, s)))
        .map(|(rank, stream)| {
            stream
                .set_nodelay(true)
                .map_err(|e| Error::io(format!("configuring the connection to rank {rank}"), e))?;
            Ok((rank, OwnedFd::from(stream)))
        })
        .collect()
}

/// Connects to `rank`'s listener and starts the handshake.
fn dial(
    id: Identity<'_>,
    rank: usize,
    addresses: &[Option<SocketAddr>],
    deadline: Instant,
    tries: u32,
) -> Result<Pending> {
    let Some(address) = addresses[rank] else {
        return Err(Error::protocol(
            "the launcher",
            "table",
            format!("rank {rank}'s card has no TCP address"),
        ));
    };
    // A peer that has not read the table yet refuses: it is tried again,
    // a little later each time, until the deadline.
    let mut pause = Duration::from_millis(1);
    let stream = loop {
        let time = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1));
        match TcpStream::connect_timeout(&address, time) {
            Ok(stream) => break stream,
            Err(e) if e.kind() == ErrorKind::ConnectionRefused && Instant::now() + pause < deadline => {
                std::thread::sleep(pause);
                pause = (pause * 2).min(REFUSED_PAUSE);
            }
            Err(e) => return Err(Error::io(format!("connecting to rank {rank} at {address}"), e)),
        }
    };
    stream
        .set_nonblocking(true)
        .map_err(|e| Error::io(format!("configuring the connection to rank {rank}"), e))?;
    Ok(Pending {
        stream,
        shake: Handshake::connector(id, rank as u32, format!("rank {rank} at {address}"))?,
        to: Some(rank),
        until: deadline,
        tries,
        answered: false,
    })
}

/// Accepts the connections waiting on the listener (at most
/// ACCEPTS_PER_LOOK); false if this process is out of descriptors, so
/// that the listener rests a moment.
fn accept_some(listener: &TcpListener, id: Identity<'_>, pending: &mut Vec<Pending>) -> Result<bool> {
    for _ in 0..ACCEPTS_PER_LOOK {
        let (stream, from) = match listener.accept() {
            Ok(s) => s,
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(true),
            Err(e) if e.kind() == ErrorKind::Interrupted || e.kind() == ErrorKind::ConnectionAborted => continue,
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
                ) =>
            {
                shed_a_stranger(pending);
                return Ok(false);
            }
            Err(e) => return Err(Error::io("accepting a peer's connection", e)),
        };
        if pending.iter().filter(|p| p.to.is_none()).count() >= MOST_PENDING {
            shed_a_stranger(pending);
        }
        // A handshake needs fresh random bytes (a descriptor, for a
        // moment): without them this connection is closed, not the job.
        let Ok(shake) = Handshake::acceptor(id, format!("a connection from {from}")) else {
            shed_a_stranger(pending);
            return Ok(false);
        };
        if stream.set_nonblocking(true).is_err() {
            continue;
        }
        pending.push(Pending {
            stream,
            shake,
            to: None,
            until: Instant::now() + PROOF_TIME,
            tries: 0,
            answered: false,
        });
    }
    Ok(true)
}

/// Closes the accepted connection that has waited longest without naming
/// the job.
fn shed_a_stranger(pending: &mut Vec<Pending>) {
    let oldest = pending
        .iter()
        .enumerate()
        .filter(|(_, p)| p.to.is_none() && !p.answered)
        .min_by_key(|(_, p)| p.until)
        .map(|(at, _)| at);
    if let Some(at) = oldest {
        pending.swap_remove(at);
    }
}

/// Writes and reads what the handshake can now, without blocking.
fn step(p: &mut Pending) -> Step {
    let name = |p: &Pending| match p.to {
        Some(rank) => format!("rank {rank}"),
        None => "a connecting peer".to_string(),
    };
    loop {
        if !p.shake.output().is_empty() && p.to.is_none() {
            p.answered = true;
        }
        while !p.shake.output().is_empty() {
            match p.stream.write(p.shake.output()) {
                Ok(0) => return Step::Closed(Error::protocol(name(p), "stream", "closed during the handshake")),
                Ok(n) => p.shake.written(n),
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Step::Waiting,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Step::Closed(Error::io(format!("writing to {}", name(p)), e)),
            }
        }
        if let Some(peer) = p.shake.peer() {
            return Step::Done(peer as usize);
        }
        let mut buf = [0u8; 128];
        let want = p.shake.wanted().min(buf.len());
        match p.stream.read(&mut buf[..want]) {
            Ok(0) => {
                return Step::Closed(Error::protocol(
                    name(p),
                    "stream",
                    "the connection closed during the handshake",
                ));
            }
            Ok(n) => {
                if let Err(e) = p.shake.input(&buf[..n]) {
                    return Step::Refused(e);
                }
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Step::Waiting,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Step::Closed(Error::io(format!("reading from {}", name(p)), e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Secret;
    use std::sync::{Arc, Barrier, Mutex};

    /// Rank `me`'s access to a job of `size`, its keys from a secret of
    /// bytes `secret`.
    fn access(secret: u8, me: usize, size: usize) -> Access {
        let secret = Secret::from_bytes([secret; crate::auth::SECRET_LEN]);
        Access {
            job: 42,
            keys: crate::auth::PairKeys::derive(&secret, 42, me as u32, size as u32),
            listen: IpAddr::from([127, 0, 0, 1]),
        }
    }

    /// Runs `size` ranks as threads, rank r with secret `secrets[r]`, after
    /// `before` has had a go at rank 0's listener; each rank's result.
    fn job(secrets: &[u8], time: Duration, before: impl FnOnce(SocketAddr)) -> Vec<Result<Vec<usize>>> {
        let size = secrets.len();
        let endpoints: Vec<TcpEndpoint> = (0..size)
            .map(|_| TcpEndpoint::open(IpAddr::from([127, 0, 0, 1])).unwrap())
            .collect();
        let addresses: Vec<Option<SocketAddr>> = endpoints.iter().map(|e| Some(e.address())).collect();
        // Before the table, a rank's port refuses connections.
        let refused = TcpStream::connect(endpoints[0].address()).map(|_| ()).unwrap_err();
        assert_eq!(refused.kind(), ErrorKind::ConnectionRefused, "{refused}");
        let endpoints: Vec<TcpListener> = endpoints.into_iter().map(|e| e.listen().unwrap()).collect();
        before(addresses[0].unwrap());
        let start = Arc::new(Barrier::new(size));
        let results = Arc::new(Mutex::new(Vec::new()));
        let threads: Vec<_> = endpoints
            .into_iter()
            .enumerate()
            .map(|(me, endpoint)| {
                let (addresses, start, results) = (addresses.clone(), start.clone(), results.clone());
                let access = access(secrets[me], me, size);
                std::thread::spawn(move || {
                    start.wait();
                    let everyone = vec![true; addresses.len()];
                    let links = connect_all(endpoint, me, &addresses, &everyone, &access, Instant::now() + time);
                    let ranks = links.map(|l| l.into_iter().map(|(r, _)| r).collect());
                    results.lock().unwrap().push((me, ranks));
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let mut results = std::mem::take(&mut *results.lock().unwrap());
        results.sort_by_key(|(me, _)| *me);
        results.into_iter().map(|(_, r)| r).collect()
    }

    #[test]
    fn every_rank_connects_to_every_other_despite_strangers() {
        let strangers = Arc::new(Mutex::new(Vec::new()));
        let held = strangers.clone();
        let results = job(&[1, 1, 1, 1], CONNECT_TIME, move |rank0| {
            // Garbage, a plausible frame start, and silence, before the
            // peers connect: none of them may hold the job up.
            for bytes in [&[0xa5u8; 200][..], b"SPMD\x02\x04\0\0", b""] {
                let mut s = TcpStream::connect(rank0).unwrap();
                s.write_all(bytes).unwrap();
                held.lock().unwrap().push(s);
            }
        });
        for (me, r) in results.iter().enumerate() {
            let mut want: Vec<usize> = (0..4).filter(|p| *p != me).collect();
            let mut got = r.as_ref().unwrap().clone();
            got.sort();
            want.sort();
            assert_eq!(got, want, "rank {me}");
        }
        // The strangers got no byte, and their connections are closed.
        for mut s in strangers.lock().unwrap().drain(..) {
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let mut b = [0u8; 16];
            assert!(matches!(s.read(&mut b), Ok(0) | Err(_)), "a stranger was answered");
        }
    }

    #[test]
    fn a_rank_without_the_secret_is_refused() {
        // Rank 1 has another secret: it connects to rank 0, which must not
        // take it, and rank 1 must not take rank 0's answer either; rank 0
        // gives up at its deadline, naming the rank it never got.
        let results = job(&[1, 2], Duration::from_secs(2), |_| {});
        let e = results[1].as_ref().unwrap_err();
        assert!(matches!(e, Error::Authentication { .. }), "{e}");
        assert!(e.to_string().contains("rank 0"), "{e}");
        let e = results[0].as_ref().unwrap_err();
        assert!(e.to_string().contains("no TCP connection to rank(s) [1]"), "{e}");
    }
}
