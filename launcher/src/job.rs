//! The life of one job in the launcher: start the ranks, answer them on
//! their control channels and hand out the table of cards, forward their
//! output, watch them, and end them all together when one fails. One
//! thread does it all with one `poll` (two more write the output), however
//! many ranks there are.

use std::collections::HashMap;
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::Signal;
use nix::sys::signalfd::SignalFd;

use spmd::auth::{PairKeys, Secret, random_bytes};
use spmd::wire::{Access, Channel, LAUNCHER_ID, Settings, TransportKind};

use crate::agent::protocol::Down;
use crate::cli::Options;
use crate::hang::HangWatch;
use crate::input_pipe::InputPipe;
use crate::machine::Plan;
use crate::output::{Stream, Writer};
use crate::rank::{Pipe, Rank};
use crate::spawn::{self, Input, Launch, Place, Termination};

mod hosts;
mod input;
mod relay;
mod remote;
mod reports;
mod startup;
mod verdicts;

/// How long a rank may take to die after it was asked to (SIGTERM).
const GRACE: Duration = Duration::from_millis(200);
/// How long to wait for a dead rank's control channel to close, so its last
/// words (panic message, finalize) are known before judging it.
const LAST_WORDS: Duration = Duration::from_secs(1);
/// How often the status pages are read for hang reports.
const HANG_LOOK: Duration = Duration::from_millis(500);
/// How long spmdrun keeps killing what the job left before it gives up.
const END_LIMIT: Duration = Duration::from_secs(10);
/// The exit status of a job ended for a deadlock.
pub const DEADLOCK: i32 = 125;

/// What the ranks of a job over TCP get their [`Access`] from: the job's
/// id and secret (which only spmdrun holds: each rank gets
/// the keys of its own pairs of ranks), and where ranks listen unless
/// their host says otherwise.
struct TcpAccess {
    job: u64,
    secret: Secret,
    listen: std::net::IpAddr,
}

impl TcpAccess {
    /// Rank `rank`'s access in a job of `size`, listening on `listen`.
    fn for_rank(&self, rank: usize, size: usize, listen: std::net::IpAddr) -> Access {
        Access {
            job: self.job,
            keys: PairKeys::derive(&self.secret, self.job, rank as u32, size as u32),
            listen,
        }
    }
}

struct Job {
    ranks: Vec<Rank>,
    by_pid: HashMap<i32, usize>,
    /// The first failure's exit status.
    failure: Option<i32>,
    kill_at: Option<Instant>,
    killed: bool,
    table_sent: bool,
    settings: Settings,
    /// The job's id, secret and listening address, for ranks over TCP.
    access: Option<TcpAccess>,
    out: Writer,
    err: Writer,
    hang: Option<HangWatch>,
    end_on_deadlock: bool,
    next_look: Instant,
    /// The agents of the job's other hosts.
    agents: Vec<remote::Agent>,
    /// Where this machine's ranks listen when the job spans hosts.
    local_listen: Option<std::net::IpAddr>,
    /// When the agents are next told that spmdrun is alive.
    next_alive: Instant,
    /// Every rank's node.
    nodes: Vec<usize>,
    /// How each node's ranks wait and which core each rank is bound to.
    plan: Plan,
    /// spmdrun's stdin on its way to rank 0, when rank 0 is on another
    /// host or spmdrun's stdin is a terminal (otherwise rank 0 inherits
    /// it).
    input: Option<input::InputRelay>,
}

/// Runs the job to its end and returns spmdrun's exit status.
pub fn run(opts: Options, signals: SignalFd) -> Result<i32, String> {
    spawn::become_subreaper()?;
    let settings = Settings {
        transport: opts.settings.transport,
        // Each node's own comes from the plan, once its machine is known.
        wait: opts.settings.wait,
        single_copy: opts.settings.single_copy,
    };
    let places = Place::all(&opts.nodes.of_rank);
    // The ranks spmdrun starts itself: those of this machine.
    let here: Vec<Place> = places
        .iter()
        .filter(|p| opts.nodes.host[p.node].is_none())
        .copied()
        .collect();
    if settings.transport == TransportKind::Shm && here.len() > 1 {
        crate::memory::check_shared_memory(here.len())?;
    }
    let mut job_bytes = [0u8; 8];
    random_bytes(&mut job_bytes).map_err(|e| e.to_string())?;
    let launch = Launch {
        job: u64::from_le_bytes(job_bytes),
        program: opts.program.clone(),
        args: opts.args.clone(),
        env: opts.env.clone(),
        // On other hosts the ranks start where spmdrun was started.
        wdir: opts.wdir.clone().or_else(|| std::env::current_dir().ok()),
    };
    // Over TCP every connection between ranks proves its pair's key;
    // ranks listen on loopback, or where the other hosts reach theirs.
    let spans_hosts = opts.nodes.host.len() > 1;
    let access = if settings.transport == TransportKind::Tcp || spans_hosts {
        Some(TcpAccess {
            job: launch.job,
            secret: Secret::random().map_err(|e| e.to_string())?,
            listen: std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
        })
    } else {
        None
    };
    let mut job = Job {
        ranks: (0..opts.ranks).map(|_| Rank::default()).collect(),
        by_pid: HashMap::new(),
        failure: None,
        kill_at: None,
        killed: false,
        table_sent: false,
        settings,
        access,
        out: Writer::new(Stream::Stdout),
        err: Writer::new(Stream::Stderr),
        hang: opts.hang_report.map(|t| HangWatch::new(t, opts.ranks)),
        end_on_deadlock: opts.end_on_deadlock,
        next_look: Instant::now(),
        agents: Vec::new(),
        local_listen: None,
        next_alive: Instant::now(),
        nodes: opts.nodes.of_rank.clone(),
        plan: Plan::default(),
        input: None,
    };
    job.plan = job.plan_ranks(&opts, &places);
    let elsewhere = Launch {
        program: opts.program_elsewhere.clone(),
        ..launch.clone()
    };
    if let Err((e, code)) = job.start_hosts(&opts, &elsewhere, &places, &signals) {
        // No rank has started: the connections to the hosts are cut.
        job.order_all(&Down::Kill);
        job.cut_agents();
        job.say(&[e]);
        job.failure = Some(code);
        for r in &mut job.ranks {
            r.judged = true;
        }
    }
    if job.failure.is_none() {
        if let Some(agent) = job.ranks[0].agent {
            job.input = Some(input::InputRelay::new(input::Target::Agent(agent)));
        }
    }
    // A core each, as Open MPI does, when the ranks fit: two ranks that
    // poll for each other then never share a core, whatever else runs.
    let cores = spawn::usable_cores();
    for place in &here {
        if job.failure.is_some() {
            break;
        }
        let core = job.plan.core[place.rank].and_then(|i| cores.get(i).copied());
        if let Err(e) = job.start(&opts, &launch, *place, core) {
            let rank = place.rank;
            job.fail(format!("cannot start rank {rank} ({}): {e}", opts.program.display()), 1);
            break;
        }
    }
    for r in job.ranks.iter_mut().filter(|r| r.pid == 0 && r.agent.is_none()) {
        // Never started: nothing to wait for.
        r.exited = Some(Termination::Code(1));
        r.judged = true;
    }
    let deadline = opts.timeout.map(|t| (Instant::now() + t, t));
    job.main_loop(&signals, deadline);
    // Each agent ends once its ranks have; one that lingers is cut off.
    job.finish_agents(END_LIMIT);
    // No process of the job outlives it, even one a rank left behind.
    let pids: Vec<i32> = job
        .ranks
        .iter()
        .filter(|r| r.agent.is_none())
        .map(|r| r.pid)
        .filter(|p| *p > 0)
        .collect();
    spawn::end_all(&pids, END_LIMIT);
    job.drain_output();
    let code = job.failure.unwrap_or(0);
    let Job { out, err, .. } = job;
    let lost_out = out.finish();
    let lost_err = err.finish();
    if let Some((e, bytes)) = lost_out {
        eprintln!("spmdrun: cannot write the ranks' output to standard output ({e}): {bytes} bytes were lost");
        return Ok(if code == 0 { 1 } else { code });
    }
    if lost_err.is_some() && code == 0 {
        return Ok(1);
    }
    Ok(code)
}

impl Job {
    fn start(&mut self, opts: &Options, launch: &Launch, place: Place, core: Option<usize>) -> Result<(), String> {
        let rank = place.rank;
        let input = match rank {
            0 if input::is_terminal() => Input::Piped,
            0 => Input::Inherit,
            _ => Input::Empty,
        };
        let mut started = spawn::start_rank(launch, place, input, core).map_err(|e| e.to_string())?;
        let r = &mut self.ranks[rank];
        r.pid = started.child.id() as i32;
        self.by_pid.insert(r.pid, rank);
        if let Some(pipe) = started.child.stdin.take() {
            // A pipe that cannot be made nonblocking is not fed (a write
            // could stall spmdrun): rank 0 sees its end.
            let pipe = Some(std::os::fd::OwnedFd::from(pipe))
                .filter(|p| crate::nonblocking::set_nonblocking(p.as_fd()).is_ok());
            self.input = Some(input::InputRelay::new(input::Target::Here(InputPipe::new(pipe))));
        }
        r.channel = Some(Channel::new(
            started.channel,
            LAUNCHER_ID,
            rank as u32,
            format!("rank {rank}"),
        ));
        if let Some(out) = started.child.stdout.take() {
            r.stdout = Some(Pipe::stdout(out, rank, opts.tag_output).map_err(|e| e.to_string())?);
        }
        if let Some(err) = started.child.stderr.take() {
            r.stderr = Some(Pipe::stderr(err, rank, opts.tag_output).map_err(|e| e.to_string())?);
        }
        Ok(())
    }

    fn main_loop(&mut self, signals: &SignalFd, deadline: Option<(Instant, Duration)>) {
        while !self.ranks.iter().all(|r| r.judged) {
            let room = self.out.has_room() && self.err.has_room();
            let timeout = self.next_wake(deadline, room);
            let ready = self.wait(signals, timeout, room);
            for sig in crate::signals::take(signals) {
                self.on_signal(sig);
            }
            for (rank, what) in ready {
                match what {
                    Source::Channel => self.on_channel(rank),
                    Source::Stdout => {
                        self.on_output(rank, Stream::Stdout);
                    }
                    Source::Stderr => {
                        self.on_output(rank, Stream::Stderr);
                    }
                    Source::Agent => self.on_agent(rank),
                    Source::AgentStderr => self.on_agent_stderr(rank),
                    Source::Input => self.on_input(),
                    Source::InputRoom => {
                        if let Some(relay) = &mut self.input {
                            relay.on_room();
                        }
                    }
                }
            }
            if self.ranks[0].exited.is_some() || self.failure.is_some() {
                if let Some(relay) = &mut self.input {
                    relay.rank_exited();
                }
            }
            let now = Instant::now();
            self.keep_agents_alive(now);
            self.judge_ready(now);
            if let Some((d, t)) = deadline {
                if now >= d && self.failure.is_none() {
                    let lines = self.hang_lines();
                    self.fail(
                        format!("the job ran longer than --timeout {} s; ending it", t.as_secs_f64()),
                        124,
                    );
                    self.say(&lines);
                }
            }
            if now >= self.next_look {
                self.next_look = now + HANG_LOOK;
                self.look_for_hangs();
            }
            if self.kill_at.is_some_and(|k| now >= k) && !self.killed {
                self.killed = true;
                for r in self
                    .ranks
                    .iter()
                    .filter(|r| r.exited.is_none() && r.pid > 0 && r.agent.is_none())
                {
                    spawn::signal_group(r.pid, Signal::SIGKILL);
                }
                self.order_all(&Down::Kill);
            }
        }
    }

    fn next_wake(&self, deadline: Option<(Instant, Duration)>, room: bool) -> Duration {
        let now = Instant::now();
        let mut wake = now + Duration::from_secs(3600);
        if let Some(k) = self.kill_at {
            wake = wake.min(k);
        }
        if let Some((d, _)) = deadline {
            wake = wake.min(d);
        }
        if self.hang.is_some() {
            wake = wake.min(self.next_look);
        }
        if !self.agents.is_empty() {
            wake = wake.min(self.next_alive);
        }
        let mut left = wake.saturating_duration_since(now);
        // Ranks that died with their channel open get a moment for their
        // last words; full output queues are looked at again soon.
        if self.awaiting_last_words() || !room {
            left = left.min(Duration::from_millis(10));
        }
        if self.input.as_ref().is_some_and(|i| i.held_by_terminal()) {
            left = left.min(HANG_LOOK);
        }
        left
    }

    /// Polls every channel and pipe (pipes only while the output queues
    /// have room) and the signals; returns what is ready.
    fn wait(&self, signals: &SignalFd, timeout: Duration, room: bool) -> Vec<(usize, Source)> {
        let mut fds: Vec<PollFd<'_>> = vec![PollFd::new(signals.as_fd(), PollFlags::POLLIN)];
        let mut who = Vec::new();
        for (rank, r) in self.ranks.iter().enumerate() {
            let pipes = [(&r.stdout, Source::Stdout), (&r.stderr, Source::Stderr)];
            let pipes = pipes
                .into_iter()
                .filter(|_| room)
                .filter_map(|(p, w)| Some((p.as_ref()?.fd.as_ref()?.as_fd(), w)));
            for (fd, what) in r.channel.iter().map(|c| (c.as_fd(), Source::Channel)).chain(pipes) {
                fds.push(PollFd::new(fd, PollFlags::POLLIN));
                who.push((rank, what));
            }
        }
        for (fd, agent, err) in self.agent_fds(room) {
            fds.push(PollFd::new(fd, PollFlags::POLLIN));
            who.push((agent, if err { Source::AgentStderr } else { Source::Agent }));
        }
        if let Some(stdin) = self.input.as_ref().and_then(|i| i.to_read()) {
            fds.push(PollFd::new(stdin, PollFlags::POLLIN));
            who.push((0, Source::Input));
        }
        if let Some(pipe) = self.input.as_ref().and_then(|i| i.pipe_waiting()) {
            fds.push(PollFd::new(pipe, PollFlags::POLLOUT));
            who.push((0, Source::InputRoom));
        }
        let ms = timeout.as_millis().min(60_000) as i32;
        let _ = poll(&mut fds, PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX));
        fds[1..]
            .iter()
            .zip(who)
            .filter(|(fd, _)| fd.revents().is_some_and(|r| !r.is_empty()))
            .map(|(_, w)| w)
            .collect()
    }

    fn on_signal(&mut self, sig: Signal) {
        if sig == Signal::SIGCHLD {
            let reaped = spawn::reap();
            for &(pid, how) in &reaped {
                if let Some(&rank) = self.by_pid.get(&pid) {
                    self.ranks[rank].exited = Some(how);
                    self.ranks[rank].exited_at = Some(Instant::now());
                }
            }
            self.reap_agents(&reaped);
        } else if self.failure.is_none() {
            self.fail(format!("received {}; ending the job", sig.as_str()), 128 + sig as i32);
        }
    }

    /// Reads what rank `rank` said on its channel and acts on it.
    fn on_channel(&mut self, rank: usize) {
        let Some(channel) = self.ranks[rank].channel.as_mut() else {
            return;
        };
        let open = match channel.read_available() {
            Ok(open) => open,
            Err(e) => return self.broke(rank, e.to_string()),
        };
        loop {
            let Some(channel) = self.ranks[rank].channel.as_mut() else {
                return;
            };
            let (msg, fds) = match channel.next_message() {
                Ok(Some(m)) => m,
                Ok(None) => break,
                Err(e) => return self.broke(rank, e.to_string()),
            };
            self.hear(rank, msg, fds);
        }
        if !open {
            let r = &mut self.ranks[rank];
            r.channel = None;
            r.control_closed = true;
        }
    }

    /// A rank broke its channel's protocol: it is closed, and the job fails.
    fn broke(&mut self, rank: usize, why: String) {
        let r = &mut self.ranks[rank];
        r.channel = None;
        r.control_closed = true;
        let who = r.describe(rank);
        self.fail(format!("{who}: {why}; ending the job"), 1);
    }

    /// Prints lines on standard error, each marked as spmdrun's.
    fn say(&self, lines: &[String]) {
        let mut text = String::new();
        for l in lines {
            text.push_str("spmdrun: ");
            text.push_str(l);
            text.push('\n');
        }
        self.err.push(text.into_bytes());
    }

    /// Records the first failure, reports it, and asks every rank still
    /// running to stop; after the grace they are killed.
    fn fail(&mut self, message: String, code: i32) {
        if self.failure.is_some() {
            return;
        }
        self.say(&[message]);
        self.failure = Some(code);
        for r in self
            .ranks
            .iter()
            .filter(|r| r.exited.is_none() && r.pid > 0 && r.agent.is_none())
        {
            spawn::signal_group(r.pid, Signal::SIGTERM);
        }
        self.order_all(&Down::End);
        self.kill_at = Some(Instant::now() + GRACE);
    }
}

/// What a ready descriptor in the loop belongs to.
#[derive(Debug, Clone, Copy)]
enum Source {
    Channel,
    Stdout,
    Stderr,
    /// The index is an agent's: its reports, or its stderr.
    Agent,
    AgentStderr,
    /// spmdrun's stdin, passed on to rank 0.
    Input,
    /// Room in rank 0's stdin pipe (rank 0 on this machine).
    InputRoom,
}
