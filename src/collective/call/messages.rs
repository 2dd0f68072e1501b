//! The messages of a collective call: each sent with the call's word, each received checked to be this call's.

use super::Call;
use crate::communicator::Communicator;
use crate::envelope::{Envelope, Format};
use crate::error::{Error, Result};
use crate::progress::Head;
use crate::selector::{Match, Selector};

impl Communicator {
    /// Receives the message of `call` that `source` sends with `tag`,
    /// checking the queue at every step of the wait.
    pub(crate) fn call_receive(&self, call: &Call, source: usize, tag: u32) -> Result<Envelope> {
        let source = self.peer(source)?;
        let sel = Selector::new(call.context, Match::source(source).with_tag(tag));
        let env = {
            let mut engine = self.engine()?;
            let id = engine.post(sel, None)?;
            let mut check = call.check();
            let timeout = call
                .deadline
                .map(|d| d.saturating_duration_since(std::time::Instant::now()));
            engine.wait_receive_checked(id, timeout, Some((call.waiting(Some(source)), &mut check)))?
        };
        self.judge_received(call, env)
    }

    /// Like [`Communicator::call_receive`], letting raw numbers of type `element`
    /// land straight in `buf`.
    pub(crate) fn call_receive_into(
        &self,
        call: &Call,
        source: usize,
        tag: u32,
        buf: &mut [u8],
        element: u16,
    ) -> Result<Envelope> {
        let source = self.peer(source)?;
        let sel = Selector::new(call.context, Match::source(source).with_tag(tag));
        let mut env = {
            let mut engine = self.engine()?;
            let mut check = call.check();
            engine.receive_landing_checked(sel, buf, element, (call.waiting(Some(source)), &mut check))?
        };
        if env.call != call.word() {
            if let Some(len) = env.landed.take() {
                // Not this call's after all: out of the caller's buffer.
                env.payload = crate::pool::copy_of(&buf[..len as usize]);
            }
        }
        self.judge_received(call, env)
    }

    /// Checks that a message a receive of `call` got is this call's. One of
    /// another call is a sign that the ranks disagree; the error prefers
    /// what the queue says (another rank's notice, a message of another
    /// collective) to the message itself, which goes back to the queue.
    fn judge_received(&self, call: &Call, env: Envelope) -> Result<Envelope> {
        if env.call == call.word() {
            // Whatever the sender sent before this message has arrived: a
            // message of another call among it is a disagreement (seen here
            // by a rank that did its part of that call without waiting).
            self.engine()?.queued_check(&mut call.check())?;
            return Ok(env);
        }
        let wrong = call.foreign(&env, true).unwrap_or_else(|| Error::CollectiveMismatch {
            detail: format!("a message of another collective call reached {}", call.name()),
        });
        let mut engine = self.engine()?;
        engine.requeue(env);
        let queued = engine.queued_check(&mut call.check());
        Err(queued.err().unwrap_or(wrong))
    }

    /// Sends a message of `call` to `dest` with `tag`.
    pub(crate) fn call_send(
        &self,
        call: &Call,
        dest: usize,
        tag: u32,
        body: (Format, Vec<u8>),
    ) -> Result<crate::progress::Sent> {
        let head = Head {
            context: call.context,
            tag,
            call: call.word(),
            format: body.0,
        };
        self.engine()?.send(self.peer(dest)?, head, body.1)
    }

    /// Sends raw bytes of `call` straight from the caller's memory and waits
    /// until they have left.
    pub(crate) fn call_send_now(&self, call: &Call, dest: usize, tag: u32, format: Format, bytes: &[u8]) -> Result<()> {
        let head = Head {
            context: call.context,
            tag,
            call: call.word(),
            format,
        };
        self.engine()?.send_now(self.peer(dest)?, head, bytes)
    }
}
