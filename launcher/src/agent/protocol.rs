//! What spmdrun and the agent on another host say to each other over ssh's
//! standard input and output: a greeting with the protocol's version, then
//! length-prefixed messages, each checked before it is used.

use std::io::Write;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{Sender, channel};
use std::thread::JoinHandle;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use spmd::wire::status::Snapshot;
use spmd::wire::{ControlMessage, MAX_CONTROL_LEN};

use crate::machine::Machine;
use crate::process_state::ProcessState;
use crate::spawn::{Launch, Place, Termination};

/// The protocol's version: both ends must speak the same.
pub const VERSION: u32 = 3;
const MAGIC: &[u8; 8] = b"spmd-agt";
/// The bytes of the greeting each end sends first.
pub const GREETING_LEN: usize = 12;
/// The largest message: a control message and some room.
const MAX_FRAME: usize = MAX_CONTROL_LEN as usize + (1 << 20);

/// spmdrun → agent.
#[derive(Debug, Serialize, Deserialize)]
pub enum Down {
    /// First: what to run, which ranks run on this host, and the host's
    /// name as the hostfile gives it (which the agent resolves, to find the
    /// address its ranks listen on).
    Job {
        launch: Launch,
        places: Vec<Place>,
        host: String,
    },
    /// Every host is ready: start the ranks, each (in the order of the
    /// job's places) bound to the core at this index of the host's usable
    /// cores, or left to the scheduler.
    Start { cores: Vec<Option<usize>> },
    /// A control message for a rank (without descriptors; the agent adds
    /// the status page to a `Welcome`).
    Control { rank: u32, msg: ControlMessage },
    /// Bytes of spmdrun's standard input, for rank 0 (on this host).
    Input { bytes: Vec<u8> },
    /// spmdrun's standard input has ended: close rank 0's once it has
    /// taken what came before.
    InputEnd,
    /// Ask every rank to stop (SIGTERM); kill what is left after a grace.
    End,
    /// Kill every rank now.
    Kill,
    /// spmdrun is alive (sent every few seconds).
    Alive,
}

/// Agent → spmdrun.
#[derive(Debug, Serialize, Deserialize)]
pub enum Up {
    /// The preflight passed: the program and directory are there; the
    /// ranks of this host listen on `listen`; the host is `machine`.
    Ready {
        listen: IpAddr,
        machine: Machine,
    },
    /// The preflight failed, for this reason.
    Refused {
        reason: String,
    },
    Started {
        rank: u32,
        pid: i32,
    },
    NotStarted {
        rank: u32,
        reason: String,
    },
    /// A control message from a rank (without descriptors).
    Control {
        rank: u32,
        msg: ControlMessage,
    },
    /// What a rank's status page says (sent when it changes, for hang and
    /// deadlock reports): its snapshot, what its process is doing
    /// (stopped, or writing its output), and the agent's clock when it looked (the times in the snapshot
    /// are on the host's clock).
    Status {
        rank: u32,
        snapshot: Option<Snapshot>,
        state: ProcessState,
        now_ns: u64,
    },
    /// A rank broke its channel's protocol.
    Broke {
        rank: u32,
        why: String,
    },
    ChannelClosed {
        rank: u32,
    },
    Output {
        rank: u32,
        stderr: bool,
        bytes: Vec<u8>,
    },
    OutputClosed {
        rank: u32,
        stderr: bool,
    },
    Exited {
        rank: u32,
        how: Termination,
    },
    /// Rank 0 took this many bytes of its input (or they were dropped,
    /// its stdin being closed): spmdrun may send as many more. `closed`:
    /// rank 0's stdin is closed, send no more.
    InputTaken {
        bytes: u64,
        closed: bool,
    },
    /// The agent is alive (sent every few seconds).
    Alive,
}

fn config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<MAX_FRAME>()
}

/// The greeting: the magic bytes and the version.
pub fn greeting() -> [u8; GREETING_LEN] {
    let mut g = [0u8; GREETING_LEN];
    g[..8].copy_from_slice(MAGIC);
    g[8..].copy_from_slice(&VERSION.to_le_bytes());
    g
}

/// One message as bytes on the wire: its length, then its encoding.
pub fn encode<T: Serialize>(msg: &T) -> Vec<u8> {
    // Encoding plain enums into a Vec fails only past the limit, which no
    // message spmdrun or an agent builds comes near.
    let payload = bincode::serde::encode_to_vec(msg, config()).unwrap_or_default();
    let mut bytes = (payload.len() as u32).to_le_bytes().to_vec();
    bytes.extend_from_slice(&payload);
    bytes
}

/// The messages arriving from one peer, decoded as their bytes come.
pub struct Inbox {
    buf: Vec<u8>,
    greeted: bool,
    peer: String,
}

impl Inbox {
    /// An inbox for bytes from `peer` (named in errors).
    pub fn new(peer: impl Into<String>) -> Inbox {
        Inbox {
            buf: Vec::new(),
            greeted: false,
            peer: peer.into(),
        }
    }

    /// Adds bytes that arrived.
    pub fn feed(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// True once the peer's greeting has been read and checked.
    pub fn greeted(&self) -> bool {
        self.greeted
    }

    /// The next whole message, if one is in; an error names the peer and
    /// what was wrong.
    pub fn next_message<T: DeserializeOwned>(&mut self) -> Result<Option<T>, String> {
        if !self.greeted {
            if self.buf.len() < GREETING_LEN {
                if !MAGIC.starts_with(&self.buf[..self.buf.len().min(MAGIC.len())]) {
                    return Err(format!(
                        "{}: the greeting is not an spmd agent's (it began with {:?})",
                        self.peer,
                        String::from_utf8_lossy(&self.buf)
                    ));
                }
                return Ok(None);
            }
            if &self.buf[..8] != MAGIC {
                // Often a remote shell's own words (a banner, an error).
                let shown = &self.buf[..self.buf.len().min(200)];
                return Err(format!(
                    "{}: the greeting is not an spmd agent's (it began with {:?})",
                    self.peer,
                    String::from_utf8_lossy(shown).trim()
                ));
            }
            let mut v = [0u8; 4];
            v.copy_from_slice(&self.buf[8..GREETING_LEN]);
            let version = u32::from_le_bytes(v);
            if version != VERSION {
                return Err(format!(
                    "{}: greeting: protocol version {version}, this spmdrun speaks {VERSION} (install the same spmdrun \
                     on every host)",
                    self.peer
                ));
            }
            self.buf.drain(..GREETING_LEN);
            self.greeted = true;
        }
        if self.buf.len() < 4 {
            return Ok(None);
        }
        let mut l = [0u8; 4];
        l.copy_from_slice(&self.buf[..4]);
        let len = u32::from_le_bytes(l) as usize;
        if len > MAX_FRAME {
            return Err(format!(
                "{}: message length {len} is over the limit of {MAX_FRAME}",
                self.peer
            ));
        }
        if self.buf.len() < 4 + len {
            return Ok(None);
        }
        let decoded = bincode::serde::decode_from_slice::<T, _>(&self.buf[4..4 + len], config());
        let (msg, used) = decoded.map_err(|e| format!("{}: message: {e}", self.peer))?;
        if used != len {
            return Err(format!("{}: message: {} trailing bytes", self.peer, len - used));
        }
        self.buf.drain(..4 + len);
        Ok(Some(msg))
    }
}

/// What a queued message costs in memory: its bytes, and its allocation
/// and place in the queue (most messages are a few dozen bytes, so a
/// bound on their bytes alone would let their number grow).
fn queued_size(bytes: &[u8]) -> usize {
    bytes.len() + 128
}

/// Messages to one peer, written by a thread of their own so that the
/// event loop never blocks on a slow pipe.
pub struct Outbox {
    to: Option<Sender<Vec<u8>>>,
    queued: Arc<AtomicUsize>,
    broken: Arc<AtomicBool>,
    writer: Option<JoinHandle<()>>,
}

impl Outbox {
    /// Starts writing to `w`, the greeting first.
    pub fn new(mut w: impl Write + Send + 'static) -> Outbox {
        let (to, from) = channel::<Vec<u8>>();
        let queued = Arc::new(AtomicUsize::new(0));
        let broken = Arc::new(AtomicBool::new(false));
        let (q, b) = (queued.clone(), broken.clone());
        let writer = std::thread::spawn(move || {
            if w.write_all(&greeting()).and_then(|_| w.flush()).is_err() {
                b.store(true, Ordering::Relaxed);
                return;
            }
            while let Ok(bytes) = from.recv() {
                let n = queued_size(&bytes);
                if w.write_all(&bytes).and_then(|_| w.flush()).is_err() {
                    b.store(true, Ordering::Relaxed);
                    return;
                }
                q.fetch_sub(n, Ordering::Relaxed);
            }
        });
        Outbox {
            to: Some(to),
            queued,
            broken,
            writer: Some(writer),
        }
    }

    /// Queues one message.
    pub fn send<T: Serialize>(&self, msg: &T) {
        let bytes = encode(msg);
        self.queued.fetch_add(queued_size(&bytes), Ordering::Relaxed);
        if let Some(to) = &self.to {
            let _ = to.send(bytes);
        }
    }

    /// Bytes queued and not yet written, each message's keeping counted.
    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }

    /// True once a write failed: the peer is gone.
    pub fn broken(&self) -> bool {
        self.broken.load(Ordering::Relaxed)
    }

    /// Writes what is queued and closes the stream.
    pub fn close(&mut self) {
        self.to = None;
        if let Some(w) = self.writer.take() {
            let _ = w.join();
        }
    }

    /// Closes the stream without waiting for what is queued to be written
    /// (the writer thread ends when its write fails or finishes).
    pub fn abandon(&mut self) {
        self.to = None;
        self.writer = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_survive_the_trip_in_any_pieces() {
        let mut wire = greeting().to_vec();
        wire.extend(encode(&Up::Started { rank: 3, pid: 77 }));
        wire.extend(encode(&Up::Output {
            rank: 3,
            stderr: true,
            bytes: b"hi\n".to_vec(),
        }));
        let mut inbox = Inbox::new("host a");
        let mut got = Vec::new();
        for byte in wire {
            inbox.feed(&[byte]);
            while let Some(m) = inbox.next_message::<Up>().unwrap() {
                got.push(format!("{m:?}"));
            }
        }
        assert_eq!(got.len(), 2);
        assert!(got[1].contains("Output"));
    }

    #[test]
    fn a_stranger_or_another_version_is_named() {
        let mut inbox = Inbox::new("the agent on b");
        inbox.feed(b"bash: spmdrun: command not found\n");
        let e = inbox.next_message::<Up>().unwrap_err();
        assert!(
            e.contains("the agent on b") && e.contains("spmdrun: command not found"),
            "{e}"
        );
        let mut old = greeting();
        old[8] = 9;
        let mut inbox = Inbox::new("the agent on b");
        inbox.feed(&old);
        assert!(inbox.next_message::<Up>().unwrap_err().contains("version 9"));
        let mut inbox = Inbox::new("c");
        inbox.feed(&greeting());
        inbox.feed(&u32::MAX.to_le_bytes());
        assert!(inbox.next_message::<Up>().unwrap_err().contains("over the limit"));
        let mut inbox = Inbox::new("c");
        inbox.feed(&greeting());
        inbox.feed(&[3, 0, 0, 0, 0xff, 0xff, 0xff]);
        assert!(inbox.next_message::<Up>().unwrap_err().starts_with("c: message"));
    }
}
