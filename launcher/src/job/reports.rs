//! What the agents of the job's other hosts report of their ranks, handled as the ranks of this machine are.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::Signal;

use spmd::wire::ControlMessage;
use spmd::wire::status::{LATEST_DEADLINE, Snapshot, is_deadline};

use super::Job;
use super::remote::Agent;
use crate::agent::protocol::{Down, Up};
use crate::agent::{ALIVE_EVERY, SILENCE};
use crate::rank::Said;
use crate::spawn::Termination;

/// A snapshot from another host with its times moved onto this machine's
/// clock by `offset` nanoseconds (a wait's end of 0, never, or a marker
/// such as "other threads outside spmd" stays as it is).
fn on_this_clock(mut s: Snapshot, offset: i128) -> Snapshot {
    let shift = |t: u64| {
        u64::try_from((i128::from(t) + offset).max(0))
            .unwrap_or(LATEST_DEADLINE)
            .min(LATEST_DEADLINE)
    };
    if let Some(w) = s.waiting.as_mut() {
        w.since_ns = shift(w.since_ns);
        if is_deadline(w.until_ns) {
            w.until_ns = shift(w.until_ns).max(1);
        }
    }
    s
}

impl Job {
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
            // An agent's words, on one line of text (a channel's error
            // may quote what the rank sent).
            Up::Broke { why, .. } => self.broke(rank, crate::shown::shown(&why)),
            Up::ChannelClosed { .. } => self.ranks[rank].control_closed = true,
            Up::Output { stderr, bytes, .. } => self.take_output(rank, stderr, Some(bytes)),
            Up::OutputClosed { stderr, .. } => self.take_output(rank, stderr, None),
            Up::Status {
                snapshot,
                state,
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
                self.ranks[rank].remote_status = Some((snapshot, state));
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
                self.fail(format!("{who} failed: {why}; ending the job"), 1);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use spmd::wire::status::{BUSY_IN_SPMD, OTHER_THREADS_OUTSIDE, Phase, WaitOp, Waiting};

    fn waiting_until(until_ns: u64) -> Snapshot {
        Snapshot {
            phase: Phase::Running,
            waiting: Some(Waiting {
                op: WaitOp::Receive,
                peer: Some(1),
                tag: None,
                context: 0,
                call: 0,
                sig: 0,
                since_ns: 5_000,
                until_ns,
            }),
            sent: 0,
            arrived: 0,
            pid: 1,
        }
    }

    #[test]
    fn another_hosts_times_move_and_its_markers_stay() {
        let until = |s: Snapshot| s.waiting.map(|w| (w.since_ns, w.until_ns));
        assert_eq!(until(on_this_clock(waiting_until(9_000), 1_000)), Some((6_000, 10_000)));
        for marker in [0, OTHER_THREADS_OUTSIDE, BUSY_IN_SPMD] {
            assert_eq!(
                until(on_this_clock(waiting_until(marker), 1_000)),
                Some((6_000, marker))
            );
        }
        // A deadline moved past the end of the clock stays a deadline.
        let late = until(on_this_clock(waiting_until(LATEST_DEADLINE), 1_000_000));
        assert_eq!(late, Some((1_005_000, LATEST_DEADLINE)));
        // One moved before the start of the clock too.
        assert_eq!(until(on_this_clock(waiting_until(9_000), -20_000)), Some((0, 1)));
    }
}
