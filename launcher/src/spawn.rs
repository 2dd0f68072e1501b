//! Starting the ranks as children, each in its own process group, and
//! reporting their exits.

use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::Sender;
use std::thread;

use nix::errno::Errno;
use nix::sys::signal::{Signal, killpg};
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::Pid;

use spmd::wire::env;

use crate::cli::Options;
use crate::job::{Event, Termination};

/// What every rank of a job shares in its environment.
pub struct JobEnv {
    pub job: u64,
    pub control: String,
    pub secret_hex: String,
}

/// Starts rank `rank` of the job. Its stdin is spmdrun's for rank 0 and
/// empty for the others; its stdout and stderr are pipes to forward.
pub fn start_rank(opts: &Options, job: &JobEnv, rank: usize) -> std::io::Result<Child> {
    let mut cmd = Command::new(&opts.program);
    cmd.args(&opts.args)
        .envs(opts.env.iter().map(|(k, v)| (k, v)))
        .env(env::RANK, rank.to_string())
        .env(env::SIZE, opts.ranks.to_string())
        .env(env::LOCAL_RANK, rank.to_string())
        .env(env::LOCAL_SIZE, opts.ranks.to_string())
        .env(env::NODE, "0")
        .env(env::JOB, format!("{:016x}", job.job))
        .env(env::CONTROL, &job.control)
        .env(env::SECRET, &job.secret_hex)
        .stdin(if rank == 0 { Stdio::inherit() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    if let Some(dir) = &opts.wdir {
        cmd.current_dir(dir);
    }
    let launcher = nix::unistd::getpid();
    // SAFETY: the closure runs in the child between fork and exec and only
    // makes async-signal-safe system calls (sigprocmask, prctl, getppid).
    unsafe {
        cmd.pre_exec(move || {
            // spmdrun blocks SIGINT/SIGTERM/SIGHUP for its signal thread;
            // the rank must start with none blocked, or it could not be
            // asked to stop.
            nix::sys::signal::SigSet::empty().thread_set_mask()?;
            // If spmdrun dies, even by SIGKILL, the rank dies with it.
            nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)?;
            if nix::unistd::getppid() != launcher {
                return Err(std::io::Error::other("spmdrun exited while starting the rank"));
            }
            Ok(())
        });
    }
    cmd.spawn()
}

/// Reaps every child of spmdrun on a thread and reports each exit.
pub fn watch_exits(events: Sender<Event>) {
    thread::spawn(move || {
        loop {
            match waitpid(None::<Pid>, None) {
                Ok(WaitStatus::Exited(pid, code)) => {
                    let _ = events.send(Event::Exited {
                        pid: pid.as_raw(),
                        how: Termination::Code(code),
                    });
                }
                Ok(WaitStatus::Signaled(pid, sig, _)) => {
                    let _ = events.send(Event::Exited {
                        pid: pid.as_raw(),
                        how: Termination::Signal(sig as i32),
                    });
                }
                Ok(_) | Err(Errno::EINTR) => {}
                Err(_) => break,
            }
        }
    });
}

/// Sends `sig` to the process group of a rank; a group that is gone is fine.
pub fn signal_group(pid: i32, sig: Signal) {
    let _ = killpg(Pid::from_raw(pid), sig);
}
