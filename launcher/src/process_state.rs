//! What a rank's process is doing, as `/proc` shows it: stopped, asleep
//! writing its output, or running. Hang reports say it of ranks whose
//! status page shows no wait in spmd; an agent looks at its host's ranks
//! and reports it with their pages.

use serde::{Deserialize, Serialize};

use spmd::wire::status::{Phase, Snapshot};

/// What a process is doing, as far as a hang report cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ProcessState {
    /// Running, or asleep anywhere else (computing, or in a call of its
    /// own that waits).
    Running,
    /// Stopped by a signal (SIGSTOP) or a debugger.
    Stopped,
    /// Asleep in a write to its standard output (`false`) or standard
    /// error (`true`): whatever reads that does not keep up.
    Writing {
        /// Standard error rather than standard output.
        stderr: bool,
    },
}

impl ProcessState {
    /// How the rank with process `pid` (and `joined`, the process that
    /// joined the job if it is another, such as a shell's child) looks:
    /// stopped if either is; with `look_for_writes`, writing if either
    /// sleeps in a write of its output (its main thread: reading its system
    /// call costs more than its state, and is done only for a sleeping
    /// process).
    pub fn of_rank(pid: i32, joined: Option<i32>, look_for_writes: bool) -> ProcessState {
        let pids = [Some(pid), joined.filter(|j| *j != pid)];
        let states: Vec<(i32, char)> = pids
            .into_iter()
            .flatten()
            .filter_map(|p| Some((p, state(p)?)))
            .collect();
        if states.iter().any(|(_, s)| *s == 'T' || *s == 't') {
            return ProcessState::Stopped;
        }
        if look_for_writes {
            let asleep = states.iter().filter(|(_, s)| matches!(s, 'S' | 'D'));
            if let Some(fd) = asleep
                .filter_map(|(p, _)| writing_to(*p))
                .find(|fd| matches!(fd, 1 | 2))
            {
                return ProcessState::Writing { stderr: fd == 2 };
            }
        }
        ProcessState::Running
    }
}

/// Whether a rank whose page is `snapshot` is computing: between `init`
/// and `finalize`, in no wait of spmd. Only then is it worth asking
/// whether it writes its output.
pub fn computing(snapshot: Option<&Snapshot>) -> bool {
    snapshot.is_some_and(|s| s.phase == Phase::Running && s.waiting.is_none())
}

/// The state letter of process `pid` (`R`, `S`, `D`, `T`, ...), if it
/// exists.
fn state(pid: i32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The state follows the parenthesised command name, which may hold
    // anything.
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().next()?.chars().next()
}

/// The descriptor process `pid` is in a `write` or `writev` to, if it is
/// in one (its main thread, as `/proc/PID/syscall` shows: `running`, or
/// `-1 ...` outside a call, read as none; unreadable without the right to
/// trace it, and then none).
fn writing_to(pid: i32) -> Option<u64> {
    let call = std::fs::read_to_string(format!("/proc/{pid}/syscall")).ok()?;
    let mut fields = call.split_whitespace();
    let number: i64 = fields.next()?.parse().ok()?;
    if number != libc::SYS_write && number != libc::SYS_writev {
        return None;
    }
    let fd = fields.next()?.strip_prefix("0x")?;
    u64::from_str_radix(fd, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::process::{Command, Stdio};

    #[test]
    fn a_process_blocked_writing_a_full_pipe_is_seen_writing_and_a_stopped_one_stopped() {
        // `yes` fills its stdout pipe, which nobody reads, and waits there.
        let mut yes = Command::new("yes").stdout(Stdio::piped()).spawn().expect("yes starts");
        let pid = yes.id() as i32;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while ProcessState::of_rank(pid, None, true) != (ProcessState::Writing { stderr: false }) {
            assert!(std::time::Instant::now() < deadline, "never seen writing");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        // Not looked at unless asked.
        assert_eq!(ProcessState::of_rank(pid, None, false), ProcessState::Running);
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGSTOP).expect("stops");
        while ProcessState::of_rank(std::process::id() as i32, Some(pid), true) != ProcessState::Stopped {
            assert!(std::time::Instant::now() < deadline, "never seen stopped");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let _ = yes.kill();
        let _ = yes.wait();
        // The same on standard error (descriptor 2: a shell's `>&2` would
        // make it descriptor 1; perl-base is in every Debian).
        let mut perl = Command::new("perl")
            .args(["-e", "print STDERR \"y\" x 4096 while 1"])
            .stderr(Stdio::piped())
            .spawn()
            .expect("perl starts");
        let pid = perl.id() as i32;
        while ProcessState::of_rank(pid, None, true) != (ProcessState::Writing { stderr: true }) {
            assert!(std::time::Instant::now() < deadline, "never seen writing to stderr");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let _ = perl.kill();
        let _ = perl.wait();
    }

    #[test]
    fn a_process_asleep_elsewhere_is_running() {
        let mut cat = Command::new("cat")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .expect("cat starts");
        let pid = cat.id() as i32;
        // Asleep reading its stdin: not writing.
        std::thread::sleep(std::time::Duration::from_millis(100));
        assert_eq!(ProcessState::of_rank(pid, None, true), ProcessState::Running);
        let _ = cat.stdin.take().map(|mut s| s.write_all(b"x"));
        let _ = cat.wait();
        // Gone: nothing to say.
        assert_eq!(ProcessState::of_rank(pid, None, true), ProcessState::Running);
    }
}
