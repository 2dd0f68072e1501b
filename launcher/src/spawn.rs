//! Starting the ranks as children, each in its own process group with its
//! own control channel (a socket pair whose other end spmdrun keeps), and
//! making sure that no process of the job outlives it: spmdrun is a child
//! subreaper, so every descendant a rank leaves behind becomes spmdrun's
//! child, and is ended with the job.

use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::{Signal, kill, killpg};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;

use serde::{Deserialize, Serialize};

use spmd::wire::env;

/// What every rank of a job runs, and where: the same on every host.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Launch {
    /// The job's id.
    pub job: u64,
    pub program: std::path::PathBuf,
    pub args: Vec<std::ffi::OsString>,
    /// The `-x` variables.
    pub env: Vec<(String, String)>,
    pub wdir: Option<std::path::PathBuf>,
}

/// Where one rank stands in the job: its number, its node, and its number
/// among the ranks of its node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Place {
    pub rank: usize,
    pub size: usize,
    pub local_rank: usize,
    pub local_size: usize,
    pub node: usize,
}

impl Place {
    /// Every rank's place, from the node each rank is on.
    pub fn all(nodes: &[usize]) -> Vec<Place> {
        let size = nodes.len();
        let mut seen: std::collections::HashMap<usize, usize> = std::collections::HashMap::new();
        let local_rank: Vec<usize> = nodes
            .iter()
            .map(|n| {
                let count = seen.entry(*n).or_insert(0);
                *count += 1;
                *count - 1
            })
            .collect();
        (0..size)
            .map(|rank| Place {
                rank,
                size,
                local_rank: local_rank[rank],
                local_size: seen[&nodes[rank]],
                node: nodes[rank],
            })
            .collect()
    }
}

/// A started rank: the process, and spmdrun's end of its control channel.
pub struct Started {
    pub child: Child,
    pub channel: OwnedFd,
}

/// Makes spmdrun the reaper of every orphan among its descendants.
pub fn become_subreaper() -> Result<(), String> {
    // SAFETY: a plain prctl with integer arguments.
    let r = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    if r == 0 {
        Ok(())
    } else {
        Err(format!(
            "cannot become the reaper of the job's processes: {}",
            std::io::Error::last_os_error()
        ))
    }
}

/// The cores spmdrun may run on (its affinity mask: `taskset`, a cpuset),
/// in order.
pub fn usable_cores() -> Vec<usize> {
    // SAFETY: an all-zero cpu_set_t is a valid empty set, and
    // sched_getaffinity writes at most its size.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    if unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) } != 0 {
        return Vec::new();
    }
    // SAFETY: CPU_ISSET reads the set within its size.
    (0..libc::CPU_SETSIZE as usize)
        .filter(|&c| unsafe { libc::CPU_ISSET(c, &set) })
        .collect()
}

/// Where a rank's standard input comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Input {
    /// spmdrun's own (rank 0 on spmdrun's machine).
    Inherit,
    /// A pipe its starter writes with what spmdrun reads (rank 0 on
    /// another host, fed by its agent, or when spmdrun's stdin is a
    /// terminal).
    Piped,
    /// Nothing: end of file at once (every other rank).
    Empty,
}

/// Starts the rank at `place`, bound to `core` if given, its stdin from
/// `input`; its stdout and stderr are pipes to forward; its control
/// channel is inherited, named in its environment together with the pid of
/// its parent (spmdrun, or the agent on its host).
pub fn start_rank(launch: &Launch, place: Place, input: Input, core: Option<usize>) -> std::io::Result<Started> {
    // SAFETY: an all-zero cpu_set_t is a valid empty set; CPU_SET writes
    // within it (a core from usable_cores is below CPU_SETSIZE).
    let mut only = unsafe { std::mem::zeroed::<libc::cpu_set_t>() };
    if let Some(core) = core {
        unsafe { libc::CPU_SET(core, &mut only) };
    }
    let (ours, theirs) = UnixStream::pair()?;
    let theirs = OwnedFd::from(theirs);
    let fd = theirs.as_raw_fd();
    let launcher = nix::unistd::getpid();
    let mut cmd = Command::new(&launch.program);
    cmd.args(&launch.args)
        .envs(launch.env.iter().map(|(k, v)| (k, v)))
        .env(env::RANK, place.rank.to_string())
        .env(env::SIZE, place.size.to_string())
        .env(env::LOCAL_RANK, place.local_rank.to_string())
        .env(env::LOCAL_SIZE, place.local_size.to_string())
        .env(env::NODE, place.node.to_string())
        .env(env::JOB, format!("{:016x}", launch.job))
        .env(env::CONTROL, format!("fd:{fd}:{launcher}"))
        .stdin(match input {
            Input::Inherit => Stdio::inherit(),
            Input::Piped => Stdio::piped(),
            Input::Empty => Stdio::null(),
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    if let Some(dir) = &launch.wdir {
        cmd.current_dir(dir);
    }
    // SAFETY: the closure runs in the child between fork and exec and only
    // makes async-signal-safe system calls (sigprocmask, prctl, getppid,
    // fcntl, sched_setaffinity).
    unsafe {
        cmd.pre_exec(move || {
            if core.is_some() && libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &only) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // spmdrun blocks the signals it waits for; the rank must start
            // with none blocked, or it could not be asked to stop.
            nix::sys::signal::SigSet::empty().thread_set_mask()?;
            // If spmdrun dies, even by SIGKILL, the rank dies with it.
            nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)?;
            if nix::unistd::getppid() != launcher {
                return Err(std::io::Error::other("spmdrun exited while starting the rank"));
            }
            // The rank's end of its channel is the one descriptor it keeps
            // across exec (all of spmdrun's are close-on-exec).
            if libc::fcntl(fd, libc::F_SETFD, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn()?;
    drop(theirs);
    ours.set_nonblocking(true)?;
    Ok(Started {
        child,
        channel: OwnedFd::from(ours),
    })
}

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Termination {
    Code(i32),
    Signal(i32),
}

/// Reaps every child that has ended, without waiting: ranks and the orphans
/// spmdrun inherited as their reaper.
pub fn reap() -> Vec<(i32, Termination)> {
    let mut ended = Vec::new();
    loop {
        match waitpid(None::<Pid>, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(pid, code)) => ended.push((pid.as_raw(), Termination::Code(code))),
            Ok(WaitStatus::Signaled(pid, sig, _)) => ended.push((pid.as_raw(), Termination::Signal(sig as i32))),
            Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => return ended,
            Ok(_) | Err(Errno::EINTR) => {}
            Err(_) => return ended,
        }
    }
}

/// Sends `sig` to the process group of a rank; a group that is gone is fine.
pub fn signal_group(pid: i32, sig: Signal) {
    let _ = killpg(Pid::from_raw(pid), sig);
}

/// The pids of spmdrun's living children (ranks, and the orphans of the
/// job it has inherited).
fn children() -> Vec<i32> {
    let me = std::process::id() as i32;
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for entry in dir.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // The parent pid is the second field after the parenthesised name.
        let parent = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<i32>().ok());
        if parent == Some(me) {
            found.push(pid);
        }
    }
    found
}

/// Ends every process the job left: the ranks' process groups, then every
/// child spmdrun still has (orphans the ranks left behind, even in sessions
/// of their own), over and over, since killing one makes its own children
/// spmdrun's, until none is left or `limit` passes. Returns what it reaped.
pub fn end_all(rank_pids: &[i32], limit: Duration) -> Vec<(i32, Termination)> {
    for &pid in rank_pids {
        signal_group(pid, Signal::SIGKILL);
    }
    let deadline = Instant::now() + limit;
    let mut reaped = reap();
    loop {
        let living = children();
        if living.is_empty() || Instant::now() >= deadline {
            return reaped;
        }
        for pid in living {
            let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        std::thread::sleep(Duration::from_millis(2));
        reaped.extend(reap());
    }
}
