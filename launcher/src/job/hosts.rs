//! The job's other hosts, in the launcher: one agent per host, started
//! through ssh (or `--launch-agent`); the preflight that hears from every
//! host before any rank starts and names every host that failed; and what
//! the agents then report of their ranks, handled as the ranks of this
//! machine are.

use std::net::{IpAddr, UdpSocket};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::Signal;
use nix::sys::signalfd::SignalFd;

use spmd::wire::ControlMessage;
use spmd::wire::status::{OTHER_THREADS_OUTSIDE, Snapshot};

use super::Job;
use super::remote::Agent;
use crate::agent::protocol::{Down, Up};
use crate::agent::{ALIVE_EVERY, SILENCE};
use crate::cli::Options;
use crate::machine::{Machine, Plan};
use crate::rank::{Pipe, Said};
use crate::spawn::{Launch, Place, Termination};

/// How long the preflight waits for every host to answer.
const PREFLIGHT_TIME: Duration = Duration::from_secs(30);
/// A snapshot from another host with its times moved onto this machine's
/// clock by `offset` nanoseconds (a wait's end of 0, never, or
/// "other threads outside spmd" stays as it is).
fn on_this_clock(mut s: Snapshot, offset: i128) -> Snapshot {
    let shift = |t: u64| u64::try_from((i128::from(t) + offset).max(0)).unwrap_or(u64::MAX - 1);
    if let Some(w) = s.waiting.as_mut() {
        w.since_ns = shift(w.since_ns);
        if w.until_ns != 0 && w.until_ns != OTHER_THREADS_OUTSIDE {
            w.until_ns = shift(w.until_ns);
        }
    }
    s
}

/// This machine's source address on the route to `to` (no packet is sent).
fn route_to(to: IpAddr) -> Option<IpAddr> {
    let any: IpAddr = if to.is_ipv4() {
        IpAddr::from([0u8; 4])
    } else {
        IpAddr::from([0u16; 8])
    };
    let socket = UdpSocket::bind((any, 0)).ok()?;
    socket.connect((to, 9)).ok()?;
    Some(socket.local_addr().ok()?.ip())
}

impl Job {
    /// Starts an agent on every other host of the job and waits until each
    /// has checked its host; on any failure, ends them all and returns one
    /// message naming every host that failed and why.
    pub(super) fn start_hosts(
        &mut self,
        opts: &Options,
        launch: &Launch,
        places: &[Place],
        signals: &SignalFd,
    ) -> Result<(), (String, i32)> {
        for (node, host) in opts.nodes.host.iter().enumerate() {
            let Some(h) = host else { continue };
            let host = &opts.hosts[*h];
            let mine: Vec<Place> = places.iter().filter(|p| p.node == node).copied().collect();
            let agent = Agent::start(opts, &host.name, &host.origin, launch, mine).map_err(|e| (e, 1))?;
            if opts.verbose {
                self.say(&[format!(
                    "{}: agent started through `{} {}` (pid {})",
                    agent.describe(),
                    opts.launch_agent.join(" "),
                    host.name,
                    agent.pid
                )]);
            }
            for &r in &agent.ranks {
                self.ranks[r].agent = Some(self.agents.len());
                self.ranks[r].host = Some(host.name.clone());
                self.ranks[r].stdout = Some(Pipe::remote(r, opts.tag_output));
                self.ranks[r].stderr = Some(Pipe::remote(r, opts.tag_output));
            }
            self.agents.push(agent);
        }
        self.preflight(signals)?;
        // The ranks of this machine listen where the other hosts reach it.
        if opts.nodes.host.len() > 1 && opts.nodes.host.contains(&None) {
            let first = self.agents.first().and_then(|a| a.listen);
            let here = opts
                .control_address
                .or_else(|| first.and_then(route_to))
                .ok_or_else(|| {
                    (
                        "cannot tell which address of this machine the other hosts reach; give --control-address"
                            .to_string(),
                        1,
                    )
                })?;
            if opts.verbose {
                self.say(&[format!("this machine's ranks listen on {here}")]);
            }
            self.local_listen = Some(here);
        }
        self.plan = self.plan_ranks(opts, places);
        if opts.verbose && opts.nodes.host.contains(&None) && !self.agents.is_empty() {
            let node = opts.nodes.host.iter().position(Option::is_none).unwrap_or(0);
            self.say(&[format!("this machine: {}", self.plan.describe(node))]);
        }
        for a in &self.agents {
            if opts.verbose {
                self.say(&[format!(
                    "{}: ready; its ranks listen on {}; {}",
                    a.describe(),
                    a.listen.map_or("?".into(), |l| l.to_string()),
                    self.plan.describe(a.node)
                )]);
            }
            let cores = a.ranks.iter().map(|&r| self.plan.core[r]).collect();
            a.outbox.send(&Down::Start { cores });
        }
        Ok(())
    }

    /// How each node's ranks wait and where they run, from the machines
    /// known so far (this one, and each agent's once it is ready): nodes
    /// that are one machine share its cores.
    pub(super) fn plan_ranks(&self, opts: &Options, places: &[Place]) -> Plan {
        let this = Machine::this();
        let machines: Vec<Machine> = (0..opts.nodes.host.len())
            .map(|node| {
                let agent = self.agents.iter().find(|a| a.node == node);
                agent.and_then(|a| a.machine.clone()).unwrap_or_else(|| this.clone())
            })
            .collect();
        let chosen = opts.wait_chosen.then_some(opts.settings.wait);
        Plan::new(places, &machines, chosen, opts.bind_to_cores)
    }

    /// Waits until every agent is ready, or has failed.
    fn preflight(&mut self, signals: &SignalFd) -> Result<(), (String, i32)> {
        let deadline = Instant::now() + PREFLIGHT_TIME;
        let mut next_alive = Instant::now() + ALIVE_EVERY;
        loop {
            if Instant::now() >= next_alive {
                next_alive = Instant::now() + ALIVE_EVERY;
                self.order_all(&Down::Alive);
            }
            let waiting = self
                .agents
                .iter()
                .filter(|a| a.listen.is_none() && a.refused.is_none() && a.from.is_some())
                .count();
            if waiting == 0 || Instant::now() >= deadline {
                break;
            }
            let mut fds = vec![PollFd::new(signals.as_fd(), PollFlags::POLLIN)];
            for a in &self.agents {
                for fd in [&a.from, &a.err].into_iter().flatten() {
                    fds.push(PollFd::new(fd.as_fd(), PollFlags::POLLIN));
                }
            }
            let _ = poll(&mut fds, PollTimeout::from(100u16));
            for sig in crate::signals::take(signals) {
                if sig == Signal::SIGCHLD {
                    self.reap_agents(&crate::spawn::reap());
                } else {
                    return Err((
                        format!("received {} while the hosts were checked; ending the job", sig.as_str()),
                        128 + sig as i32,
                    ));
                }
            }
            for a in &mut self.agents {
                a.read_stderr();
                match a.read_messages() {
                    Ok(msgs) => {
                        for m in msgs {
                            match m {
                                Up::Ready { listen, .. } if listen.is_unspecified() || listen.is_multicast() => {
                                    a.refused = Some(format!("the agent said its ranks listen on {listen}"));
                                }
                                Up::Ready { machine, .. } if machine.check().is_err() => {
                                    a.refused = machine.check().err();
                                }
                                Up::Ready { listen, machine } => {
                                    a.listen = Some(listen);
                                    a.machine = Some(machine);
                                }
                                Up::Refused { reason } => a.refused = Some(reason),
                                _ => {}
                            }
                        }
                    }
                    Err(e) => a.refused = Some(e),
                }
            }
        }
        // ssh's last words on stderr come with its exit: wait a moment for
        // them from the agents that failed.
        let settle = Instant::now() + Duration::from_millis(500);
        while self.agents.iter().any(|a| a.listen.is_none() && a.err.is_some()) && Instant::now() < settle {
            std::thread::sleep(Duration::from_millis(10));
            for a in &mut self.agents {
                if a.listen.is_none() {
                    a.read_stderr();
                }
            }
            self.reap_agents(&crate::spawn::reap());
        }
        // An agent that went after it said ready has failed too.
        let failed: Vec<String> = self
            .agents
            .iter()
            .filter(|a| a.listen.is_none() || a.refused.is_some() || a.from.is_none())
            .map(|a| {
                let why = if a.from.is_some() && a.refused.is_none() && a.said.is_empty() {
                    format!("no answer in {} s", PREFLIGHT_TIME.as_secs())
                } else {
                    a.why()
                };
                format!("{}: {why}", a.describe())
            })
            .collect();
        if failed.is_empty() {
            return Ok(());
        }
        Err((
            format!(
                "cannot start the job: {} of {} hosts failed: {}",
                failed.len(),
                self.agents.len(),
                failed.join("; ")
            ),
            1,
        ))
    }

    /// Records the exits of agents' ssh processes among `reaped`.
    pub(super) fn reap_agents(&mut self, reaped: &[(i32, Termination)]) {
        for (pid, how) in reaped {
            if let Some(a) = self.agents.iter_mut().find(|a| a.pid == *pid) {
                a.exited = Some(*how);
            }
        }
    }

    /// The descriptors of the agents to poll, and which agent each is
    /// (true for stderr). Their reports (the ranks' output among them) are
    /// read only while the output queues have `room`: otherwise ssh's pipe
    /// fills, the agent stops reading its ranks' pipes, and they wait.
    pub(super) fn agent_fds(&self, room: bool) -> Vec<(BorrowedFd<'_>, usize, bool)> {
        let mut fds = Vec::new();
        for (i, a) in self.agents.iter().enumerate() {
            if let Some(fd) = a.from.as_ref().filter(|_| room) {
                fds.push((fd.as_fd(), i, false));
            }
            if let Some(fd) = &a.err {
                fds.push((fd.as_fd(), i, true));
            }
        }
        fds
    }

    /// Sends a control message to a rank on another host.
    pub(super) fn tell_remote(&self, agent: usize, rank: usize, msg: ControlMessage) {
        self.agents[agent]
            .outbox
            .send(&Down::Control { rank: rank as u32, msg });
    }

    /// Cuts every agent's connection (before any rank has started).
    pub(super) fn cut_agents(&mut self) {
        for a in &mut self.agents {
            a.outbox.abandon();
            if a.exited.is_none() {
                crate::spawn::signal_group(a.pid, Signal::SIGKILL);
            }
            a.from = None;
            a.gone = true;
        }
    }

    /// Sends an order to every agent still there.
    pub(super) fn order_all(&self, order: &Down) {
        for a in self.agents.iter().filter(|a| !a.gone) {
            a.outbox.send(order);
        }
    }

    /// Keeps the agents' connections alive, and takes an agent that has
    /// been silent too long for gone (its host vanished).
    pub(super) fn keep_agents_alive(&mut self, now: Instant) {
        if now < self.next_alive {
            return;
        }
        self.next_alive = now + ALIVE_EVERY;
        self.order_all(&Down::Alive);
        // While the output queues are full spmdrun does not read the
        // agents: their silence then says nothing.
        if !(self.out.has_room() && self.err.has_room()) {
            for a in &mut self.agents {
                a.heard_at = now;
            }
            return;
        }
        let silent: Vec<usize> = (0..self.agents.len())
            .filter(|&i| !self.agents[i].gone && now.duration_since(self.agents[i].heard_at) > SILENCE)
            .collect();
        for i in silent {
            self.agents[i]
                .said
                .push(format!("nothing heard from it for {} s", SILENCE.as_secs()));
            self.agents[i].from = None;
            crate::spawn::signal_group(self.agents[i].pid, Signal::SIGKILL);
            self.agent_gone(i);
        }
    }

    /// What agent `i` wrote on stderr, passed on as spmdrun's.
    pub(super) fn on_agent_stderr(&mut self, i: usize) {
        let lines = self.agents[i].read_stderr();
        if !lines.is_empty() {
            let who = self.agents[i].describe();
            let lines: Vec<String> = lines.into_iter().map(|l| format!("{who}: {l}")).collect();
            self.say(&lines);
        }
    }

    /// What agent `i` reported.
    pub(super) fn on_agent(&mut self, i: usize) {
        let msgs = match self.agents[i].read_messages() {
            Ok(m) => m,
            Err(e) => {
                self.agents[i].said.push(e);
                self.agents[i].from = None;
                Vec::new()
            }
        };
        for m in msgs {
            self.on_report(i, m);
        }
        if self.agents[i].from.is_none() {
            self.agent_gone(i);
        }
    }

    fn on_report(&mut self, i: usize, m: Up) {
        if let Up::InputTaken { bytes, closed } = m {
            return self.on_input_taken(i, bytes, closed);
        }
        let rank_of = |rank: u32| Some(rank as usize).filter(|r| self.agents[i].ranks.contains(r));
        let rank = match &m {
            Up::Started { rank, .. }
            | Up::NotStarted { rank, .. }
            | Up::Control { rank, .. }
            | Up::Broke { rank, .. }
            | Up::ChannelClosed { rank }
            | Up::Output { rank, .. }
            | Up::OutputClosed { rank, .. }
            | Up::Exited { rank, .. }
            | Up::Status { rank, .. } => match rank_of(*rank) {
                Some(r) => r,
                None => {
                    let who = self.agents[i].describe();
                    return self.fail(
                        format!("the agent on {who} spoke for rank {rank}, which is not on it"),
                        1,
                    );
                }
            },
            Up::Ready { .. } | Up::Refused { .. } | Up::Alive | Up::InputTaken { .. } => return,
        };
        match m {
            Up::Started { pid, .. } => self.ranks[rank].pid = pid,
            Up::NotStarted { reason, .. } => {
                let who = self.agents[i].describe();
                self.ranks[rank].exited = Some(Termination::Code(1));
                self.ranks[rank].exited_at = Some(Instant::now());
                self.ranks[rank].judged = true;
                self.fail(format!("cannot start rank {rank} on {who}: {reason}"), 1);
            }
            Up::Control { msg, .. } => self.hear(rank, msg, Vec::new()),
            Up::Broke { why, .. } => self.broke(rank, why),
            Up::ChannelClosed { .. } => self.ranks[rank].control_closed = true,
            Up::Output { stderr, bytes, .. } => self.take_output(rank, stderr, Some(bytes)),
            Up::OutputClosed { stderr, .. } => self.take_output(rank, stderr, None),
            Up::Status {
                snapshot,
                stopped,
                now_ns,
                ..
            } => {
                // The host's clock, as an offset from this one's, from
                // its first report on: the times of a wait then compare
                // with this machine's (to within the report's journey) and
                // stay the same from one report to the next.
                let offset = *self.agents[i]
                    .clock_offset
                    .get_or_insert(i128::from(spmd::wire::status::now_ns()) - i128::from(now_ns));
                let snapshot = snapshot.map(|s| on_this_clock(s, offset));
                self.ranks[rank].remote_status = Some((snapshot, stopped));
            }
            Up::Exited { how, .. } => {
                let sane = match how {
                    Termination::Code(c) => (0..=255).contains(&c),
                    Termination::Signal(s) => (1..=64).contains(&s),
                };
                if !sane || self.ranks[rank].exited.is_some() {
                    let who = self.agents[i].describe();
                    return self.fail(
                        format!("the agent on {who} reported rank {rank} exited as {how:?}, which cannot be"),
                        1,
                    );
                }
                self.ranks[rank].exited = Some(how);
                self.ranks[rank].exited_at = Some(Instant::now());
            }
            Up::Ready { .. } | Up::Refused { .. } | Up::Alive | Up::InputTaken { .. } => {}
        }
    }

    /// Agent `i` has gone: its ranks that had not exited are lost with it,
    /// and the job fails naming the host.
    fn agent_gone(&mut self, i: usize) {
        if self.agents[i].gone {
            return;
        }
        self.agents[i].gone = true;
        self.agents[i].outbox.abandon();
        let lost: Vec<usize> = self.agents[i]
            .ranks
            .iter()
            .copied()
            .filter(|&r| self.ranks[r].exited.is_none())
            .collect();
        for r in self.agents[i].ranks.clone() {
            // An unfinished last line is still passed on (it is often the
            // error).
            self.take_output(r, false, None);
            self.take_output(r, true, None);
            self.ranks[r].control_closed = true;
        }
        if lost.is_empty() {
            return;
        }
        // ssh's exit says why, and its last words come with it.
        let pid = nix::unistd::Pid::from_raw(self.agents[i].pid);
        let give_up = Instant::now() + Duration::from_millis(300);
        while self.agents[i].exited.is_none() && Instant::now() < give_up {
            use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
            match waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(_, c)) => self.agents[i].exited = Some(Termination::Code(c)),
                Ok(WaitStatus::Signaled(_, s, _)) => self.agents[i].exited = Some(Termination::Signal(s as i32)),
                Ok(_) => std::thread::sleep(Duration::from_millis(5)),
                Err(_) => break,
            }
        }
        self.agents[i].read_stderr();
        let (who, why) = (self.agents[i].describe(), self.agents[i].why());
        for &r in &lost {
            self.ranks[r].exited = Some(Termination::Signal(Signal::SIGKILL as i32));
            self.ranks[r].exited_at = Some(Instant::now());
            self.ranks[r].judged = true;
        }
        let ranks: Vec<String> = lost.iter().map(|r| r.to_string()).collect();
        self.fail(
            format!(
                "the agent on {who} ended before its ranks ({why}); rank{} {} lost with it; ending the job",
                if lost.len() == 1 { "" } else { "s" },
                ranks.join(", ")
            ),
            1,
        );
    }

    /// Waits for every agent to finish (each ends once its ranks have
    /// ended) and reads what they still report (output among it), for as
    /// long as they keep sending, or `quiet` passes without a word; says
    /// so, and fails the job, if output may have been cut off.
    pub(super) fn finish_agents(&mut self, quiet: Duration) {
        let mut last_word = Instant::now();
        while self.agents.iter().any(|a| !a.gone && a.from.is_some()) {
            if last_word.elapsed() >= quiet {
                let silent: Vec<String> = self
                    .agents
                    .iter()
                    .filter(|a| !a.gone && a.from.is_some())
                    .map(Agent::describe)
                    .collect();
                self.say(&[format!(
                    "the agents on {} did not finish within {} s of their last word; their ranks' last output may \
                     be lost",
                    silent.join(", "),
                    quiet.as_secs()
                )]);
                self.failure.get_or_insert(1);
                return;
            }
            let room = self.out.has_room() && self.err.has_room();
            if !room {
                // Output is being written: the agents wait for it.
                last_word = Instant::now();
            }
            let mut fds = Vec::new();
            let mut who = Vec::new();
            for (fd, i, err) in self.agent_fds(room) {
                fds.push(PollFd::new(fd, PollFlags::POLLIN));
                who.push((i, err));
            }
            let _ = poll(&mut fds, PollTimeout::from(100u16));
            let ready: Vec<(usize, bool)> = fds
                .iter()
                .zip(who)
                .filter(|(f, _)| f.revents().is_some_and(|r| !r.is_empty()))
                .map(|(_, w)| w)
                .collect();
            for (i, err) in ready {
                last_word = Instant::now();
                if err {
                    self.on_agent_stderr(i);
                } else {
                    self.on_agent(i);
                }
            }
        }
    }

    /// A control message from rank `rank` (here or on another host).
    pub(super) fn hear(&mut self, rank: usize, msg: ControlMessage, fds: Vec<OwnedFd>) {
        let hello = matches!(msg, ControlMessage::Hello { .. });
        match self.ranks[rank].hear(rank, msg, fds) {
            Said::Nothing if hello => self.welcome(rank),
            Said::Nothing => {}
            Said::Registered => self.registered(rank),
            Said::Broke(why) => self.broke(rank, why),
            Said::Failed(why) => {
                let who = self.ranks[rank].describe(rank);
                let words: Vec<&str> = why.split_whitespace().collect();
                self.fail(format!("{who} failed: {}; ending the job", words.join(" ")), 1);
            }
        }
    }
}
