//! Collectives that run in the background: a schedule of sends and
//! receives that the engine carries one step further whenever this rank
//! waits or polls in spmd, so that an `immediate_` collective moves on
//! while its caller does other work between calls.
//!
//! A schedule works on one accumulator (the value so far): it sends it,
//! replaces it with what a peer sends, or folds what a peer sends into it.
//! Each message carries its call's number and signature; one of another
//! collective, or another rank's notice of failure, ends the schedule with
//! an error, and a schedule that fails tells every member.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use super::{Engine, EngineGuard};
use crate::collective::call::{NOTICE, before, describe, different, noticed};
use crate::collective::node::Node;
use crate::envelope::{Envelope, Format};
use crate::error::{Error, Result};
use crate::matching::ReceiveId;
use crate::progress::Head;
use crate::selector::{Match, Selector};
use crate::status::WaitOn;
use crate::transport::Wait;
use crate::wire::Context;
use crate::wire::status::WaitOp;

/// A value in a schedule: its format and bytes.
#[derive(Debug, Clone)]
pub(crate) struct Part {
    pub format: Format,
    pub bytes: Vec<u8>,
}

/// Folds a peer's message (from higher ranks) into the accumulator (from
/// lower ranks).
pub(crate) type Fold = Box<dyn FnMut(&mut Part, Envelope) -> Result<()> + Send>;

/// One step of a schedule; ranks are the job's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Step {
    /// Sends the accumulator.
    Send(usize),
    /// Receives a value that replaces the accumulator.
    Take(usize),
    /// Receives a value to fold into the accumulator.
    Fold(usize),
    /// Sends an empty message, not the accumulator (a barrier's round).
    Signal(usize),
    /// Receives an empty message; the accumulator stays as it is.
    Signaled(usize),
}

/// What an `immediate_` collective asks the engine to run.
pub(crate) struct Plan {
    /// The communicator's immediate context; its blocking collectives'
    /// context is the one before it.
    pub context: Context,
    pub tag: u32,
    /// `number << 16 | signature`, as for blocking collectives.
    pub call: u32,
    /// The communicator's members, as job ranks (for notices).
    pub members: Arc<[usize]>,
    pub steps: Vec<Step>,
    pub value: Part,
    /// The length every received value must have (for `_into` forms).
    pub len: Option<usize>,
    pub fold: Option<Fold>,
    /// The shared region the communicator's blocking collectives run
    /// through, where each rank says which call it is in, if they do.
    pub node: Option<Node>,
}

impl std::fmt::Debug for Plan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plan")
            .field("context", &self.context)
            .field("call", &self.call)
            .field("steps", &self.steps)
            .finish()
    }
}

/// A plan under way.
#[derive(Debug)]
pub(crate) struct Schedule {
    id: u64,
    plan: Plan,
    next: usize,
    posted: Option<ReceiveId>,
    outcome: Option<Result<Part>>,
    /// The panic of the schedule's operator, wherever it ran (maybe on
    /// another thread, during its receive): it comes out of this
    /// schedule's own wait.
    panic: Option<Box<dyn std::any::Any + Send>>,
}

impl Schedule {
    fn number(&self) -> u16 {
        (self.plan.call >> 16) as u16
    }

    fn name(&self) -> String {
        format!(
            "{} (collective call #{})",
            describe(self.plan.call as u16),
            self.number()
        )
    }

    /// The peer whose message it waits for, if it waits for one.
    fn waits_on(&self) -> Option<usize> {
        match self.plan.steps.get(self.next) {
            Some(Step::Take(p) | Step::Fold(p) | Step::Signaled(p)) if self.outcome.is_none() => Some(*p),
            _ => None,
        }
    }

    /// The head of this schedule's messages, carrying `format`.
    fn head(&self, format: Format) -> Head {
        Head {
            context: self.plan.context,
            tag: self.plan.tag,
            call: self.plan.call,
            format,
        }
    }

    fn selector(&self, source: usize) -> Selector {
        Selector::new(self.plan.context, Match::source(source).with_tag(self.plan.tag))
    }
}

impl Engine {
    /// Starts a schedule and carries it as far as it goes now; returns its
    /// id for [`Engine::test_schedule`] and [`Engine::wait_schedule`].
    pub fn start_schedule(&mut self, plan: Plan) -> Result<u64> {
        self.check_open()?;
        self.stray_immediate(plan.context, (plan.call >> 16) as u16)?;
        self.schedules_made += 1;
        let mut s = Schedule {
            id: self.schedules_made,
            plan,
            next: 0,
            posted: None,
            outcome: None,
            panic: None,
        };
        self.advance_caught(&mut s);
        let id = s.id;
        self.schedules.push(s);
        Ok(id)
    }

    /// Carries every schedule under way as far as what has arrived lets it.
    pub(super) fn advance_schedules(&mut self) {
        if self.schedules.is_empty() {
            return;
        }
        // Taken out while they move, so that a send inside cannot come
        // back here.
        let mut schedules = std::mem::take(&mut self.schedules);
        for s in schedules.iter_mut().filter(|s| s.outcome.is_none()) {
            self.advance_caught(s);
        }
        schedules.append(&mut self.schedules);
        self.schedules = schedules;
    }

    /// [`Engine::advance`], where an operator may panic: the schedule then
    /// fails (its members are told) and keeps the panic for its own wait,
    /// on its own thread, whichever call or thread moved it.
    fn advance_caught(&mut self, s: &mut Schedule) {
        let moved = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.advance(s)));
        if let Err(panic) = moved {
            let text = panic_text(&*panic);
            self.fail(
                s,
                Error::InvalidArgument(format!("the operator of {} panicked: {text}", s.name())),
            );
            s.panic = Some(panic);
        }
    }

    fn advance(&mut self, s: &mut Schedule) {
        while s.outcome.is_none() {
            let Some(&step) = s.plan.steps.get(s.next) else {
                let value = std::mem::replace(
                    &mut s.plan.value,
                    Part {
                        format: Format::Serde,
                        bytes: Vec::new(),
                    },
                );
                s.outcome = Some(Ok(value));
                return;
            };
            let result = match step {
                Step::Send(dest) => {
                    let bytes = crate::pool::copy_of(&s.plan.value.bytes);
                    self.send(dest, s.head(s.plan.value.format), bytes).map(|_| true)
                }
                Step::Signal(dest) => self.send(dest, s.head(Format::Serde), Vec::new()).map(|_| true),
                Step::Take(source) | Step::Fold(source) | Step::Signaled(source) => self.receive_step(s, source),
            };
            match result {
                Ok(true) => s.next += 1,
                Ok(false) => return,
                Err(e) => self.fail(s, e),
            }
        }
    }

    /// The receive of a step: true once its message is in the accumulator
    /// (or, for a [`Step::Signaled`], has come).
    fn receive_step(&mut self, s: &mut Schedule, source: usize) -> Result<bool> {
        let id = match s.posted {
            Some(id) => id,
            None => *s.posted.insert(self.matcher.post_into(s.selector(source), None)),
        };
        let Some(env) = self.matcher.take(id) else {
            self.foreign(s)?;
            return Ok(false);
        };
        s.posted = None;
        if env.call != s.plan.call {
            return Err(different(s.number(), env.source, env.call as u16, s.plan.call as u16));
        }
        if let Step::Signaled(_) = s.plan.steps[s.next] {
            // A barrier's round: the message only says its sender got here.
            return Ok(true);
        }
        let len = env.payload.len();
        if s.plan
            .len
            .is_some_and(|l| l != len || env.format != s.plan.value.format)
        {
            return Err(Error::CollectiveMismatch {
                detail: format!(
                    "in {}: rank {} sent {len} bytes of {} where this rank has {} bytes of {}",
                    s.name(),
                    env.source,
                    crate::message::describe_format(env.format),
                    s.plan.len.unwrap_or_default(),
                    crate::message::describe_format(s.plan.value.format)
                ),
            });
        }
        match (s.plan.steps[s.next], s.plan.fold.as_mut()) {
            (Step::Fold(_), Some(fold)) => fold(&mut s.plan.value, env)?,
            _ => {
                let mut env = env;
                let old = std::mem::replace(&mut s.plan.value.bytes, std::mem::take(&mut env.payload));
                crate::pool::give(old);
            }
        }
        Ok(true)
    }

    /// Another rank's notice of failure in this call, or a message of a
    /// blocking collective with this call's number.
    fn foreign(&mut self, s: &Schedule) -> Result<()> {
        let number = s.number();
        let of_this_call = |e: &&Envelope| (e.call >> 16) as u16 == number;
        // A notice of this call or an earlier one (which this rank may
        // have done its part of), or a message of this call's number with
        // another signature (another collective, another root).
        let wrong = |e: &&Envelope| {
            let n = (e.call >> 16) as u16;
            if e.tag == NOTICE {
                n == number || before(n, number)
            } else {
                n == number && e.call != s.plan.call
            }
        };
        if let Some(e) = self.matcher.queued_in(s.plan.context).find(wrong) {
            if e.tag == NOTICE {
                return Err(noticed(e));
            }
            return Err(different(number, e.source, e.call as u16, s.plan.call as u16));
        }
        if let Some(node) = s.plan.node {
            node_foreign(node, s)?;
        }
        let blocking = Context(s.plan.context.0 - 1);
        match self.matcher.queued_in(blocking).find(of_this_call) {
            Some(e) if e.tag == NOTICE => Err(noticed(e)),
            Some(e) => Err(different(number, e.source, e.call as u16, s.plan.call as u16)),
            None => Ok(()),
        }
    }

    /// A message of an immediate collective of `context` that no schedule
    /// under way here will take: one of a call before `number` (the call
    /// this rank starts) that this rank has finished, sent by a rank that
    /// called another collective or gave another root. Seen when the next
    /// collective starts.
    pub fn stray_immediate(&self, context: Context, number: u16) -> Result<()> {
        let running = |e: &Envelope| {
            self.schedules
                .iter()
                .any(|s| s.plan.context == context && s.number() == (e.call >> 16) as u16)
        };
        let stray = |e: &&Envelope| e.tag != NOTICE && before((e.call >> 16) as u16, number) && !running(e);
        match self.matcher.queued_in(context).find(stray) {
            None => Ok(()),
            Some(e) => Err(Error::CollectiveMismatch {
                detail: format!(
                    "rank {} sent a message of {} (collective call #{}), which this rank had finished: the ranks \
                     called different collectives, or the same one with different roots",
                    e.source,
                    describe(e.call as u16),
                    e.call >> 16
                ),
            }),
        }
    }

    /// Ends a schedule with `e`, telling the other members unless `e` is
    /// another's notice.
    fn fail(&mut self, s: &mut Schedule, e: Error) {
        if let Some(id) = s.posted.take() {
            self.cancel_posted(id);
        }
        if !matches!(e, Error::CollectiveFailed { .. }) {
            let head = Head {
                context: s.plan.context,
                tag: NOTICE,
                call: s.plan.call,
                format: Format::Serde,
            };
            let text = e.to_string().into_bytes();
            let me = self.me;
            for &dest in s.plan.members.iter().filter(|d| **d != me) {
                if !self.has_left(dest) {
                    let _ = self.send(dest, head, text.clone());
                }
            }
        }
        s.outcome = Some(Err(e));
    }

    /// Where schedule `id` is in the list; an error once this rank has
    /// finalized (which ends every schedule).
    fn schedule_index(&self, id: u64) -> Result<usize> {
        self.check_open()?;
        match self.schedules.iter().position(|s| s.id == id) {
            Some(i) => Ok(i),
            None => Err(Error::InvalidArgument(format!(
                "immediate collective {id} is no longer under way (a request is waited on once)"
            ))),
        }
    }

    /// Whether a schedule is over, after a look at what has arrived; a
    /// schedule that waits for a peer that has gone fails.
    pub fn test_schedule(&mut self, id: u64) -> Result<bool> {
        self.schedule_index(id)?;
        self.step(Wait::No)?;
        let i = self.schedule_index(id)?;
        if let Some(peer) = self.schedules[i].waits_on() {
            if self.has_left(peer) {
                // Its notice, read before its leaving, says more.
                let e = self.gone(peer);
                self.advance_schedules();
                let mut s = self.schedules.swap_remove(self.schedule_index(id)?);
                if s.outcome.is_none() {
                    self.fail(&mut s, e);
                }
                self.schedules.push(s);
            }
        }
        let i = self.schedule_index(id)?;
        let done = self.schedules[i].outcome.is_some();
        if !done {
            // A wait on it is not a wait on one receive.
            self.tested = super::waits::Tested::Several;
        }
        Ok(done)
    }
}

/// The waits for schedules: they sleep without the engine (see `lock.rs`).
impl EngineGuard<'_> {
    /// Waits until a schedule is over or `deadline` passes: true if it is
    /// over (it stays in the list either way).
    pub fn wait_schedule_until(&mut self, id: u64, deadline: Option<Instant>) -> Result<bool> {
        let result = (|| loop {
            if self.test_schedule(id)? {
                return Ok(true);
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Ok(false);
            }
            let s = &self.schedules[self.schedule_index(id)?];
            let on = WaitOn {
                op: WaitOp::Collective,
                peer: s.waits_on(),
                tag: None,
                context: s.plan.context.0,
                call: u32::from(s.number()),
                sig: s.plan.call as u16,
                deadline,
            };
            self.sleep_step(on, deadline)?;
        })();
        self.settle();
        result
    }

    /// Waits until a schedule is over and returns its value. The schedule
    /// is gone afterwards, whatever the outcome.
    pub fn wait_schedule(&mut self, id: u64) -> Result<Part> {
        let waited = self.wait_schedule_until(id, None);
        let Some(i) = self.schedules.iter().position(|s| s.id == id) else {
            return waited.and(Err(Error::Finalized));
        };
        let mut s = self.schedules.swap_remove(i);
        if let Some(posted) = s.posted.take() {
            self.cancel_posted(posted);
        }
        if let Some(panic) = s.panic.take() {
            std::panic::resume_unwind(panic);
        }
        waited?;
        s.outcome.unwrap_or_else(|| unreachable!("waited until over"))
    }

    /// Carries every schedule under way to its end (at finalize, for those
    /// whose requests were forgotten); says which failed, as no request
    /// is left to say it.
    pub fn finish_schedules(&mut self) {
        while let Some(s) = self.schedules.first() {
            let name = s.name();
            if let Err(e) = self.wait_schedule(s.id) {
                eprintln!(
                    "spmd: rank {}: {name}, whose request was forgotten, failed: {e}",
                    self.me
                );
            }
        }
    }
}

/// A rank of the node in a blocking collective of this call's number: it
/// waits in shared memory for this rank, which waits for its message;
/// neither would ever learn of the other without this look.
fn node_foreign(node: Node, s: &Schedule) -> Result<()> {
    for r in (0..node.n).filter(|r| *r != node.me) {
        let said = node.slots.current(r).load(Ordering::Acquire);
        let (number, sig) = ((said >> 16) as u16, said as u16);
        if said >> 63 == 1 && number == s.number() && sig != s.plan.call as u16 {
            return Err(different(number, r, sig, s.plan.call as u16));
        }
    }
    Ok(())
}

/// What a panic said, if it said it as text.
pub(crate) fn panic_text(panic: &(dyn std::any::Any + Send)) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(not text)")
}
