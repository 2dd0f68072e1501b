//! The agent: spmdrun started on another host (`spmdrun --agent`, through
//! ssh) to check, start, watch and end that host's ranks for the launcher,
//! passing their control messages and output up ssh's standard output and
//! taking the launcher's orders from its standard input. When the launcher
//! goes (the ssh connection drops, or nothing is heard from it for
//! [`SILENCE`]), the agent ends its ranks and every process they left.

mod orders;
mod preflight;
pub mod protocol;
mod reports;

use std::os::fd::{AsFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::Signal;
use nix::sys::signalfd::SignalFd;

use spmd::wire::status::{Page, Snapshot};
use spmd::wire::{Channel, ControlMessage, LAUNCHER_ID};

use crate::input_pipe::InputPipe;
use crate::machine::Machine;
use crate::node_segments::NodeSegments;
use crate::nonblocking::{read_all, read_chunk, set_nonblocking};
use crate::process_state::ProcessState;
use crate::spawn::{self, Input, Launch, Place};
use orders::report_taken;
use preflight::{check_not_a_terminal, preflight};
use protocol::{Down, Inbox, Outbox, Up};

/// How often each end says it is alive.
pub const ALIVE_EVERY: Duration = Duration::from_secs(5);
/// How long either end waits without a word from the other before it takes
/// the other to be gone.
pub const SILENCE: Duration = Duration::from_secs(30);
/// How long a rank may take to die after it was asked to (SIGTERM).
const GRACE: Duration = Duration::from_millis(200);
/// How long a rank's channel may stay open after it has exited before its
/// exit is reported all the same, and how often what the ranks left
/// (holding their pipes open) is killed again once every rank has exited.
const LINGER: Duration = Duration::from_secs(1);
/// How often the ranks' status pages are looked at.
const STATUS_EVERY: Duration = Duration::from_millis(500);
/// The most bytes waiting for ssh before the agent stops reading the
/// ranks' pipes and control channels.
const MAX_QUEUED: usize = 8 << 20;

/// One rank of this host.
struct Local {
    place: Place,
    pid: i32,
    channel: Option<Channel>,
    out: [Option<OwnedFd>; 2],
    exited: bool,
    /// How and when it ended, until that is reported: once its channel
    /// has closed (or [`LINGER`] passed, or it never said a word there),
    /// with what its pipes held read first, so that the launcher has its
    /// last words before it judges the exit.
    ended: Option<(Instant, spawn::Termination)>,
    /// It has said something on its channel (it called `init`): only then
    /// may its last words come there.
    spoke: bool,
    /// Its status page, kept while the agent runs (read once more after the rank has gone).
    status: Option<Page>,
    /// What was last reported of it.
    reported: Option<(Option<Snapshot>, ProcessState)>,
    /// What the last look at its process found.
    seen: ProcessState,
}

/// Runs the agent; returns its exit status.
pub fn serve(signals: SignalFd) -> i32 {
    // SAFETY: descriptors 0 and 1 are the agent's standard input and
    // output, which ssh made, and nothing else in the agent uses them.
    let (input, output) = unsafe { (OwnedFd::from_raw_fd(0), std::fs::File::from_raw_fd(1)) };
    let mut outbox = Outbox::new(output);
    let mut agent = Agent {
        input,
        inbox: Inbox::new("spmdrun (the launcher)"),
        heard_at: Instant::now(),
        locals: Vec::new(),
        kill_at: None,
        all_exited_at: None,
        launcher_gone: false,
        segments: NodeSegments::default(),
        tables_sent: 0,
        rank_input: None,
    };
    let code = match agent.run(&signals, &outbox) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("spmdrun agent: {e}");
            1
        }
    };
    let pids: Vec<i32> = agent.locals.iter().map(|l| l.pid).filter(|p| *p > 0).collect();
    spawn::end_all(&pids, Duration::from_secs(10));
    if agent.launcher_gone {
        outbox.abandon();
    } else {
        outbox.close();
    }
    code
}

struct Agent {
    input: OwnedFd,
    inbox: Inbox,
    heard_at: Instant,
    locals: Vec<Local>,
    kill_at: Option<Instant>,
    all_exited_at: Option<Instant>,
    launcher_gone: bool,
    /// The segments of this host's ranks, from their registrations, until
    /// each has had its table.
    segments: NodeSegments,
    tables_sent: usize,
    /// Rank 0's standard input, when rank 0 is on this host.
    rank_input: Option<InputPipe>,
}

impl Agent {
    fn run(&mut self, signals: &SignalFd, outbox: &Outbox) -> Result<(), String> {
        check_not_a_terminal()?;
        spawn::become_subreaper()?;
        set_nonblocking(self.input.as_fd())?;
        let Some(Down::Job { launch, places, host }) = self.next_order(signals, outbox)? else {
            return Err("spmdrun did not send the job first".into());
        };
        match preflight(&launch, &host) {
            Ok(listen) => outbox.send(&Up::Ready {
                listen,
                machine: Machine::this(),
            }),
            Err(reason) => {
                outbox.send(&Up::Refused { reason });
                return Ok(());
            }
        }
        let cores = match self.next_order(signals, outbox)? {
            Some(Down::Start { cores }) if cores.len() == places.len() => cores,
            Some(Down::Start { cores }) => {
                return Err(format!(
                    "spmdrun sent cores for {} ranks, not {}",
                    cores.len(),
                    places.len()
                ));
            }
            Some(Down::End | Down::Kill) | None => return Ok(()),
            Some(other) => return Err(format!("spmdrun sent {other:?} before Start")),
        };
        let usable = spawn::usable_cores();
        for (place, core) in places.into_iter().zip(cores) {
            // An index past this host's cores (its affinity changed since
            // the preflight): left to the scheduler.
            let core = core.and_then(|i| usable.get(i).copied());
            self.start(&launch, place, core, outbox);
        }
        self.watch(signals, outbox)
    }

    /// Waits for the launcher's next order (other than Alive); `None` when
    /// it has gone.
    fn next_order(&mut self, signals: &SignalFd, outbox: &Outbox) -> Result<Option<Down>, String> {
        loop {
            if let Some(order) = self.inbox.next_message::<Down>()? {
                self.heard_at = Instant::now();
                if matches!(order, Down::Alive) {
                    continue;
                }
                return Ok(Some(order));
            }
            if self.launcher_gone {
                return Ok(None);
            }
            let mut fds = [
                PollFd::new(self.input.as_fd(), PollFlags::POLLIN),
                PollFd::new(signals.as_fd(), PollFlags::POLLIN),
            ];
            let _ = poll(&mut fds, PollTimeout::from(1000u16));
            for sig in crate::signals::take(signals) {
                if sig != Signal::SIGCHLD {
                    return Ok(None);
                }
            }
            self.read_input();
            if self.heard_at.elapsed() > SILENCE {
                self.launcher_gone = true;
            }
            outbox.send(&Up::Alive);
        }
    }

    /// Reads what the launcher sent; marks it gone at end of file.
    fn read_input(&mut self) {
        let mut bytes = Vec::new();
        if read_all(self.input.as_fd(), &mut bytes) {
            self.launcher_gone = true;
        }
        self.inbox.feed(&bytes);
    }

    fn start(&mut self, launch: &Launch, place: Place, core: Option<usize>, outbox: &Outbox) {
        let rank = place.rank as u32;
        let input = if rank == 0 { Input::Piped } else { Input::Empty };
        match spawn::start_rank(launch, place, input, core) {
            Ok(mut started) => {
                let pid = started.child.id() as i32;
                if rank == 0 {
                    // A pipe that cannot be made nonblocking is not fed (a
                    // write could stall the agent): rank 0 sees its end.
                    let pipe = started.child.stdin.take().map(OwnedFd::from);
                    let pipe = pipe.filter(|fd| set_nonblocking(fd.as_fd()).is_ok());
                    self.rank_input = Some(InputPipe::new(pipe));
                }
                let out = [
                    started.child.stdout.take().map(OwnedFd::from),
                    started.child.stderr.take().map(OwnedFd::from),
                ];
                for fd in out.iter().flatten() {
                    let _ = set_nonblocking(fd.as_fd());
                }
                self.locals.push(Local {
                    place,
                    pid,
                    channel: Some(Channel::new(started.channel, LAUNCHER_ID, rank, format!("rank {rank}"))),
                    out,
                    exited: false,
                    ended: None,
                    spoke: false,
                    status: None,
                    reported: None,
                    seen: ProcessState::Running,
                });
                outbox.send(&Up::Started { rank, pid });
            }
            Err(e) => {
                if rank == 0 {
                    self.rank_input = Some(InputPipe::new(None));
                }
                outbox.send(&Up::NotStarted {
                    rank,
                    reason: e.to_string(),
                });
                self.locals.push(Local {
                    place,
                    pid: 0,
                    channel: None,
                    out: [None, None],
                    exited: true,
                    ended: None,
                    spoke: false,
                    status: None,
                    reported: None,
                    seen: ProcessState::Running,
                });
            }
        }
    }

    /// The agent's event loop, until every rank has exited and said all it
    /// had to, or the launcher has gone.
    fn watch(&mut self, signals: &SignalFd, outbox: &Outbox) -> Result<(), String> {
        let mut next_alive = Instant::now() + ALIVE_EVERY;
        let mut next_look = Instant::now();
        loop {
            let now = Instant::now();
            if self.launcher_gone || now.duration_since(self.heard_at) > SILENCE {
                self.launcher_gone = true;
                return Ok(());
            }
            self.report_exits(now, outbox);
            if self.locals.iter().all(|l| l.exited && l.ended.is_none()) {
                let open = self
                    .locals
                    .iter()
                    .any(|l| l.channel.is_some() || l.out.iter().any(Option::is_some));
                if !open {
                    return Ok(());
                }
                if self.all_exited_at.is_none_or(|at| now >= at + LINGER) {
                    // Whatever holds the pipes open is a process the ranks
                    // left: killed at once, as spmdrun kills a local job's
                    // (and again while one is left); what the pipes still
                    // hold is read before the agent leaves.
                    spawn::end_all(&[], Duration::from_secs(10));
                    self.all_exited_at = Some(now);
                }
            }
            if self.kill_at.is_some_and(|k| now >= k) {
                self.kill_at = None;
                self.signal_all(Signal::SIGKILL);
            }
            if now >= next_alive {
                outbox.send(&Up::Alive);
                next_alive = now + ALIVE_EVERY;
            }
            if now >= next_look {
                self.report_status(outbox);
                next_look = now + STATUS_EVERY;
            }
            let ready = self.wait(signals, outbox.queued() < MAX_QUEUED);
            for sig in crate::signals::take(signals) {
                if sig == Signal::SIGCHLD {
                    for (pid, how) in spawn::reap() {
                        if let Some(l) = self.locals.iter_mut().find(|l| l.pid == pid && !l.exited) {
                            l.exited = true;
                            l.ended = Some((Instant::now(), how));
                            if let Some(input) = self.rank_input.as_mut().filter(|_| l.place.rank == 0) {
                                let dropped = input.close();
                                report_taken(input, dropped, outbox);
                            }
                        }
                    }
                } else if self.kill_at.is_none() {
                    // Asked to stop: the ranks are asked too.
                    self.signal_all(Signal::SIGTERM);
                    self.kill_at = Some(Instant::now() + GRACE);
                }
            }
            if ready.input {
                self.read_input();
            }
            // Orders that came with the last one before the loop (Start)
            // are in the inbox already.
            while let Some(order) = self.inbox.next_message::<Down>()? {
                self.heard_at = Instant::now();
                self.obey(order, outbox)?;
            }
            if let Some(input) = self.rank_input.as_mut().filter(|_| ready.rank_input) {
                let taken = input.write();
                report_taken(input, taken, outbox);
            }
            for (i, what) in ready.ranks {
                // Room is looked at before each read, so that many ranks
                // read in one round do not overshoot the bound many times;
                // a rank that has exited is read whatever the room (what
                // it left is bounded by its pipes), so that its last
                // messages come before its exit.
                if outbox.queued() >= MAX_QUEUED && !self.locals[i].exited {
                    continue;
                }
                match what {
                    2 => self.on_channel(i, outbox),
                    s => {
                        self.on_output(i, s, outbox);
                    }
                }
            }
        }
    }

    fn wait(&self, signals: &SignalFd, room: bool) -> Ready {
        let mut fds = vec![
            PollFd::new(self.input.as_fd(), PollFlags::POLLIN),
            PollFd::new(signals.as_fd(), PollFlags::POLLIN),
        ];
        let mut who = Vec::new();
        for (i, l) in self.locals.iter().enumerate() {
            // A rank's channel waits, as its output does, while the way up
            // is full (unless the rank has exited: its last words come
            // before its exit): a rank that floods its channel is slowed
            // to the pace of the link.
            if let Some(c) = l.channel.as_ref().filter(|_| room || l.exited) {
                fds.push(PollFd::new(c.as_fd(), PollFlags::POLLIN));
                who.push((i, 2));
            }
            for (s, fd) in l.out.iter().enumerate().filter(|_| room) {
                if let Some(fd) = fd {
                    fds.push(PollFd::new(fd.as_fd(), PollFlags::POLLIN));
                    who.push((i, s));
                }
            }
        }
        let rank_input = self.rank_input.as_ref().and_then(InputPipe::waiting);
        let rank_input_at = fds.len();
        if let Some(fd) = rank_input {
            fds.push(PollFd::new(fd, PollFlags::POLLOUT));
        }
        let lingering = self.locals.iter().any(|l| l.ended.is_some());
        let ms: u16 = if self.kill_at.is_some() || self.all_exited_at.is_some() || lingering || !room {
            10
        } else {
            STATUS_EVERY.as_millis() as u16
        };
        let _ = poll(&mut fds, PollTimeout::from(ms));
        let got = |f: &PollFd<'_>| f.revents().is_some_and(|r| !r.is_empty());
        Ready {
            input: got(&fds[0]),
            rank_input: fds.get(rank_input_at).is_some_and(got),
            ranks: fds[2..rank_input_at]
                .iter()
                .zip(who)
                .filter(|(f, _)| got(f))
                .map(|(_, w)| w)
                .collect(),
        }
    }

    fn signal_all(&self, sig: Signal) {
        for l in self.locals.iter().filter(|l| !l.exited && l.pid > 0) {
            spawn::signal_group(l.pid, sig);
        }
    }

    pub(super) fn on_channel(&mut self, i: usize, outbox: &Outbox) {
        let rank = self.locals[i].place.rank as u32;
        let Some(channel) = self.locals[i].channel.as_mut() else {
            return;
        };
        let mut heard = Vec::new();
        let open = channel.read_available().and_then(|open| {
            while let Some(m) = channel.next_message()? {
                heard.push(m);
            }
            Ok(open)
        });
        self.locals[i].spoke |= !heard.is_empty();
        for (msg, fds) in heard {
            // Segments stay on this host, checked; the launcher hears the
            // card.
            if let ControlMessage::Register { .. } = msg {
                if let Some(fault) = crate::node_segments::descriptor_fault(&fds) {
                    self.locals[i].channel = None;
                    let why = format!("bad card: {fault}");
                    outbox.send(&Up::Broke { rank, why });
                    return;
                }
                self.segments.keep(rank, fds);
            }
            outbox.send(&Up::Control { rank, msg });
        }
        match open {
            Ok(true) => {}
            Ok(false) => {
                self.locals[i].channel = None;
                outbox.send(&Up::ChannelClosed { rank });
            }
            Err(e) => {
                self.locals[i].channel = None;
                outbox.send(&Up::Broke {
                    rank,
                    why: e.to_string(),
                });
            }
        }
    }

    /// Forwards a chunk of a rank's stdout (0) or stderr (1); how many
    /// bytes it read.
    pub(super) fn on_output(&mut self, i: usize, stream: usize, outbox: &Outbox) -> usize {
        let rank = self.locals[i].place.rank as u32;
        let stderr = stream == 1;
        let Some(fd) = self.locals[i].out[stream].as_ref() else {
            return 0;
        };
        match read_chunk(fd.as_fd()) {
            Some(bytes) => {
                let read = bytes.len();
                if read > 0 {
                    outbox.send(&Up::Output { rank, stderr, bytes });
                }
                read
            }
            None => {
                self.locals[i].out[stream] = None;
                outbox.send(&Up::OutputClosed { rank, stderr });
                0
            }
        }
    }
}

/// What the agent's poll found ready: its input, room in rank 0's stdin,
/// and each rank's stdout (0), stderr (1) or channel (2).
struct Ready {
    input: bool,
    rank_input: bool,
    ranks: Vec<(usize, usize)>,
}
