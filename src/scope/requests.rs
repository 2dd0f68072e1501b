//! The requests a [`Scope`] hands out: a lent send and a lent receive,
//! which wait and test through the scope that holds their buffers.

use super::Scope;
use crate::error::Result;
use crate::request::Request;
use crate::selector::Status;

/// A send started in a [`Scope`].
#[derive(Debug)]
#[must_use = "wait on the request, or let the scope wait for it"]
pub struct LentSend<'scope, 'env> {
    pub(super) scope: &'scope Scope<'scope, 'env>,
    /// Its place in the scope's list of sends; `None` for a send written
    /// in full as it started, which borrows nothing and is not listed.
    pub(super) index: Option<usize>,
}

impl Request for LentSend<'_, '_> {
    type Output = ();

    #[inline]
    fn wait(self) -> Result<()> {
        match self.index {
            None => Ok(()),
            Some(index) => self.scope.wait_send(index),
        }
    }

    fn test(&mut self) -> Result<bool> {
        let Some(index) = self.index else {
            return Ok(true);
        };
        let (sent, _, done) = self.scope.lent.borrow().sends[index];
        // The MPI side first: a build with the feature that runs on spmd's
        // own runtime (started by spmdrun) lists no MPI sends.
        #[cfg(feature = "mpi")]
        if let Some(m) = self.scope.comm.mpi_side() {
            if let Some(send) = self.scope.lent.borrow_mut().mpi_sends[index].as_mut() {
                return send.test(m);
            }
        }
        Ok(done || self.scope.comm.ranked(self.scope.comm.engine()?.is_sent(sent))?)
    }
}

/// A receive started in a [`Scope`]; its output is the message's status.
#[derive(Debug)]
#[must_use = "wait on the request, or let the scope wait for it"]
pub struct LentReceive<'scope, 'env> {
    pub(super) scope: &'scope Scope<'scope, 'env>,
    pub(super) index: usize,
}

impl Request for LentReceive<'_, '_> {
    type Output = Status;

    #[inline]
    fn wait(self) -> Result<Status> {
        self.scope.wait_receive(self.index)
    }

    fn test(&mut self) -> Result<bool> {
        let (id, done) = {
            let lent = self.scope.lent.borrow();
            let r = &lent.receives[self.index];
            (r.id, r.done)
        };
        #[cfg(feature = "mpi")]
        if let Some(m) = self.scope.comm.mpi_side() {
            // No landed slot on MPI: a receive no longer there was waited
            // for or let go of.
            return match self.scope.lent.borrow_mut().receives[self.index].mpi.as_mut() {
                Some(receive) => receive.test(m),
                None => Ok(done),
            };
        }
        let slot = self.scope.slot(self.index);
        if done || slot.is_landed() {
            return Ok(true);
        }
        Ok(self.scope.comm.ranked(self.scope.comm.engine()?.test_receive(id))? || slot.is_landed())
    }
}
