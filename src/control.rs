//! The rank's side of its control channel to spmdrun: a Unix socket the
//! launcher made for this rank alone and the rank inherited. Over it the
//! rank learns what every rank agrees on, registers, receives the table of
//! peers and either the shared-memory segments of its node or its ends of
//! the socket pairs to its peers, and reports finalize, abort, panics and
//! failures.

use std::os::fd::{BorrowedFd, FromRawFd, OwnedFd};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::bootstrap::Placement;
use crate::error::{Error, Result};
use crate::wire::status::Page;
use crate::wire::{Access, Card, Channel, ControlMessage, LAUNCHER_ID, Settings, TransportKind};

const LAUNCHER: &str = "the launcher (spmdrun)";
/// How long the launcher may take to answer Hello.
const WELCOME_TIMEOUT: Duration = Duration::from_secs(60);

/// The control channel, reachable from the panic hook and `abort`.
static CHANNEL: Mutex<Option<Channel>> = Mutex::new(None);

/// What the launcher tells a rank that says hello.
#[derive(Debug)]
pub(crate) struct Welcome {
    pub settings: Settings,
    /// The job's id, secret and listening address, over TCP.
    pub access: Option<Access>,
    pub status: Page,
}

/// What the launcher sends once every rank has registered.
#[derive(Debug)]
pub(crate) struct Table {
    pub nodes: Vec<u32>,
    /// The segments of the other ranks of this node, by rank, each with
    /// its rank's wake-up socket in a job that spans nodes.
    pub segments: Vec<(usize, OwnedFd, Option<OwnedFd>)>,
    /// This rank's ends of its socket pairs to the other ranks, by rank.
    pub links: Vec<(usize, OwnedFd)>,
    /// Where every rank listens for TCP connections, by rank.
    pub addresses: Vec<Option<std::net::SocketAddr>>,
}

/// Takes the inherited control channel after checking that it is one:
/// a Unix socket whose other end the launcher made. A program started by
/// a rank (not by spmdrun) inherits the environment but not the channel,
/// and gets an error here instead of talking to whatever has that number.
fn take_channel(p: &Placement) -> Result<Channel> {
    let fd = p.control_fd;
    let not_ours = |why: String| {
        Error::Bootstrap(format!(
            "{}=fd:{fd}:{} does not lead to spmdrun ({why}); was this program started by a rank rather than by spmdrun?",
            crate::wire::env::CONTROL,
            p.launcher_pid
        ))
    };
    // SAFETY: only inspects the descriptor number; nothing is taken yet.
    let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
    let stat = nix::sys::stat::fstat(borrowed).map_err(|e| not_ours(format!("descriptor {fd}: {e}")))?;
    if stat.st_mode & libc::S_IFMT != libc::S_IFSOCK {
        return Err(not_ours("it is not a socket".into()));
    }
    let creds = nix::sys::socket::getsockopt(&borrowed, nix::sys::socket::sockopt::PeerCredentials)
        .map_err(|e| not_ours(format!("no peer credentials: {e}")))?;
    if creds.pid() != p.launcher_pid || creds.uid() != nix::unistd::geteuid().as_raw() {
        return Err(not_ours(format!(
            "its other end is process {} of user {}",
            creds.pid(),
            creds.uid()
        )));
    }
    // SAFETY: the descriptor is the inherited socket just checked; this
    // rank takes it over (init runs once per process).
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    // Programs this rank starts must not inherit the channel.
    nix::fcntl::fcntl(&owned, nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC))
        .map_err(|e| Error::io("closing the control channel to child processes", e.into()))?;
    Ok(Channel::new(owned, p.rank as u32, LAUNCHER_ID, LAUNCHER))
}

/// Opens the control channel and says hello; returns the channel and what
/// the launcher answered.
pub(crate) fn join(p: &Placement) -> Result<(Channel, Welcome)> {
    let mut channel = take_channel(p)?;
    let hello = ControlMessage::Hello {
        rank: p.rank as u32,
        pid: std::process::id(),
    };
    channel.send(&hello, &[])?;
    let (msg, fds) = channel.receive(Some(Instant::now() + WELCOME_TIMEOUT))?;
    let ControlMessage::Welcome { settings, access } = msg else {
        return Err(unexpected(&msg, "Welcome"));
    };
    let status = match fds.first() {
        Some(fd) => Page::map(fd)?,
        None => {
            return Err(Error::protocol(
                LAUNCHER,
                "descriptors",
                "Welcome without a status page",
            ));
        }
    };
    let welcome = Welcome {
        settings,
        access,
        status,
    };
    Ok((channel, welcome))
}

fn unexpected(msg: &ControlMessage, wanted: &str) -> Error {
    Error::protocol(
        LAUNCHER,
        "control message",
        format!("expected {wanted}, got {}", msg.name()),
    )
}

/// Registers this rank's card (with its segment, if it has one) and waits
/// for the table of every rank's, however long the others take; then for
/// the segments of the other ranks of its node (over shared memory) or its
/// ends of the socket pairs to every other rank (over sockets).
pub(crate) fn register(
    channel: &mut Channel,
    p: &Placement,
    settings: &Settings,
    card: Card,
    fds: Vec<BorrowedFd<'_>>,
) -> Result<Table> {
    let host = crate::bootstrap::host_name();
    let wake = card.wake;
    channel.send(&ControlMessage::Register { host, card }, &fds)?;
    let (msg, _) = channel.receive(None)?;
    let ControlMessage::Table { cards, nodes } = msg else {
        return Err(unexpected(&msg, "Table"));
    };
    if cards.len() != p.size || nodes.len() != p.size {
        return Err(Error::protocol(
            LAUNCHER,
            "table",
            format!(
                "{} cards and {} nodes for a job of {}",
                cards.len(),
                nodes.len(),
                p.size
            ),
        ));
    }
    let mine = nodes[p.rank];
    let others = (0..p.size).filter(|r| *r != p.rank && nodes[*r] == mine);
    let (mut want_segments, mut want_links): (Vec<usize>, Vec<usize>) = match settings.transport {
        TransportKind::Shm => (others.filter(|r| cards[*r].shm).collect(), Vec::new()),
        TransportKind::Socket => (Vec::new(), others.collect()),
        TransportKind::Tcp => (Vec::new(), Vec::new()),
    };
    let (mut segments, mut links) = (Vec::new(), Vec::new());
    while !want_segments.is_empty() || !want_links.is_empty() {
        let (msg, fds) = channel.receive(Some(Instant::now() + WELCOME_TIMEOUT))?;
        let mut fds = fds.into_iter();
        // Segments come with their ranks' wake-up sockets exactly when
        // this rank has one too (its job spans nodes).
        let (ranks, wanted, wakes) = match msg {
            ControlMessage::Segments { ranks, wakes } if wakes == wake => (ranks, &mut want_segments, Some(wakes)),
            ControlMessage::Segments { .. } => {
                return Err(Error::protocol(
                    LAUNCHER,
                    "segments",
                    "wake-up descriptors where none were due, or none where they were",
                ));
            }
            ControlMessage::Links { ranks } => (ranks, &mut want_links, None),
            other => return Err(unexpected(&other, "Segments or Links")),
        };
        for rank in ranks {
            let rank = rank as usize;
            let (Some(i), Some(fd)) = (wanted.iter().position(|w| *w == rank), fds.next()) else {
                return Err(Error::protocol(
                    LAUNCHER,
                    "descriptors",
                    format!("one for rank {rank}, which is not one this rank waits for"),
                ));
            };
            wanted.swap_remove(i);
            match wakes {
                Some(true) => segments.push((rank, fd, fds.next())),
                Some(false) => segments.push((rank, fd, None)),
                None => links.push((rank, fd)),
            }
        }
    }
    let addresses = cards.iter().map(|c| c.tcp).collect();
    Ok(Table {
        nodes,
        segments,
        links,
        addresses,
    })
}

/// Keeps the channel for [`tell`].
pub(crate) fn keep(channel: Channel) {
    if let Ok(mut guard) = CHANNEL.lock() {
        *guard = Some(channel);
    }
}

/// Sends one message to the launcher if the channel is open; `close` drops
/// the channel afterwards. Failures are ignored: the launcher also watches
/// the process itself.
pub(crate) fn tell(msg: &ControlMessage, close: bool) {
    // A panic while holding the lock must not stop a later report.
    let mut guard = match CHANNEL.lock() {
        Ok(g) => g,
        Err(poisoned) => poisoned.into_inner(),
    };
    if let Some(channel) = guard.as_mut() {
        let _ = channel.send(msg, &[]);
    }
    if close {
        *guard = None;
    }
}

/// Tells the launcher through `channel` why this rank cannot go on.
pub(crate) fn tell_failure(channel: &mut Channel, e: &Error) {
    let _ = channel.send(&ControlMessage::Failed { message: e.to_string() }, &[]);
}

/// Reports panics to the launcher, then runs the previous hook (which prints
/// the usual message).
pub(crate) fn install_panic_hook() {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let (text, at) = panic_text(info);
        let message = match at {
            Some((file, line)) => format!("{text} at {file}:{line}"),
            None => text,
        };
        tell(&ControlMessage::Panic { message }, false);
        previous(info);
    }));
}

/// A panic's message and where it happened, for the one line about it.
pub(crate) fn panic_text(info: &std::panic::PanicHookInfo<'_>) -> (String, Option<(String, u32)>) {
    let payload = info.payload();
    let text = payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a non-text panic payload".to_string());
    (text, info.location().map(|l| (l.file().to_string(), l.line())))
}
