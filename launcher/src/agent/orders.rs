//! What the agent does on each order from spmdrun once its ranks run:
//! control messages passed to a rank (with the descriptors only this host
//! can add), standard input for rank 0, and the end of the job.

use std::os::fd::AsFd;
use std::time::Instant;

use nix::sys::signal::Signal;

use spmd::wire::ControlMessage;
use spmd::wire::status::Page;

use super::protocol::{Down, Outbox, Up};
use super::{Agent, GRACE};
use crate::input_pipe::InputPipe;

impl Agent {
    pub(super) fn obey(&mut self, order: Down, outbox: &Outbox) -> Result<(), String> {
        match order {
            Down::Alive | Down::Start { .. } | Down::Job { .. } => Ok(()),
            Down::Input { .. } | Down::InputEnd if self.rank_input.is_none() => {
                Err("spmdrun sent standard input, but rank 0 is not on this host".into())
            }
            Down::Input { bytes } => {
                if let Some(input) = &mut self.rank_input {
                    let taken = input.push(bytes);
                    report_taken(input, taken, outbox);
                }
                Ok(())
            }
            Down::InputEnd => {
                if let Some(input) = &mut self.rank_input {
                    input.end();
                }
                Ok(())
            }
            Down::End => {
                if self.kill_at.is_none() {
                    self.signal_all(Signal::SIGTERM);
                    self.kill_at = Some(Instant::now() + GRACE);
                }
                Ok(())
            }
            Down::Kill => {
                self.signal_all(Signal::SIGKILL);
                Ok(())
            }
            Down::Control { rank, msg } => {
                let node: Vec<u32> = self.locals.iter().map(|l| l.place.rank as u32).collect();
                let Some(l) = self.locals.iter_mut().find(|l| l.place.rank == rank as usize) else {
                    return Err(format!(
                        "spmdrun sent a message for rank {rank}, which is not on this host"
                    ));
                };
                let Some(channel) = l.channel.as_mut() else {
                    return Ok(());
                };
                // A rank that closed its channel is seen by the loop: the
                // result of a send is not needed here.
                match msg {
                    ControlMessage::Welcome { .. } => {
                        let (page, fd) =
                            Page::create().map_err(|e| format!("cannot make rank {rank}'s status page: {e}"))?;
                        l.status = Some(page);
                        let _ = channel.send(&msg, &[fd.as_fd()]);
                    }
                    ControlMessage::Table { .. } => {
                        // After the table, the segments of this host's other
                        // ranks; once every rank has them, they are closed.
                        let _ = channel
                            .send(&msg, &[])
                            .and_then(|()| self.segments.send(rank, &node, channel));
                        self.tables_sent += 1;
                        if self.tables_sent == self.locals.len() {
                            self.segments.clear();
                        }
                    }
                    _ if msg.fds() == 0 => {
                        let _ = channel.send(&msg, &[]);
                    }
                    _ => {
                        return Err(format!(
                            "spmdrun sent rank {rank} a {} message, which needs descriptors",
                            msg.name()
                        ));
                    }
                }
                Ok(())
            }
        }
    }
}

/// Tells spmdrun that rank 0 took `bytes` of its input, if any, and
/// whether its stdin is closed now.
pub(super) fn report_taken(input: &InputPipe, bytes: u64, outbox: &Outbox) {
    if bytes > 0 {
        outbox.send(&Up::InputTaken {
            bytes,
            closed: input.is_closed(),
        });
    }
}
