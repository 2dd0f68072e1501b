//! What a rank and its launcher say to each other over the rank's control
//! channel, and the address cards ranks exchange through the launcher.

use std::net::{IpAddr, SocketAddr};

use serde::{Deserialize, Serialize};

use crate::auth::PairKeys;
use crate::error::{Error, Result};

use super::MAX_CONTROL_LEN;

/// How a rank can be reached by its peers: the "address card" each rank
/// registers with the launcher.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Card {
    /// The rank has a shared-memory segment for the ranks of its node; it
    /// travels as a file descriptor beside the card, never by name.
    pub shm: bool,
    /// A wake-up socket travels after the segment: the job spans nodes,
    /// and the rank may sleep in `poll` (its node peers ring it there).
    pub wake: bool,
    /// Where the rank listens for its peers' TCP connections during
    /// start-up (over TCP only).
    pub tcp: Option<SocketAddr>,
}

/// How the ranks of one node talk to each other.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TransportKind {
    /// Rings in shared memory (the default).
    Shm,
    /// Unix-domain sockets.
    Socket,
    /// TCP connections, each proving the job's secret (as between hosts).
    Tcp,
}

/// What a rank needs to make and check TCP connections to its peers: the
/// job's id, the rank's keys of its pairs of ranks (which a connection
/// proves without sending them) and the address to listen on. Sent only
/// over the rank's private channel; its `Debug` output never shows a key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Access {
    /// The job's id, which every connection names.
    pub job: u64,
    /// The rank's keys, one per peer.
    pub keys: PairKeys,
    /// The address the rank's listener binds (port chosen by the kernel).
    pub listen: IpAddr,
}

/// How a rank waits for its peers over shared memory before it sleeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum WaitMode {
    /// Poll for up to a millisecond (a core per rank), and fold node-wide
    /// collectives on every rank.
    Spin,
    /// Yield the core between polls for up to half a millisecond (more ranks
    /// than cores), and let the last rank to arrive fold node-wide
    /// collectives while the others sleep.
    Yield,
    /// Sleep at once, and fold node-wide collectives as `Yield` does.
    Sleep,
}

impl TransportKind {
    /// Parses the value of `SPMD_TRANSPORT`.
    pub fn parse(value: &str) -> std::result::Result<TransportKind, String> {
        match value {
            "shm" => Ok(TransportKind::Shm),
            "socket" => Ok(TransportKind::Socket),
            "tcp" => Ok(TransportKind::Tcp),
            other => Err(format!(
                "SPMD_TRANSPORT={other:?}: expected \"shm\", \"socket\" or \"tcp\""
            )),
        }
    }
}

impl WaitMode {
    /// Parses the value of `SPMD_WAIT` (`None` for `auto`).
    pub fn parse(value: &str) -> std::result::Result<Option<WaitMode>, String> {
        match value {
            "auto" => Ok(None),
            "spin" => Ok(Some(WaitMode::Spin)),
            "yield" => Ok(Some(WaitMode::Yield)),
            "sleep" => Ok(Some(WaitMode::Sleep)),
            other => Err(format!(
                "SPMD_WAIT={other:?}: expected \"auto\", \"spin\", \"yield\" or \"sleep\""
            )),
        }
    }
}

/// What every rank of a job must agree on, decided once by the launcher.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Settings {
    /// How ranks on one node talk.
    pub transport: TransportKind,
    /// How ranks wait over shared memory.
    pub wait: WaitMode,
    /// When ranks on one node copy large messages straight from the
    /// sender's memory, where the kernel allows it.
    pub single_copy: SingleCopy,
}

/// When a large message between two ranks of a node is copied once,
/// straight from the sender's memory (where the kernel lets the receiver
/// read it), instead of through the ring between them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SingleCopy {
    /// When messages queue up on a machine with more runnable tasks than
    /// cores (the default).
    Auto,
    /// For every message of 256 KiB or more.
    Always,
    /// Never.
    Off,
}

impl SingleCopy {
    /// Parses the value of `SPMD_SINGLE_COPY`.
    pub fn parse(value: &str) -> std::result::Result<SingleCopy, String> {
        match value {
            "auto" => Ok(SingleCopy::Auto),
            "always" => Ok(SingleCopy::Always),
            "off" => Ok(SingleCopy::Off),
            other => Err(format!(
                "SPMD_SINGLE_COPY={other:?}: expected \"auto\", \"always\" or \"off\""
            )),
        }
    }
}

/// What a rank and the launcher say to each other.
///
/// The channel is a Unix socket the launcher created for this one rank and
/// the rank inherited; some messages carry file descriptors beside them
/// (see [`ControlMessage::fds`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ControlMessage {
    /// Rank → launcher, first: "I am this rank, in this process".
    Hello {
        /// The rank's number.
        rank: u32,
        /// Its process id.
        pid: u32,
    },
    /// Launcher → rank, the answer to `Hello`: what every rank agrees on.
    /// Carries one descriptor: the rank's status page, where it says what
    /// it waits on (for hang reports).
    Welcome {
        /// What every rank of the job agrees on.
        settings: Settings,
        /// The job's id, secret and listening address, over TCP.
        access: Option<Access>,
    },
    /// Rank → launcher: "reach me here". Carries the rank's shared-memory
    /// segment when `card.shm` is set.
    Register {
        /// Its host name.
        host: String,
        /// How peers connect to it.
        card: Card,
    },
    /// Launcher → every rank, once all have registered: the cards of all
    /// ranks, indexed by rank, and which node each rank is on. The segments
    /// of the rank's node follow in [`ControlMessage::Segments`] messages.
    Table {
        /// `cards[r]` is how to reach rank `r`.
        cards: Vec<Card>,
        /// `nodes[r]` is the node index of rank `r`.
        nodes: Vec<u32>,
    },
    /// Launcher → rank: the shared-memory segments of these ranks, one
    /// descriptor each, in this order (with `wakes`, two each: the segment,
    /// then the rank's wake-up socket).
    Segments {
        /// The ranks whose segments ride with this message.
        ranks: Vec<u32>,
        /// Each segment comes with its rank's wake-up socket.
        wakes: bool,
    },
    /// Launcher → rank: its ends of the socket pairs the launcher made
    /// between it and these ranks (over sockets), one descriptor each.
    Links {
        /// The ranks at the other ends, in the order of the descriptors.
        ranks: Vec<u32>,
    },
    /// Rank → launcher: the rank has finalized and is about to exit.
    Finalized,
    /// Rank → launcher: the program called `abort(code)`.
    Abort {
        /// The exit code it asked for.
        code: i32,
        /// An optional explanation.
        message: String,
    },
    /// Rank → launcher: the program panicked (the process exits next).
    Panic {
        /// The panic message and location.
        message: String,
    },
    /// Rank → launcher: spmd failed in a way that ends this rank (start-up
    /// failed, say); the launcher reports this message as the cause.
    Failed {
        /// What went wrong.
        message: String,
    },
}

/// The most descriptors one message carries (the kernel takes 253).
pub const MAX_FDS_PER_MESSAGE: usize = 200;

/// The longest host name a rank may register.
pub const MAX_HOST_NAME: usize = 255;

/// True if `name` is a host name a rank may register: 1 to
/// [`MAX_HOST_NAME`] ASCII letters, digits, dots, hyphens and underscores,
/// not starting with a dot or a hyphen (which would reach ssh as an
/// option). spmdrun prints it inside its own
/// sentences, so nothing else (a blank that is not a space, an invisible
/// character, shell syntax) may pass for a name.
pub fn is_host_name(name: &str) -> bool {
    name.len() <= MAX_HOST_NAME
        && name.starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
}

fn bincode_config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<{ MAX_CONTROL_LEN as usize }>()
}

/// The exit status of a job that a rank ended with `abort(code)`: `code`
/// itself from 1 to 255, and 1 for any other (0 would read as success,
/// and a process cannot exit with a status past 255: 256 would read as 0).
///
/// ```
/// use spmd::wire::control::abort_status;
/// assert_eq!((abort_status(5), abort_status(0), abort_status(256), abort_status(-1)), (5, 1, 1, 1));
/// ```
pub fn abort_status(code: i32) -> i32 {
    if (1..=255).contains(&code) { code } else { 1 }
}

impl ControlMessage {
    /// How many file descriptors travel with this message.
    pub fn fds(&self) -> usize {
        match self {
            ControlMessage::Welcome { .. } => 1,
            ControlMessage::Register { card, .. } => usize::from(card.shm) + usize::from(card.shm && card.wake),
            ControlMessage::Segments { ranks, wakes } => ranks.len() * (1 + usize::from(*wakes)),
            ControlMessage::Links { ranks } => ranks.len(),
            _ => 0,
        }
    }

    /// A short name for errors and reports.
    pub fn name(&self) -> &'static str {
        match self {
            ControlMessage::Hello { .. } => "Hello",
            ControlMessage::Welcome { .. } => "Welcome",
            ControlMessage::Register { .. } => "Register",
            ControlMessage::Table { .. } => "Table",
            ControlMessage::Segments { .. } => "Segments",
            ControlMessage::Links { .. } => "Links",
            ControlMessage::Finalized => "Finalized",
            ControlMessage::Abort { .. } => "Abort",
            ControlMessage::Panic { .. } => "Panic",
            ControlMessage::Failed { .. } => "Failed",
        }
    }

    /// Encodes this message as the payload of a control frame.
    pub fn encode(&self) -> Vec<u8> {
        // Encoding a plain enum of strings and vectors into a Vec cannot fail
        // short of running out of memory, or passing the limit, which no
        // message the launcher or a rank builds comes near.
        bincode::serde::encode_to_vec(self, bincode_config()).unwrap_or_default()
    }

    /// Decodes a control payload received from `peer`, checking that every
    /// byte was used and that it carries no more descriptors than a message
    /// may.
    pub fn decode(payload: &[u8], peer: &str) -> Result<ControlMessage> {
        let (msg, used): (ControlMessage, usize) = bincode::serde::decode_from_slice(payload, bincode_config())
            .map_err(|e| Error::protocol(peer, "control message", e.to_string()))?;
        if used != payload.len() {
            return Err(Error::protocol(
                peer,
                "control message",
                format!("{} trailing bytes", payload.len() - used),
            ));
        }
        if msg.fds() > MAX_FDS_PER_MESSAGE {
            return Err(Error::protocol(
                peer,
                "control message",
                format!("a {} message with {} descriptors", msg.name(), msg.fds()),
            ));
        }
        Ok(msg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn noise(seed: &mut u64) -> u8 {
        *seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (*seed >> 33) as u8
    }

    #[test]
    fn corrupted_control_messages_are_errors_not_panics() {
        let good = ControlMessage::Register {
            host: "node".into(),
            card: Card {
                shm: true,
                wake: false,
                tcp: None,
            },
        }
        .encode();
        let mut seed = 11;
        for _ in 0..if cfg!(miri) { 200 } else { 20_000 } {
            let mut bytes = good.clone();
            let flips = 1 + noise(&mut seed) as usize % 4;
            for _ in 0..flips {
                let at = noise(&mut seed) as usize % bytes.len();
                bytes[at] = noise(&mut seed);
            }
            let cut = noise(&mut seed) as usize % (bytes.len() + 1);
            let _ = ControlMessage::decode(&bytes[..cut], "fuzz");
            let _ = ControlMessage::decode(&bytes, "fuzz");
        }
    }

    #[test]
    fn control_messages_round_trip_and_reject_garbage() {
        let m = ControlMessage::Abort {
            code: 3,
            message: "bad input".into(),
        };
        assert_eq!(ControlMessage::decode(&m.encode(), "x").unwrap(), m);
        assert!(ControlMessage::decode(&[0xff, 0xff, 0xff], "x").is_err());
        // A TCP card and a welcome with the job's access survive the trip,
        // and the welcome's Debug text does not show the secret.
        let secret = crate::auth::Secret::from_bytes([0x5a; crate::auth::SECRET_LEN]);
        let welcome = ControlMessage::Welcome {
            settings: Settings {
                transport: TransportKind::Tcp,
                wait: WaitMode::Spin,
                single_copy: SingleCopy::Auto,
            },
            access: Some(Access {
                job: 7,
                keys: PairKeys::derive(&secret, 7, 1, 3),
                listen: IpAddr::from([127, 0, 0, 1]),
            }),
        };
        assert_eq!(ControlMessage::decode(&welcome.encode(), "x").unwrap(), welcome);
        let keys = PairKeys::derive(&secret, 7, 1, 3).to_hex();
        assert!(!format!("{welcome:?}").contains(&keys[..16]));
        let register = ControlMessage::Register {
            host: "node".into(),
            card: Card {
                shm: false,
                wake: false,
                tcp: Some(SocketAddr::from(([127, 0, 0, 1], 4711))),
            },
        };
        assert_eq!(ControlMessage::decode(&register.encode(), "x").unwrap(), register);
        let too_many = ControlMessage::Segments {
            ranks: (0..MAX_FDS_PER_MESSAGE as u32 / 2 + 1).collect(),
            wakes: true,
        };
        assert!(ControlMessage::decode(&too_many.encode(), "x").is_err());
    }
}
