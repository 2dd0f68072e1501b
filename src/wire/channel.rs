//! A control channel: framed [`ControlMessage`]s over a connected Unix
//! stream socket, with file descriptors beside the messages that carry
//! them. The rank reads it blocking during start-up; the launcher reads it
//! without blocking from its event loop.

use std::collections::VecDeque;
use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::socket::{ControlMessage as Cmsg, ControlMessageOwned, MsgFlags, recvmsg, sendmsg};

use crate::error::{Error, Result};

use super::MAX_CONTROL_LEN;
use super::control::{ControlMessage, MAX_FDS_PER_MESSAGE};
use super::header::{HEADER_LEN, Header, Kind};

/// How long a send may wait for the peer to make room before the peer is
/// taken to have stopped reading.
const SEND_TIMEOUT: Duration = Duration::from_secs(10);
/// The most descriptors that may wait for their message.
const MAX_QUEUED_FDS: usize = 4 * MAX_FDS_PER_MESSAGE;
/// Bytes read per call.
const READ_CHUNK: usize = 64 << 10;

/// The most bytes one [`Channel::read_available`] reads.
const READ_AT_ONCE: usize = 256 << 10;

/// One end of a control channel.
#[derive(Debug)]
pub struct Channel {
    socket: OwnedFd,
    /// The source id of the frames this end sends.
    me: u32,
    /// The source id the other end's frames must carry.
    them: u32,
    peer: String,
    inbox: Vec<u8>,
    fds: VecDeque<OwnedFd>,
}

impl Channel {
    /// A channel over `socket`, sending as `me` to a peer whose frames carry
    /// `them` and who is called `peer` in errors.
    pub fn new(socket: OwnedFd, me: u32, them: u32, peer: impl Into<String>) -> Channel {
        Channel {
            socket,
            me,
            them,
            peer: peer.into(),
            inbox: Vec::new(),
            fds: VecDeque::new(),
        }
    }

    /// Who is at the other end, for messages.
    pub fn peer(&self) -> &str {
        &self.peer
    }

    /// Sends one message with its descriptors (exactly as many as
    /// [`ControlMessage::fds`] says), waiting for room if need be.
    pub fn send(&mut self, msg: &ControlMessage, fds: &[BorrowedFd<'_>]) -> Result<()> {
        if fds.len() != msg.fds() {
            return Err(Error::InvalidArgument(format!(
                "a {} message carries {} descriptors, not {}",
                msg.name(),
                msg.fds(),
                fds.len()
            )));
        }
        let payload = msg.encode();
        let mut bytes = Header::plain(Kind::Control, self.me, payload.len() as u64)
            .encode()
            .to_vec();
        bytes.extend_from_slice(&payload);
        let raw: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
        let deadline = Instant::now() + SEND_TIMEOUT;
        let mut sent = 0;
        while sent < bytes.len() {
            let rights = [Cmsg::ScmRights(&raw)];
            // The descriptors ride with the first byte of the frame.
            let cmsgs: &[Cmsg<'_>] = if sent == 0 && !raw.is_empty() { &rights } else { &[] };
            let iov = [IoSlice::new(&bytes[sent..])];
            match sendmsg::<()>(self.socket.as_raw_fd(), &iov, cmsgs, MsgFlags::MSG_NOSIGNAL, None) {
                Ok(n) => sent += n,
                Err(Errno::EINTR) => {}
                Err(Errno::EAGAIN) => self.wait_for(PollFlags::POLLOUT, Some(deadline), "room to send")?,
                // This user has as many descriptors in flight as its limit on
                // open files allows: they land as the receivers read.
                Err(Errno::ETOOMANYREFS) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err(Errno::EPIPE | Errno::ECONNRESET) => {
                    return Err(Error::JobEnded {
                        reason: format!("{} closed the control channel", self.peer),
                    });
                }
                Err(e) => return Err(Error::io(format!("writing to {}", self.peer), e.into())),
            }
        }
        Ok(())
    }

    /// Reads what has arrived without waiting; false once the peer has
    /// closed its end and everything before that was read.
    pub fn read_available(&mut self) -> Result<bool> {
        let mut read = 0;
        loop {
            let mut chunk = vec![0u8; READ_CHUNK];
            let mut space = nix::cmsg_space!([RawFd; MAX_FDS_PER_MESSAGE]);
            let mut iov = [IoSliceMut::new(&mut chunk)];
            let flags = MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_CMSG_CLOEXEC;
            let (n, received, truncated) =
                match recvmsg::<()>(self.socket.as_raw_fd(), &mut iov, Some(&mut space), flags) {
                    Ok(msg) => {
                        let mut received = Vec::new();
                        if let Ok(cmsgs) = msg.cmsgs() {
                            for c in cmsgs {
                                if let ControlMessageOwned::ScmRights(list) = c {
                                    received.extend(list);
                                }
                            }
                        }
                        (msg.bytes, received, msg.flags.contains(MsgFlags::MSG_CTRUNC))
                    }
                    Err(Errno::EINTR) => continue,
                    Err(Errno::EAGAIN) => return Ok(true),
                    Err(Errno::ECONNRESET) => return Ok(false),
                    Err(e) => return Err(Error::io(format!("reading from {}", self.peer), e.into())),
                };
            for fd in received {
                // SAFETY: the kernel just installed this descriptor in this
                // process for us; nothing else owns it.
                self.fds.push_back(unsafe { OwnedFd::from_raw_fd(fd) });
            }
            if truncated {
                // The kernel drops descriptors it cannot install; when this
                // process is at its limit that is the truth to tell, not a
                // fault of the peer.
                match self.socket.try_clone() {
                    Err(e) if e.raw_os_error() == Some(Errno::EMFILE as i32) => {
                        return Err(Error::io(format!("receiving descriptors from {}", self.peer), e));
                    }
                    probe => drop(probe),
                }
            }
            if truncated || self.fds.len() > MAX_QUEUED_FDS {
                return Err(Error::protocol(
                    &self.peer,
                    "descriptors",
                    "more file descriptors than its messages carry",
                ));
            }
            if n == 0 {
                return Ok(false);
            }
            self.inbox.extend_from_slice(&chunk[..n]);
            read += n;
            // A peer that writes as fast as this reads would otherwise keep
            // it here, buffering without bound: the rest waits for the
            // next call (the descriptor is still readable).
            if n < READ_CHUNK || read >= READ_AT_ONCE {
                return Ok(true);
            }
        }
    }

    /// The next whole message already read, with its descriptors.
    pub fn next_message(&mut self) -> Result<Option<(ControlMessage, Vec<OwnedFd>)>> {
        if self.inbox.len() < HEADER_LEN {
            return Ok(None);
        }
        let mut hb = [0u8; HEADER_LEN];
        hb.copy_from_slice(&self.inbox[..HEADER_LEN]);
        let header = Header::decode(&hb, &self.peer, MAX_CONTROL_LEN)?;
        if header.kind != Kind::Control {
            return Err(Error::protocol(
                &self.peer,
                "kind",
                format!("expected a Control frame, got {:?}", header.kind),
            ));
        }
        if header.source != self.them {
            return Err(Error::protocol(
                &self.peer,
                "source",
                format!("the frame claims to come from {}", header.source),
            ));
        }
        // The length passed the limit above, so it fits in memory.
        let end = HEADER_LEN + header.len as usize;
        if self.inbox.len() < end {
            return Ok(None);
        }
        let msg = ControlMessage::decode(&self.inbox[HEADER_LEN..end], &self.peer)?;
        self.inbox.drain(..end);
        let want = msg.fds();
        if self.fds.len() < want {
            return Err(Error::protocol(
                &self.peer,
                "descriptors",
                format!("a {} message came without its {want} descriptors", msg.name()),
            ));
        }
        let fds = self.fds.drain(..want).collect();
        Ok(Some((msg, fds)))
    }

    /// Waits for the next message until `deadline` (or for ever).
    pub fn receive(&mut self, deadline: Option<Instant>) -> Result<(ControlMessage, Vec<OwnedFd>)> {
        loop {
            if let Some(m) = self.next_message()? {
                return Ok(m);
            }
            self.wait_for(PollFlags::POLLIN, deadline, "a control message")?;
            if !self.read_available()? && self.next_message()?.is_none() {
                return Err(Error::JobEnded {
                    reason: format!("{} closed the control channel", self.peer),
                });
            }
        }
    }

    fn wait_for(&self, events: PollFlags, deadline: Option<Instant>, what: &str) -> Result<()> {
        let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
        if left.is_some_and(|l| l.is_zero()) {
            return Err(Error::Timeout {
                what: format!("{what} from {}", self.peer),
                seconds: SEND_TIMEOUT.as_secs_f64(),
            });
        }
        let timeout = match left {
            None => PollTimeout::NONE,
            Some(l) => PollTimeout::try_from(l.as_millis().min(60_000) as i32 + 1).unwrap_or(PollTimeout::MAX),
        };
        let mut fds = [PollFd::new(self.socket.as_fd(), events)];
        match poll(&mut fds, timeout) {
            Ok(_) | Err(Errno::EINTR) => Ok(()),
            Err(e) => Err(Error::io(format!("waiting for {}", self.peer), e.into())),
        }
    }
}

impl AsFd for Channel {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.socket.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::Card;
    use std::os::unix::net::UnixStream;

    fn pair() -> (Channel, Channel) {
        let (a, b) = UnixStream::pair().unwrap();
        (
            Channel::new(OwnedFd::from(a), 1, 2, "b"),
            Channel::new(OwnedFd::from(b), 2, 1, "a"),
        )
    }

    #[test]
    fn messages_and_their_descriptors_arrive_together() {
        let (mut a, mut b) = pair();
        let (keep, _other) = UnixStream::pair().unwrap();
        let card = Card {
            shm: true,
            wake: false,
            tcp: None,
        };
        let reg = ControlMessage::Register { host: "h".into(), card };
        a.send(&reg, &[keep.as_fd()]).unwrap();
        a.send(&ControlMessage::Finalized, &[]).unwrap();
        let (m, fds) = b.receive(None).unwrap();
        assert_eq!((m, fds.len()), (reg, 1));
        let (m, fds) = b.receive(None).unwrap();
        assert_eq!((m, fds.len()), (ControlMessage::Finalized, 0));
    }

    #[test]
    fn a_missing_descriptor_or_a_wrong_source_is_a_protocol_error() {
        let (a, mut b) = pair();
        // A Register that claims a segment but carries none, written raw.
        let msg = ControlMessage::Register {
            host: "h".into(),
            card: Card {
                shm: true,
                wake: false,
                tcp: None,
            },
        };
        let payload = msg.encode();
        let mut bytes = Header::plain(Kind::Control, 1, payload.len() as u64).encode().to_vec();
        bytes.extend_from_slice(&payload);
        let stream = UnixStream::from(a.socket);
        use std::io::Write;
        (&stream).write_all(&bytes).unwrap();
        assert!(matches!(
            b.receive(None),
            Err(Error::Protocol {
                field: "descriptors",
                ..
            })
        ));
        let (mut c, mut d) = pair();
        c.me = 7;
        c.send(&ControlMessage::Finalized, &[]).unwrap();
        assert!(matches!(d.receive(None), Err(Error::Protocol { field: "source", .. })));
    }

    #[test]
    fn a_closed_channel_ends_a_receive() {
        let (a, mut b) = pair();
        drop(a);
        assert!(matches!(b.receive(None), Err(Error::JobEnded { .. })));
    }
}
