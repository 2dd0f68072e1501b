//! One other host's agent as the launcher sees it: the ssh (or
//! `--launch-agent`) process that runs it, the pipes to and from it, what
//! it said on stderr, and what it reported about its host.

use std::net::IpAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::Instant;

use nix::sys::signal::Signal;

use crate::agent::protocol::{Down, Inbox, Outbox, Up};
use crate::cli::Options;
use crate::machine::Machine;
use crate::nonblocking::read_all;
use crate::spawn::{Launch, Place, Termination};

/// How many lines of what ssh said on stderr are kept for reports.
const KEEP_LINES: usize = 4;

/// The agent on one other host, as the launcher sees it.
pub(super) struct Agent {
    /// The job's node on that host.
    pub(super) node: usize,
    /// The host's name, as the hostfile gives it, and where it was given.
    pub(super) name: String,
    pub(super) origin: String,
    /// The job ranks it runs.
    pub(super) ranks: Vec<usize>,
    /// The pid of the ssh (or --launch-agent) process on this machine.
    pub(super) pid: i32,
    pub(super) outbox: Outbox,
    pub(super) from: Option<OwnedFd>,
    pub(super) err: Option<OwnedFd>,
    /// The last lines ssh or the agent wrote on stderr.
    pub(super) said: Vec<String>,
    partial: Vec<u8>,
    inbox: Inbox,
    /// Where the host's ranks listen, once the preflight passed.
    pub(super) listen: Option<IpAddr>,
    /// This machine's clock minus the host's, in nanoseconds (added to a
    /// time of the host's, gives this machine's), from its first status
    /// report.
    pub(super) clock_offset: Option<i128>,
    /// The machine the host is, once the preflight passed.
    pub(super) machine: Option<Machine>,
    pub(super) refused: Option<String>,
    pub(super) exited: Option<Termination>,
    pub(super) heard_at: Instant,
    /// The agent has gone (end of its output) and that was handled.
    pub(super) gone: bool,
}

impl Agent {
    /// Starts the agent of node `node` on host `name` and sends it the job.
    pub(super) fn start(
        opts: &Options,
        name: &str,
        origin: &str,
        launch: &Launch,
        places: Vec<Place>,
    ) -> Result<Agent, String> {
        let me = std::env::current_exe().map_err(|e| format!("cannot tell where spmdrun is: {e}"))?;
        // The remote shell runs the same spmdrun at the same path.
        let remote = format!("{} --agent", shell_quoted(&me.to_string_lossy()));
        let mut cmd = Command::new(&opts.launch_agent[0]);
        cmd.args(&opts.launch_agent[1..])
            .arg(name)
            .arg(remote)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        let launcher = nix::unistd::getpid();
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                nix::sys::signal::SigSet::empty().thread_set_mask()?;
                nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)?;
                if nix::unistd::getppid() != launcher {
                    return Err(std::io::Error::other("spmdrun exited while starting ssh"));
                }
                Ok(())
            });
        }
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("{origin}: cannot run {} to reach {name}: {e}", opts.launch_agent[0]))?;
        let (Some(stdin), Some(stdout), Some(stderr)) = (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            return Err(format!("{origin}: no pipes to the agent on {name}"));
        };
        let (from, err) = (OwnedFd::from(stdout), OwnedFd::from(stderr));
        for fd in [&from, &err] {
            nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK))
                .map_err(|e| format!("fcntl: {e}"))?;
        }
        let outbox = Outbox::new(stdin);
        let ranks = places.iter().map(|p| p.rank).collect();
        let node = places.first().map_or(0, |p| p.node);
        outbox.send(&Down::Job {
            launch: launch.clone(),
            places,
            host: name.to_string(),
        });
        Ok(Agent {
            node,
            name: name.to_string(),
            origin: origin.to_string(),
            ranks,
            pid: child.id() as i32,
            outbox,
            from: Some(from),
            err: Some(err),
            said: Vec::new(),
            partial: Vec::new(),
            inbox: Inbox::new(format!("the agent on {name}")),
            listen: None,
            machine: None,
            clock_offset: None,
            refused: None,
            exited: None,
            heard_at: Instant::now(),
            gone: false,
        })
    }

    /// "host b (hosts:2)".
    pub(super) fn describe(&self) -> String {
        format!("host {} ({})", self.name, self.origin)
    }

    /// Why the agent failed or went, from what is known.
    pub(super) fn why(&self) -> String {
        if let Some(r) = &self.refused {
            return r.clone();
        }
        let said = self.said.join(" / ");
        let status = match self.exited {
            Some(Termination::Code(255)) if !said.is_empty() => String::new(),
            Some(Termination::Code(127)) => "; spmdrun is not installed at the same path there".to_string(),
            Some(Termination::Code(c)) => format!("; ssh exited with code {c}"),
            Some(Termination::Signal(s)) => format!("; ssh was killed by signal {s}"),
            None => String::new(),
        };
        if said.is_empty() {
            format!("the connection closed{status}")
        } else {
            format!("{said}{status}")
        }
    }

    /// Reads what ssh and the agent wrote on stderr; keeps the last lines.
    pub(super) fn read_stderr(&mut self) -> Vec<String> {
        let Some(fd) = &self.err else { return Vec::new() };
        let mut lines = Vec::new();
        if read_all(fd.as_fd(), &mut self.partial) {
            self.err = None;
        }
        while let Some(end) = self.partial.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = self.partial.drain(..=end).collect();
            let line = String::from_utf8_lossy(&line).trim().to_string();
            if !line.is_empty() {
                lines.push(line);
            }
        }
        if self.err.is_none() && !self.partial.is_empty() {
            lines.push(
                String::from_utf8_lossy(&std::mem::take(&mut self.partial))
                    .trim()
                    .to_string(),
            );
        }
        for l in &lines {
            self.said.push(l.clone());
        }
        let extra = self.said.len().saturating_sub(KEEP_LINES);
        self.said.drain(..extra);
        lines
    }

    /// Reads the agent's messages; `Err` names what was wrong with them.
    /// Sets `from` to `None` at end of file.
    pub(super) fn read_messages(&mut self) -> Result<Vec<Up>, String> {
        let mut got = Vec::new();
        if let Some(fd) = &self.from {
            let mut bytes = Vec::new();
            if read_all(fd.as_fd(), &mut bytes) {
                self.from = None;
            }
            self.inbox.feed(&bytes);
        }
        while let Some(m) = self.inbox.next_message::<Up>()? {
            self.heard_at = Instant::now();
            got.push(m);
        }
        Ok(got)
    }
}

/// `text` quoted for a POSIX shell.
fn shell_quoted(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}
