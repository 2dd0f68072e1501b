//! The job's other hosts, in the launcher: one agent per host, started
//! through ssh (or `--launch-agent`), and the preflight that hears from every
//! host before any rank starts and names every host that failed.

use std::net::{IpAddr, UdpSocket};
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::Signal;
use nix::sys::signalfd::SignalFd;

use super::Job;
use super::remote::Agent;
use crate::agent::ALIVE_EVERY;
use crate::agent::protocol::{Down, Up};
use crate::cli::Options;
use crate::machine::{Machine, Plan};
use crate::rank::Pipe;
use crate::spawn::{Launch, Place, Termination};

/// How long the preflight waits for every host to answer.
const PREFLIGHT_TIME: Duration = Duration::from_secs(30);

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
}
