//! What spmdrun knows of one rank: its process, its control channel and
//! what it said there, its status page, its output pipes, and how it ended.

use std::os::fd::{AsFd, OwnedFd};
use std::process::{ChildStderr, ChildStdout};
use std::time::Instant;

use spmd::wire::control::{MAX_HOST_NAME, abort_status, is_host_name};
use spmd::wire::status::Page;
use spmd::wire::{Card, Channel, ControlMessage};

use crate::output::LineCutter;
use crate::process_state::{self, ProcessState};
use crate::shown::shown;
use crate::spawn::Termination;

/// One of a rank's output streams: a pipe spmdrun reads, or (for a rank
/// on another host) what its agent forwards.
pub struct Pipe {
    /// The pipe, for a rank of this machine.
    pub fd: Option<OwnedFd>,
    pub cutter: LineCutter,
}

impl Pipe {
    pub fn stdout(p: ChildStdout, rank: usize, tag: bool) -> std::io::Result<Pipe> {
        Pipe::new(OwnedFd::from(p), rank, tag)
    }

    pub fn stderr(p: ChildStderr, rank: usize, tag: bool) -> std::io::Result<Pipe> {
        Pipe::new(OwnedFd::from(p), rank, tag)
    }

    fn new(fd: OwnedFd, rank: usize, tag: bool) -> std::io::Result<Pipe> {
        nix::fcntl::fcntl(&fd, nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK))
            .map_err(std::io::Error::from)?;
        Ok(Pipe {
            fd: Some(fd),
            cutter: LineCutter::new(rank, tag),
        })
    }

    /// The stream of a rank on another host, whose bytes its agent sends.
    pub fn remote(rank: usize, tag: bool) -> Pipe {
        Pipe {
            fd: None,
            cutter: LineCutter::new(rank, tag),
        }
    }

    /// Reads what is there: `Some(bytes)` (empty when nothing is ready), or
    /// `None` once the pipe has closed.
    pub fn read(&mut self) -> Option<Vec<u8>> {
        let Some(fd) = &self.fd else {
            return Some(Vec::new());
        };
        crate::nonblocking::read_chunk(fd.as_fd())
    }
}

/// A rank's registration: how to reach it, and the descriptors that came
/// with it (its segment, and its wake-up socket).
pub struct Registration {
    pub host: String,
    pub card: Card,
    pub fds: Vec<OwnedFd>,
}

#[derive(Default)]
pub struct Rank {
    /// The process spmdrun started (the leader of the rank's group), or
    /// its agent on another host.
    pub pid: i32,
    /// The agent of the rank's host, when that is not this machine.
    pub agent: Option<usize>,
    /// That host's name, as the hostfile gives it.
    pub host: Option<String>,
    /// The process that joined the job, if another (under a wrapper).
    pub joined_pid: Option<i32>,
    /// On another host: what its agent last reported of its status page
    /// (times on this machine's clock) and what its process was doing.
    pub remote_status: Option<(Option<spmd::wire::status::Snapshot>, ProcessState)>,
    pub channel: Option<Channel>,
    pub status: Option<Page>,
    pub stdout: Option<Pipe>,
    pub stderr: Option<Pipe>,
    pub hello: bool,
    pub registration: Option<Registration>,
    pub exited: Option<Termination>,
    pub exited_at: Option<Instant>,
    pub judged: bool,
    pub finalized: bool,
    pub control_closed: bool,
    pub panic: Option<String>,
    pub abort: Option<(i32, String)>,
    pub failed: Option<String>,
    /// The last line it wrote on standard error.
    pub last_words: Vec<u8>,
}

impl Rank {
    /// "rank 3 (pid 41388 on vm)".
    pub fn describe(&self, rank: usize) -> String {
        let pid = self.joined_pid.unwrap_or(self.pid);
        match (&self.registration, &self.host) {
            (Some(r), None) => format!("rank {rank} (pid {pid} on {})", r.host),
            (_, Some(host)) => format!("rank {rank} (pid {pid} on host {host})"),
            (None, None) => format!("rank {rank} (pid {pid})"),
        }
    }

    /// What its process is doing, as its agent last reported it (on
    /// another host) or as `/proc` shows it now; whether it writes only
    /// with `look_for_writes` (and, here, only while its page shows no
    /// wait).
    pub fn process_state(&self, look_for_writes: bool) -> ProcessState {
        match &self.remote_status {
            Some((_, state)) if look_for_writes => *state,
            Some((_, ProcessState::Stopped)) => ProcessState::Stopped,
            Some(_) => ProcessState::Running,
            None => {
                let page = self.status.as_ref().and_then(|p| p.read());
                let writes = look_for_writes && process_state::computing(page.as_ref());
                ProcessState::of_rank(self.pid, self.joined_pid, writes)
            }
        }
    }

    /// True while the rank may still say something on its channel.
    pub fn listening(&self) -> bool {
        self.hello && !self.control_closed
    }

    /// What the rank's exit says about the job, if it fails it: the message
    /// and the status. `others_running` and `others_joined` say whether any
    /// other rank still runs, or has joined the job.
    pub fn verdict(&self, rank: usize, others_running: bool, others_joined: bool) -> Option<(String, i32)> {
        let who = self.describe(rank);
        match (&self.abort, self.exited) {
            (Some((code, message)), _) => {
                let why = if message.is_empty() {
                    String::new()
                } else {
                    format!(": {message}")
                };
                Some((format!("{who} called abort({code}){why}"), abort_status(*code)))
            }
            (None, Some(Termination::Signal(sig))) => {
                let name = nix::sys::signal::Signal::try_from(sig).map_or("unknown", |s| s.as_str());
                Some((format!("{who} was killed by signal {sig} ({name})"), 128 + sig))
            }
            (None, Some(Termination::Code(code))) if code != 0 => {
                if let Some(p) = &self.panic {
                    return Some((format!("{who} panicked: {p}"), code));
                }
                if let Some(f) = &self.failed {
                    return Some((format!("{who} failed: {f}"), code));
                }
                let words = String::from_utf8_lossy(&self.last_words);
                let words = words.trim();
                if words.is_empty() {
                    Some((format!("{who} exited with code {code}"), code))
                } else {
                    Some((
                        format!(
                            "{who} exited with code {code} (its last words on stderr: {})",
                            shown(words)
                        ),
                        code,
                    ))
                }
            }
            (None, _) if self.hello && !self.finalized && others_running => Some((
                format!("{who} exited without calling finalize while other ranks were still running"),
                1,
            )),
            (None, _) if !self.hello && others_joined => Some((
                format!(
                    "{who} exited without joining the job (it never called spmd::init) while other ranks wait for it"
                ),
                1,
            )),
            _ => None,
        }
    }
}

/// What a control message from a rank asks of the job.
pub enum Said {
    /// Nothing more to do.
    Nothing,
    /// The rank registered; the table may be complete.
    Registered,
    /// The rank broke the protocol: the job fails with this message.
    Broke(String),
    /// The rank failed in a way that ends it (start-up, a peer that broke
    /// the protocol): the job fails at once, naming it.
    Failed(String),
}

impl Rank {
    /// Takes one message from rank `rank`'s channel (with its descriptors).
    /// What it says in words is kept as [`shown`] makes it: every line of
    /// spmdrun's that quotes a rank quotes it from here.
    pub fn hear(&mut self, rank: usize, msg: ControlMessage, mut fds: Vec<OwnedFd>) -> Said {
        match msg {
            ControlMessage::Hello { rank: r, pid } if !self.hello => {
                if r as usize != rank {
                    return Said::Broke(format!(
                        "the channel of rank {rank} was used by a process claiming rank {r}"
                    ));
                }
                if pid as i32 != self.pid {
                    // A wrapper (`sh -c`, `env`, `valgrind`) runs the spmd
                    // program as a child: fine, but report its real pid.
                    self.joined_pid = Some(pid as i32);
                }
                self.hello = true;
                Said::Nothing
            }
            ControlMessage::Register { host, card } if self.hello && self.registration.is_none() => {
                if !is_host_name(&host) {
                    return Said::Broke(format!(
                        "bad host: it registered \"{}\" ({} bytes), not a name of 1 to {MAX_HOST_NAME} ASCII letters, \
                         digits, dots, hyphens and underscores, not starting with a dot or a hyphen",
                        shown(&host),
                        host.len()
                    ));
                }
                // A rank on another host sent its descriptors to its
                // agent, which checked them.
                if let Some(fault) = crate::node_segments::descriptor_fault(&fds) {
                    return Said::Broke(format!("bad card: {fault}"));
                }
                self.registration = Some(Registration {
                    host,
                    card,
                    fds: std::mem::take(&mut fds),
                });
                Said::Registered
            }
            ControlMessage::Finalized => {
                self.finalized = true;
                Said::Nothing
            }
            ControlMessage::Abort { code, message } => {
                self.abort = Some((code, shown(&message)));
                Said::Nothing
            }
            ControlMessage::Panic { message } => {
                self.panic.get_or_insert_with(|| shown(&message));
                Said::Nothing
            }
            ControlMessage::Failed { message } => {
                let message = shown(&message);
                self.failed.get_or_insert(message.clone());
                Said::Failed(message)
            }
            other => Said::Broke(format!(
                "{} sent an unexpected {} message on its control channel",
                self.describe(rank),
                other.name()
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn register(host: &str) -> Said {
        let mut rank = Rank {
            hello: true,
            ..Rank::default()
        };
        let msg = ControlMessage::Register {
            host: host.to_string(),
            card: Card::default(),
        };
        rank.hear(1, msg, Vec::new())
    }

    #[test]
    fn a_registered_host_must_be_a_name() {
        let long = "h".repeat(MAX_HOST_NAME + 1);
        let invisible = "\u{200b}".repeat(80);
        for bad in [
            "",
            "a b",
            "x\u{1b}[2J",
            "a\u{202e}b",
            long.as_str(),
            "vm)\u{3164}was\u{3164}ended",
            invisible.as_str(),
            "$(reboot);`id`",
            "-oProxyCommand=x",
        ] {
            assert!(
                matches!(register(bad), Said::Broke(ref why) if why.starts_with("bad host")),
                "{bad:?}"
            );
        }
        assert!(matches!(register("node-7.example.org"), Said::Registered));
        assert!(matches!(register("build_host-2"), Said::Registered));
        assert!(matches!(register("_gateway"), Said::Registered));
    }
}
