//! The life of one job in the launcher: start the ranks, hand out the table
//! of cards, watch every rank, and end them all together when one fails.

use std::collections::HashMap;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use spmd::auth::{Secret, random_bytes};
use spmd::wire::{ControlMessage, LAUNCHER_ID};

use crate::cli::Options;
use crate::control_server::{ControlServer, Registration};
use crate::output::{self, Stream};
use crate::signals;
use crate::spawn::{self, JobEnv};

/// How long a rank may take to die after it was asked to (SIGTERM).
const GRACE: Duration = Duration::from_millis(200);
/// How long to wait for a dead rank's control connection to close, so its
/// last words (panic message, finalize) are known before judging it.
const LAST_WORDS: Duration = Duration::from_secs(1);
/// How long to wait for the last output after every rank has gone.
const DRAIN: Duration = Duration::from_secs(2);

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Termination {
    Code(i32),
    Signal(i32),
}

/// Everything the job's main loop reacts to.
#[derive(Debug)]
pub enum Event {
    Exited { pid: i32, how: Termination },
    Registered(Registration),
    Finalized(usize),
    Aborted { rank: usize, code: i32, message: String },
    Panicked { rank: usize, message: String },
    ControlClosed(usize),
    Warning(String),
    Signal(Signal),
}

#[derive(Debug, Default)]
struct Rank {
    pid: i32,
    host: Option<String>,
    exited: Option<Termination>,
    exited_at: Option<Instant>,
    judged: bool,
    registration: Option<Registration>,
    finalized: bool,
    control_closed: bool,
    panic: Option<String>,
    abort: Option<(i32, String)>,
}

/// The first failure of a job: its exit status (its message is printed
/// when it happens).
struct Failure {
    code: i32,
}

struct Job {
    ranks: Vec<Rank>,
    by_pid: HashMap<i32, usize>,
    failure: Option<Failure>,
    kill_at: Option<Instant>,
    killed: bool,
    table_sent: bool,
}

/// Runs the job to its end and returns spmdrun's exit status.
pub fn run(opts: Options) -> Result<i32, String> {
    let (tx, rx) = mpsc::channel();
    signals::watch(tx.clone());
    let secret = Secret::random().map_err(|e| e.to_string())?;
    let mut job_bytes = [0u8; 8];
    random_bytes(&mut job_bytes).map_err(|e| e.to_string())?;
    let job_id = u64::from_le_bytes(job_bytes);
    let server = ControlServer::bind().map_err(|e| format!("cannot open the control listener: {e}"))?;
    let env = JobEnv {
        job: job_id,
        control: server.address().map_err(|e| e.to_string())?,
        secret_hex: secret.to_hex(),
    };
    server.serve(secret, job_id, opts.ranks, tx.clone());

    let mut job = Job {
        ranks: (0..opts.ranks).map(|_| Rank::default()).collect(),
        by_pid: HashMap::new(),
        failure: None,
        kill_at: None,
        killed: false,
        table_sent: false,
    };
    let (done_tx, done_rx) = mpsc::channel();
    for rank in 0..opts.ranks {
        let mut child = match spawn::start_rank(&opts, &env, rank) {
            Ok(c) => c,
            Err(e) => {
                job.fail(format!("cannot start rank {rank} ({}): {e}", opts.program.display()), 1);
                break;
            }
        };
        job.ranks[rank].pid = child.id() as i32;
        job.by_pid.insert(child.id() as i32, rank);
        if let Some(out) = child.stdout.take() {
            output::forward(out, Stream::Stdout, rank, opts.tag_output, done_tx.clone());
        }
        if let Some(err) = child.stderr.take() {
            output::forward(err, Stream::Stderr, rank, opts.tag_output, done_tx.clone());
        }
    }
    drop(done_tx);
    let started = job.by_pid.len();
    for r in job.ranks.iter_mut().skip(started) {
        // Never started: nothing to wait for.
        r.exited = Some(Termination::Code(1));
        r.judged = true;
    }
    spawn::watch_exits(tx);

    let deadline = opts.timeout.map(|t| (Instant::now() + t, t));
    job.main_loop(&rx, deadline);

    // No process of the job outlives it, even one a rank left behind.
    for r in &job.ranks {
        if r.pid > 0 {
            spawn::signal_group(r.pid, Signal::SIGKILL);
        }
    }
    remove_segments(job_id);
    let drain_until = Instant::now() + DRAIN;
    while done_rx
        .recv_timeout(drain_until.saturating_duration_since(Instant::now()))
        .is_ok()
    {}
    Ok(job.failure.map_or(0, |f| f.code))
}

/// Removes whatever shared-memory segments the job left in /dev/shm (ranks
/// unlink their own once every peer has mapped it, so this only finds
/// something after a crash during start-up).
fn remove_segments(job: u64) {
    let prefix = spmd::wire::segment_prefix(job);
    let Ok(dir) = std::fs::read_dir("/dev/shm") else { return };
    for entry in dir.flatten() {
        if entry.file_name().to_string_lossy().starts_with(&prefix) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

impl Job {
    fn main_loop(&mut self, rx: &Receiver<Event>, deadline: Option<(Instant, Duration)>) {
        while !self.ranks.iter().all(|r| r.judged) {
            let now = Instant::now();
            let mut wake = self.kill_at;
            if let Some((d, _)) = deadline {
                wake = Some(wake.map_or(d, |w| w.min(d)));
            }
            let waiting = wake.map_or(Duration::from_secs(3600), |w| w.saturating_duration_since(now));
            // Ranks that died with their control connection still open get a
            // moment for their last words.
            let waiting = if self.awaiting_last_words() {
                waiting.min(Duration::from_millis(10))
            } else {
                waiting
            };
            match rx.recv_timeout(waiting) {
                Ok(event) => self.handle(event),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            let now = Instant::now();
            self.judge_ready(now);
            if let Some((d, t)) = deadline {
                if now >= d && self.failure.is_none() {
                    self.fail(
                        format!("the job ran longer than --timeout {} s; ending it", t.as_secs_f64()),
                        124,
                    );
                }
            }
            if self.kill_at.is_some_and(|k| now >= k) && !self.killed {
                self.killed = true;
                for r in self.ranks.iter().filter(|r| r.exited.is_none() && r.pid > 0) {
                    spawn::signal_group(r.pid, Signal::SIGKILL);
                }
            }
        }
    }

    fn awaiting_last_words(&self) -> bool {
        self.ranks
            .iter()
            .any(|r| !r.judged && r.exited.is_some() && r.registration.is_some() && !r.control_closed)
    }

    fn handle(&mut self, event: Event) {
        match event {
            Event::Exited { pid, how } => {
                if let Some(&rank) = self.by_pid.get(&pid) {
                    self.ranks[rank].exited = Some(how);
                    self.ranks[rank].exited_at = Some(Instant::now());
                }
            }
            Event::Registered(reg) => self.register(reg),
            Event::Finalized(rank) => self.ranks[rank].finalized = true,
            Event::Aborted { rank, code, message } => self.ranks[rank].abort = Some((code, message)),
            Event::Panicked { rank, message } => {
                self.ranks[rank].panic.get_or_insert(message);
            }
            Event::ControlClosed(rank) => self.ranks[rank].control_closed = true,
            Event::Warning(w) => eprintln!("spmdrun: warning: {w}"),
            Event::Signal(sig) => {
                if self.failure.is_none() {
                    self.fail(format!("received {}; ending the job", sig.as_str()), 128 + sig as i32);
                }
            }
        }
    }
}

impl Job {
    /// Judges every rank that has exited and whose last words are in (or
    /// will not come).
    fn judge_ready(&mut self, now: Instant) {
        // The earliest exit first: it is the likeliest cause of the others.
        let mut order: Vec<usize> = (0..self.ranks.len()).collect();
        order.sort_by_key(|&r| self.ranks[r].exited_at);
        for rank in order {
            let r = &self.ranks[rank];
            if r.judged || r.exited.is_none() {
                continue;
            }
            let listening = r.registration.is_some() && !r.control_closed;
            if listening && r.exited_at.is_some_and(|t| now < t + LAST_WORDS) {
                continue;
            }
            self.judge(rank);
        }
    }

    /// Decides whether a rank's exit fails the job.
    fn judge(&mut self, rank: usize) {
        self.ranks[rank].judged = true;
        if self.failure.is_some() {
            return;
        }
        let who = self.describe(rank);
        let r = &self.ranks[rank];
        let others_running = self
            .ranks
            .iter()
            .enumerate()
            .any(|(i, o)| i != rank && o.exited.is_none());
        let others_joined = self
            .ranks
            .iter()
            .enumerate()
            .any(|(i, o)| i != rank && o.registration.is_some());
        let verdict = match (&r.abort, r.exited) {
            (Some((code, message)), _) => {
                let why = if message.is_empty() {
                    String::new()
                } else {
                    format!(": {message}")
                };
                Some((format!("{who} called abort({code}){why}"), *code))
            }
            (None, Some(Termination::Signal(sig))) => {
                let name = Signal::try_from(sig).map_or("unknown", |s| s.as_str());
                Some((format!("{who} was killed by signal {sig} ({name})"), 128 + sig))
            }
            (None, Some(Termination::Code(code))) if code != 0 => match &r.panic {
                Some(p) => {
                    // One line, even for a multi-line panic message.
                    let p: Vec<&str> = p.split_whitespace().collect();
                    Some((format!("{who} panicked: {}", p.join(" ")), code))
                }
                None => Some((format!("{who} exited with code {code}"), code)),
            },
            (None, _) if r.registration.is_some() && !r.finalized && others_running => Some((
                format!("{who} exited without calling finalize while other ranks were still running"),
                1,
            )),
            (None, _) if r.registration.is_none() && others_joined => Some((
                format!(
                    "{who} exited without joining the job (it never called spmd::init) while other ranks wait for it"
                ),
                1,
            )),
            _ => None,
        };
        if let Some((message, code)) = verdict {
            self.fail(format!("{message}; ending the job"), code);
        }
    }

    fn describe(&self, rank: usize) -> String {
        let r = &self.ranks[rank];
        match &r.host {
            Some(h) => format!("rank {rank} (pid {} on {h})", r.pid),
            None => format!("rank {rank} (pid {})", r.pid),
        }
    }

    fn register(&mut self, reg: Registration) {
        let rank = reg.rank;
        if self.ranks[rank].registration.is_some() {
            eprintln!("spmdrun: warning: rank {rank} registered twice; ignoring the second");
            return;
        }
        if reg.pid as i32 != self.ranks[rank].pid {
            eprintln!(
                "spmdrun: warning: rank {rank} registered from pid {}, but spmdrun started pid {}",
                reg.pid, self.ranks[rank].pid
            );
        }
        self.ranks[rank].host = Some(reg.host.clone());
        self.ranks[rank].registration = Some(reg);
        if self.failure.is_none() {
            let gone = self
                .ranks
                .iter()
                .position(|r| r.judged && r.registration.is_none() && r.exited == Some(Termination::Code(0)));
            if let Some(gone) = gone {
                let who = self.describe(gone);
                self.fail(
                    format!("{who} exited without joining the job (it never called spmd::init) while other ranks wait for it; ending the job"),
                    1,
                );
                return;
            }
        }
        if !self.table_sent && self.ranks.iter().all(|r| r.registration.is_some()) {
            self.send_table();
        }
    }

    /// The one global fence of start-up: everybody's card to everybody.
    fn send_table(&mut self) {
        self.table_sent = true;
        let cards = self
            .ranks
            .iter()
            .filter_map(|r| r.registration.as_ref().map(|g| g.card.clone()))
            .collect();
        let table = ControlMessage::Table {
            cards,
            nodes: vec![0; self.ranks.len()],
        };
        for (rank, r) in self.ranks.iter_mut().enumerate() {
            if let Some(reg) = r.registration.as_mut() {
                if let Err(e) = table.send(&mut reg.stream, LAUNCHER_ID, &format!("rank {rank}")) {
                    eprintln!("spmdrun: warning: cannot send the table to rank {rank}: {e}");
                }
            }
        }
    }

    /// Records the first failure, reports it, and asks every rank still
    /// running to stop; after the grace they are killed.
    fn fail(&mut self, message: String, code: i32) {
        if self.failure.is_some() {
            return;
        }
        eprintln!("spmdrun: {message}");
        self.failure = Some(Failure { code });
        for r in self.ranks.iter().filter(|r| r.exited.is_none() && r.pid > 0) {
            spawn::signal_group(r.pid, Signal::SIGTERM);
        }
        self.kill_at = Some(Instant::now() + GRACE);
    }
}
