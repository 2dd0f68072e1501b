//! Judging the job's ranks: whether a rank's exit fails the job (once its
//! last words are in), and what the status pages say of hangs and
//! deadlocks.

use std::time::{Duration, Instant};

use super::{DEADLOCK, Job, LAST_WORDS};
use crate::hang::{HangWatch, Verdict};
use crate::output::Stream;
use crate::rank::Rank;

impl Job {
    /// True while a rank has exited but its channel is still open: its
    /// last words (a panic, finalize) may yet come.
    pub(super) fn awaiting_last_words(&self) -> bool {
        self.ranks
            .iter()
            .any(|r| !r.judged && r.exited.is_some() && r.listening())
    }

    /// Judges every rank that has exited and whose last words are in (or
    /// will not come).
    pub(super) fn judge_ready(&mut self, now: Instant) {
        // The earliest exit first: it is the likeliest cause of the others.
        let mut order: Vec<usize> = (0..self.ranks.len()).collect();
        order.sort_by_key(|&r| self.ranks[r].exited_at);
        for rank in order {
            let r = &self.ranks[rank];
            if r.judged || r.exited.is_none() {
                continue;
            }
            if r.listening() && r.exited_at.is_some_and(|t| now < t + LAST_WORDS) {
                continue;
            }
            // Its last lines may still be in its pipes: all it wrote is
            // there once it has exited, and goes out before the verdict. A
            // child of it that holds the pipes open may write more, but
            // that is not the rank's last word, and waiting for the pipes'
            // end would hold the job's end back by LAST_WORDS.
            self.on_output_now(rank, Stream::Stdout);
            self.on_output_now(rank, Stream::Stderr);
            self.judge(rank);
        }
    }

    /// Decides whether a rank's exit fails the job.
    fn judge(&mut self, rank: usize) {
        self.ranks[rank].judged = true;
        if self.failure.is_some() {
            return;
        }
        let others = |f: &dyn Fn(&Rank) -> bool| self.ranks.iter().enumerate().any(|(i, o)| i != rank && f(o));
        let others_running = others(&|o| o.exited.is_none());
        let others_joined = others(&|o| o.hello);
        if let Some((message, code)) = self.ranks[rank].verdict(rank, others_running, others_joined) {
            self.fail(format!("{message}; ending the job"), code);
        }
    }

    pub(super) fn hang_lines(&mut self) -> Vec<String> {
        let mut lines = match self.hang.as_mut() {
            Some(h) => h.describe_now(&self.ranks),
            None => HangWatch::new(Duration::ZERO, self.ranks.len()).describe_now(&self.ranks),
        };
        lines.extend(self.output_full());
        lines
    }

    /// A line for hang reports and `--timeout`'s list while spmdrun's own
    /// output is full: the ranks that write wait for it, and so do the
    /// reports of other hosts' ranks, which come the same way as their
    /// output.
    fn output_full(&self) -> Option<String> {
        let full = match (self.out.has_room(), self.err.has_room()) {
            (true, true) => return None,
            (false, true) => "output is",
            (true, false) => "error is",
            (false, false) => "output and error are",
        };
        // Reports from other hosts come the same way as their ranks' output.
        let remote = match self.ranks.iter().any(|r| r.agent.is_some()) {
            true => ", and so do the reports of ranks on other hosts",
            false => "",
        };
        Some(format!(
            "  spmdrun's own standard {full} full: nothing reads it as fast as the ranks write, so ranks that \
             write wait{remote}"
        ))
    }

    /// Reads the status pages; reports a hang, or ends the job on a
    /// deadlock (or reports it, as `--end-on-deadlock` says).
    pub(super) fn look_for_hangs(&mut self) {
        if self.failure.is_some() {
            return;
        }
        let Some(watch) = self.hang.as_mut() else { return };
        match watch.look(&self.ranks) {
            None => {}
            Some(Verdict::Report(mut lines)) => {
                lines.extend(self.output_full());
                self.say(&lines);
            }
            Some(Verdict::Deadlock(lines)) => {
                if self.end_on_deadlock {
                    let (first, rest) = lines
                        .split_first()
                        .map_or((String::new(), &[][..]), |(f, r)| (f.clone(), r));
                    self.fail(format!("{first}; ending the job"), DEADLOCK);
                    self.say(rest);
                } else {
                    self.say(&lines);
                    self.hang = None;
                }
            }
        }
    }
}
