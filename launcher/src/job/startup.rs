//! Start-up in the launcher: each rank's welcome (settings and status
//! page), then, once every rank has registered, the table of cards and the
//! links between ranks (shared-memory segments or socket pairs).

use std::net::IpAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;

use spmd::wire::status::Page;
use spmd::wire::{ControlMessage, TransportKind};

use super::Job;
use crate::node_segments::NodeSegments;
use crate::spawn::Termination;

impl Job {
    /// Answers a rank's Hello with the job's settings and the rank's status
    /// page.
    pub(super) fn welcome(&mut self, rank: usize) {
        // Each rank listens where the other hosts reach its own.
        let access = self
            .access
            .as_ref()
            .map(|a| a.for_rank(rank, self.ranks.len(), self.listen_ip(rank, a.listen)));
        let agent = self.ranks[rank].agent;
        let mut settings = self.settings;
        settings.wait = self.plan.wait[self.nodes[rank]];
        let msg = ControlMessage::Welcome { settings, access };
        if let Some(i) = agent {
            // The agent gives the rank its status page.
            return self.tell_remote(i, rank, msg);
        }
        let (page, fd) = match Page::create() {
            Ok(p) => p,
            Err(e) => return self.fail(format!("cannot make rank {rank}'s status page: {e}"), 1),
        };
        let r = &mut self.ranks[rank];
        r.status = Some(page);
        if let Some(channel) = r.channel.as_mut() {
            if let Err(e) = channel.send(&msg, &[fd.as_fd()]).or_else(closed_is_seen_later) {
                let who = r.describe(rank);
                self.fail(format!("cannot answer {who}: {e}"), 1);
            }
        }
    }

    /// Where rank `rank` listens for its peers (`default` unless its host
    /// has an address of its own).
    fn listen_ip(&self, rank: usize, default: IpAddr) -> IpAddr {
        match self.ranks[rank].agent {
            Some(i) => self.agents[i].listen.unwrap_or(default),
            None => self.local_listen.unwrap_or(default),
        }
    }

    /// What is wrong with the card rank `rank` registered, if anything: it
    /// must offer what this job's transport needs and nothing else (over
    /// shared memory a segment, and when the job spans nodes a wake-up
    /// descriptor and an address too; over TCP an address; over sockets
    /// nothing), and its address must be where the rank was told to
    /// listen. A peer would otherwise fail on it and blame the launcher.
    pub(super) fn card_fault(&self, rank: usize) -> Option<String> {
        let card = &self.ranks[rank].registration.as_ref()?.card;
        let spans = self.nodes.iter().any(|n| *n != self.nodes[0]);
        let (shm, wake, tcp) = match self.settings.transport {
            TransportKind::Shm => (true, spans, spans),
            TransportKind::Socket => (false, false, false),
            TransportKind::Tcp => (false, false, true),
        };
        let offer = |what: &str, has: bool, due: bool| match (has, due) {
            (true, false) => Some(format!("a {what}, which this job does not use")),
            (false, true) => Some(format!("no {what}, which this job needs")),
            _ => None,
        };
        let fault = offer("shared-memory segment", card.shm, shm)
            .or_else(|| offer("wake-up descriptor", card.wake, wake))
            .or_else(|| offer("TCP address", card.tcp.is_some(), tcp));
        let fault = match (fault, card.tcp) {
            (Some(fault), _) => fault,
            (None, None) => return None,
            (None, Some(address)) => {
                let ip = self.listen_ip(rank, self.access.as_ref()?.listen);
                if address.ip() == ip && address.port() != 0 {
                    return None;
                }
                format!("the address {address}, not a port on {ip} where it was told to listen")
            }
        };
        Some(format!("bad card: it registered {fault}"))
    }

    pub(super) fn registered(&mut self, rank: usize) {
        if let Some(why) = self.card_fault(rank) {
            return self.broke(rank, why);
        }
        if self.failure.is_none() {
            let gone = self
                .ranks
                .iter()
                .position(|r| r.judged && !r.hello && r.exited == Some(Termination::Code(0)));
            if let Some(gone) = gone {
                let who = self.ranks[gone].describe(gone);
                self.fail(
                    format!(
                        "{who} exited without joining the job (it never called spmd::init) while other ranks wait \
                         for it; ending the job"
                    ),
                    1,
                );
                return;
            }
        }
        let _ = rank;
        if !self.table_sent && self.ranks.iter().all(|r| r.registration.is_some()) {
            self.send_table();
        }
    }

    /// The one global fence of start-up: everybody's card to everybody, and
    /// to each rank the segments of the other ranks of its node (over shared
    /// memory) or its ends of a socket pair to every other rank (over
    /// sockets), made here so that no rank needs to listen.
    fn send_table(&mut self) {
        self.table_sent = true;
        let cards: Vec<_> = self
            .ranks
            .iter()
            .filter_map(|r| r.registration.as_ref().map(|g| g.card.clone()))
            .collect();
        let table = ControlMessage::Table {
            cards,
            nodes: self.nodes.iter().map(|n| *n as u32).collect(),
        };
        // The segments of this machine's ranks leave the registrations here
        // and are closed once every rank has its copies (the agent on each
        // other host does the same for its ranks).
        let mut segments = NodeSegments::default();
        for (r, rank) in self.ranks.iter_mut().enumerate() {
            if let Some(g) = rank.registration.as_mut().filter(|_| rank.agent.is_none()) {
                segments.keep(r as u32, std::mem::take(&mut g.fds));
            }
        }
        let mut broken = Vec::new();
        for rank in 0..self.ranks.len() {
            if let Some(i) = self.ranks[rank].agent {
                self.tell_remote(i, rank, table.clone());
                continue;
            }
            let node: Vec<u32> = (0..self.ranks.len())
                .filter(|r| self.nodes[*r] == self.nodes[rank])
                .map(|r| r as u32)
                .collect();
            let r = &mut self.ranks[rank];
            let Some(channel) = r.channel.as_mut() else { continue };
            let result = channel
                .send(&table, &[])
                .and_then(|()| segments.send(rank as u32, &node, channel));
            if let Err(e) = result.or_else(closed_is_seen_later) {
                broken.push((rank, e.to_string()));
            }
        }
        segments.clear();
        if self.settings.transport == TransportKind::Socket && broken.is_empty() {
            if let Err((rank, e)) = self.send_links() {
                broken.push((rank, e));
            }
        }
        if let Some((rank, e)) = broken.into_iter().next() {
            let who = self.ranks[rank].describe(rank);
            self.fail(format!("cannot send the table to {who}: {e}"), 1);
        }
    }

    /// Makes a socket pair for every pair of ranks and gives each rank its
    /// end, one pair at a time (so that spmdrun holds two descriptors at
    /// once, however many ranks there are).
    fn send_links(&mut self) -> Result<(), (usize, String)> {
        let n = self.ranks.len();
        for i in 0..n {
            for j in i + 1..n {
                let (a, b) = UnixStream::pair().map_err(|e| (i, format!("making a socket pair: {e}")))?;
                for (rank, other, end) in [(i, j, OwnedFd::from(a)), (j, i, OwnedFd::from(b))] {
                    let Some(channel) = self.ranks[rank].channel.as_mut() else {
                        continue;
                    };
                    let msg = ControlMessage::Links {
                        ranks: vec![other as u32],
                    };
                    channel
                        .send(&msg, &[end.as_fd()])
                        .or_else(closed_is_seen_later)
                        .map_err(|e| (rank, e.to_string()))?;
                }
            }
        }
        Ok(())
    }
}

/// A rank that closed its channel is past hearing; the event loop sees the
/// close (with whatever the rank said before it) and reports that instead.
pub(super) fn closed_is_seen_later(e: spmd::Error) -> spmd::Result<()> {
    match e {
        spmd::Error::JobEnded { .. } => Ok(()),
        e => Err(e),
    }
}
