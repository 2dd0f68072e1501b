//! Hang and deadlock reports, from the ranks' status pages (see
//! `spmd::wire::status`): what each rank waits on and since when, which
//! rank is computing outside spmd, stopped, or has not joined yet; and when
//! every rank is blocked, nothing is in flight and nothing changes, the
//! deadlock, with its cycle of waits.

use std::time::{Duration, Instant};

use spmd::wire::status::{BUSY_IN_SPMD, OTHER_THREADS_OUTSIDE, Phase, WaitOp, Waiting, now_ns};

use crate::process_state::ProcessState;
use crate::rank::Rank;

/// What one look at the ranks found.
pub enum Verdict {
    /// Some ranks have been blocked for the threshold: these lines say on
    /// what.
    Report(Vec<String>),
    /// Every rank is blocked for good: these lines say how.
    Deadlock(Vec<String>),
}

/// How a rank looked.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seen {
    Gone,
    NotJoined,
    Starting,
    Stopped,
    Computing,
    Finalized,
    /// On another host, whose agent has not reported its status page yet.
    Remote,
    Waiting(Waiting),
    /// Its status page says what cannot be: this says what.
    Garbled(String),
}

/// Watches the ranks for hangs.
pub struct HangWatch {
    threshold: Duration,
    /// What the ranks looked like at the last report, so that one episode
    /// is told once.
    reported: Option<Vec<Seen>>,
    /// What every rank looked like at the last look, the messages sent and
    /// arrived, and since when nothing changed.
    last: Option<(Vec<Seen>, u64, u64, Instant)>,
    /// Each rank's messages sent and arrived as its page said at the last
    /// look.
    counts: Vec<(u64, u64)>,
    /// The ranks whose page, between the last two looks, said the same
    /// wait with other counts: messages moved through the wait, though it
    /// may have slept between them (and the page said asleep).
    moving: Vec<bool>,
    /// When each rank was last seen changing from one state to another.
    changed: Vec<Instant>,
}

impl HangWatch {
    pub fn new(threshold: Duration, ranks: usize) -> HangWatch {
        let now = Instant::now();
        HangWatch {
            threshold,
            reported: None,
            last: None,
            counts: vec![(0, 0); ranks],
            moving: vec![false; ranks],
            changed: vec![now; ranks],
        }
    }

    /// Looks at every rank.
    pub fn look(&mut self, ranks: &[Rank]) -> Option<Verdict> {
        let now = Instant::now();
        let (seen, counts, sent, arrived) = observe(ranks);
        if let Some((before, ..)) = &self.last {
            for (i, (a, b)) in seen.iter().zip(before).enumerate() {
                if !same_state(a, b) {
                    self.changed[i] = now;
                }
                self.moving[i] = matches!(a, Seen::Waiting(_)) && same_state(a, b) && counts[i] != self.counts[i];
            }
        }
        self.counts = counts;
        let stable_since = match &self.last {
            Some((before, s, a, since)) if *before == seen && *s == sent && *a == arrived => *since,
            _ => now,
        };
        self.last = Some((seen.clone(), sent, arrived, stable_since));
        let now_ns = now_ns();
        let long = |w: &Waiting| Duration::from_nanos(now_ns.saturating_sub(w.since_ns)) >= self.threshold;
        // A rank inside `init` waits too: for ranks that have not joined.
        let starting_long =
            |r: usize, s: &Seen| *s == Seen::Starting && now.duration_since(self.changed[r]) >= self.threshold;
        let blocked = seen
            .iter()
            .enumerate()
            .any(|(r, s)| matches!(s, Seen::Waiting(w) if long(w)) || starting_long(r, s));
        if !blocked {
            self.reported = None;
            return None;
        }
        let lines = self.describe_all(ranks, &seen, now);
        let everyone_waits = seen
            .iter()
            .all(|s| matches!(s, Seen::Gone | Seen::Finalized) || matches!(s, Seen::Waiting(w) if w.until_ns == 0));
        let anyone_waits = seen.iter().any(|s| matches!(s, Seen::Waiting(_)));
        // Messages in flight may yet end a wait: a large transfer under way
        // changes no status page until it is whole, and nothing on the
        // pages tells a message held back by a full queue from one.
        let quiet = sent == arrived && now.duration_since(stable_since) >= self.threshold;
        if everyone_waits && anyone_waits && quiet {
            let mut out = vec![deadlock_line(&seen)];
            out.extend(mismatched_collectives(&seen));
            out.extend(lines);
            return Some(Verdict::Deadlock(out));
        }
        // Told already if every rank that waits long now waited on the same
        // thing at the last report: a rank that is between two sleeps of
        // one wait, or has moved on, starts no new episode.
        let told = self.reported.as_ref().is_some_and(|before| {
            before.len() == seen.len()
                && before.iter().zip(&seen).all(|(a, b)| match b {
                    Seen::Waiting(w) if long(w) => same_state(a, b),
                    // Stopped since: that holds the verdict off, and is
                    // told.
                    Seen::Stopped => a == b,
                    _ => true,
                })
        });
        if told {
            return None;
        }
        self.reported = Some(seen);
        let mut out = vec![format!(
            "ranks have been blocked inside spmd for {:.0} s or more:",
            self.threshold.as_secs_f64()
        )];
        out.extend(lines);
        Some(Verdict::Report(out))
    }

    /// One line per rank saying what it does (for reports and --timeout).
    pub fn describe_now(&mut self, ranks: &[Rank]) -> Vec<String> {
        let (seen, ..) = observe(ranks);
        // What the last look found moving holds only for a wait still
        // under way.
        if let Some((before, ..)) = &self.last {
            for (moving, (a, b)) in self.moving.iter_mut().zip(seen.iter().zip(before)) {
                *moving &= same_state(a, b);
            }
        }
        self.describe_all(ranks, &seen, Instant::now())
    }

    fn describe_all(&self, ranks: &[Rank], seen: &[Seen], now: Instant) -> Vec<String> {
        let now_ns = now_ns();
        seen.iter()
            .enumerate()
            .filter(|(_, s)| !matches!(s, Seen::Gone))
            .map(|(r, s)| {
                let who = ranks[r].describe(r);
                let for_ = |since: Instant| format!("for {:.1} s", now.duration_since(since).as_secs_f64());
                match s {
                    Seen::Waiting(w) => {
                        let secs = now_ns.saturating_sub(w.since_ns) as f64 / 1e9;
                        let others = match w.until_ns {
                            OTHER_THREADS_OUTSIDE => " (another thread of it is outside spmd, and may yet send)",
                            BUSY_IN_SPMD => MOVING,
                            _ if self.moving[r] => MOVING,
                            _ => "",
                        };
                        format!("  {who} waits {} for {secs:.1} s{others}", wait_text(w))
                    }
                    Seen::Computing => match ranks[r].process_state(true) {
                        ProcessState::Writing { stderr } => format!(
                            "  {who} is blocked writing to its standard {}: whatever reads it does not keep up \
                             (outside spmd {})",
                            if stderr { "error" } else { "output" },
                            for_(self.changed[r])
                        ),
                        _ => format!(
                            "  {who} is running outside any spmd wait (computing, or in calls that return at once) {}",
                            for_(self.changed[r])
                        ),
                    },
                    Seen::Stopped => format!("  {who} is stopped (SIGSTOP or a debugger)"),
                    Seen::NotJoined => format!(
                        "  {who} has not called spmd::init while others have ({})",
                        for_(self.changed[r])
                    ),
                    Seen::Starting => format!("  {who} is inside spmd::init, waiting for the other ranks to join"),
                    Seen::Finalized => format!("  {who} has finalized and is exiting"),
                    Seen::Remote => format!("  {who} runs on another host, whose agent has not reported it yet"),
                    Seen::Garbled(what) => format!("  {who} has a status page that says what cannot be ({what})"),
                    Seen::Gone => String::new(),
                }
            })
            .collect()
    }
}

/// What a report says of a rank whose wait keeps moving messages.
const MOVING: &str = " (messages keep moving through it)";

/// Two looks at a rank show the same state (a wait on the same thing).
fn same_state(a: &Seen, b: &Seen) -> bool {
    match (a, b) {
        (Seen::Waiting(x), Seen::Waiting(y)) => x.since_ns == y.since_ns,
        _ => a == b,
    }
}

/// How every rank looks now, what its page says it sent and received,
/// and the job's totals of both.
fn observe(ranks: &[Rank]) -> (Vec<Seen>, Vec<(u64, u64)>, u64, u64) {
    let (mut sent, mut arrived) = (0u64, 0u64);
    let mut counts = Vec::with_capacity(ranks.len());
    let now_ns = now_ns();
    let seen = ranks
        .iter()
        .map(|r| {
            let snapshot = match &r.remote_status {
                Some((s, _)) => *s,
                None => r.status.as_ref().and_then(|p| p.read()),
            };
            if let Some(s) = &snapshot {
                sent = sent.wrapping_add(s.sent);
                arrived = arrived.wrapping_add(s.arrived);
            }
            counts.push(snapshot.as_ref().map_or((0, 0), |s| (s.sent, s.arrived)));
            if r.exited.is_some() {
                return Seen::Gone;
            }
            if r.remote_status.is_none() && r.agent.is_some() {
                // Not heard of yet (its agent reports it every half second).
                return Seen::Remote;
            }
            // (Whether a computing rank writes is looked at only when a
            // report says it: see `describe_all`.)
            if r.process_state(false) == ProcessState::Stopped {
                return Seen::Stopped;
            }
            match snapshot {
                None if r.hello => Seen::Starting,
                None => Seen::NotJoined,
                Some(s) => match (s.phase, s.waiting) {
                    (Phase::Starting, _) => Seen::Starting,
                    (Phase::Finalized, _) => Seen::Finalized,
                    (Phase::Running, Some(w)) => match impossible(&w, ranks.len(), now_ns, r.agent.is_none()) {
                        Some(what) => Seen::Garbled(what),
                        None => Seen::Waiting(w),
                    },
                    (Phase::Running, None) => Seen::Computing,
                },
            }
        })
        .collect();
    (seen, counts, sent, arrived)
}

/// What a wait read from a page says that cannot be in a job of `size`
/// ranks at `now_ns`, if anything: a rank the job does not have, or a wait
/// that started in the future: more than 5 s ahead on this machine
/// (`here`: its clock is the page's), more than a minute ahead on another
/// host (its times, converted by its agent's first report, may be off by
/// that report's journey, and clocks drift).
fn impossible(w: &Waiting, size: usize, now_ns: u64, here: bool) -> Option<String> {
    let skew_ns: u64 = if here { 5_000_000_000 } else { 60_000_000_000 };
    if let Some(peer) = w.peer.filter(|p| *p as usize >= size) {
        return Some(format!("field peer: rank {peer} in a job of {size}"));
    }
    if w.since_ns > now_ns.saturating_add(skew_ns) {
        return Some(format!(
            "field since: a wait that starts {:.1} s from now",
            (w.since_ns - now_ns) as f64 / 1e9
        ));
    }
    None
}

fn wait_text(w: &Waiting) -> String {
    let peer = |p: Option<u32>, any: &str| p.map_or(any.to_string(), |p| format!("rank {p}"));
    let tag = w.tag.map_or("any tag".to_string(), |t| format!("tag {t}"));
    // Ranks are the job's; a communicator other than the world is named
    // by its id (see `spmd::wire::Context`).
    let comm = match spmd::wire::Context(w.context).communicator() {
        0 => String::new(),
        id => format!(" in communicator #{id}"),
    };
    match w.op {
        WaitOp::Receive => format!("receive(from {}, {tag}){comm}", peer(w.peer, "any rank")),
        WaitOp::Probe => format!("probe(from {}, {tag}){comm}", peer(w.peer, "any rank")),
        WaitOp::Send => format!("send(to {}, which is not reading)", peer(w.peer, "a rank")),
        WaitOp::Finalize => "finalize(sending what is left)".to_string(),
        WaitOp::Collective => format!(
            "{} (collective call #{} of {}) for {}",
            spmd::describe_collective(w.sig),
            w.call,
            if comm.is_empty() {
                "the world".to_string()
            } else {
                comm.trim_start_matches(" in ").to_string()
            },
            peer(w.peer, "the other ranks")
        ),
    }
}

/// The first cycle of waits, as "rank 0 waits X <- rank 1 waits Y", or a
/// plain statement when the waits form none (waits on any rank).
fn deadlock_line(seen: &[Seen]) -> String {
    let next = |r: usize| match &seen[r] {
        Seen::Waiting(w) => w.peer.map(|p| p as usize).filter(|p| *p < seen.len()),
        _ => None,
    };
    for start in 0..seen.len() {
        let mut path = vec![start];
        let mut at = start;
        while let Some(p) = next(at) {
            if let Some(i) = path.iter().position(|q| *q == p) {
                let cycle: Vec<String> = path[i..]
                    .iter()
                    .map(|r| match &seen[*r] {
                        Seen::Waiting(w) => format!("rank {r} waits {}", wait_text(w)),
                        _ => format!("rank {r}"),
                    })
                    .collect();
                return format!("deadlock: {}", cycle.join(" <- "));
            }
            path.push(p);
            at = p;
        }
    }
    "deadlock: every rank still running is blocked inside spmd and no message is in flight".to_string()
}

/// Lines naming ranks that wait in different collectives at the same call.
fn mismatched_collectives(seen: &[Seen]) -> Vec<String> {
    let calls: Vec<(usize, &Waiting)> = seen
        .iter()
        .enumerate()
        .filter_map(|(r, s)| match s {
            Seen::Waiting(w) if w.op == WaitOp::Collective => Some((r, w)),
            _ => None,
        })
        .collect();
    let mut out = Vec::new();
    for (i, (r, w)) in calls.iter().enumerate() {
        for (q, v) in &calls[i + 1..] {
            // Blocking and immediate collectives of one communicator are
            // numbered together, in contexts of their own.
            let communicator = |c: u32| spmd::wire::Context(c).communicator();
            if communicator(w.context) == communicator(v.context) && w.call == v.call && w.sig != v.sig {
                out.push(format!(
                    "  ranks called different collectives at call #{}: rank {r} {}, rank {q} {}",
                    w.call,
                    spmd::describe_collective(w.sig),
                    spmd::describe_collective(v.sig)
                ));
                return out;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn receive_from(peer: u32, since_ns: u64) -> Waiting {
        Waiting {
            op: WaitOp::Receive,
            peer: Some(peer),
            tag: Some(1),
            context: 0,
            call: 0,
            sig: 0,
            since_ns,
            until_ns: 0,
        }
    }

    #[test]
    fn a_wait_that_cannot_be_is_told_apart() {
        let now = 100_000_000_000;
        assert_eq!(impossible(&receive_from(2, now - 1), 3, now, true), None);
        let far = impossible(&receive_from(4_294_967_294, now), 3, now, true);
        assert_eq!(far.as_deref(), Some("field peer: rank 4294967294 in a job of 3"));
        let future = impossible(&receive_from(1, now + 60_000_000_000), 3, now, true);
        assert!(future.is_some_and(|f| f.starts_with("field since")));
        // Another host's times, converted by its agent, may run ahead, but
        // not by more than a minute.
        assert_eq!(impossible(&receive_from(1, now + 30_000_000_000), 3, now, false), None);
        let remote = impossible(&receive_from(1, now + 3_600_000_000_000), 3, now, false);
        assert!(remote.is_some_and(|f| f.starts_with("field since: a wait that starts 3600")));
    }
}
