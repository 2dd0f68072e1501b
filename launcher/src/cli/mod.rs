//! The command line of `spmdrun`: flags, their checks, and one-line errors
//! that name the real problem.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

use spmd::wire::Settings;

use crate::hostfile;
use crate::placement::{Nodes, Placement};

mod checks;

use checks::check;

const AFTER_HELP: &str = "\
Every rank gets SPMD_RANK, SPMD_SIZE, SPMD_LOCAL_RANK, SPMD_LOCAL_SIZE and
SPMD_NODE in its environment, and an inherited private channel to spmdrun
(on another host, to spmdrun's agent there, started through ssh);
ranks reach each other only through memory and sockets spmdrun hands them, so
there is no secret, address or file for anyone else to find (over TCP, each
rank listens while the job starts, and every connection proves the key of
its pair of ranks, which spmdrun derives from the job's secret and gives
each rank only for its own pairs, over the private channel).

User settings, read from spmdrun's environment (or given with -x):
  SPMD_TRANSPORT=shm|socket|tcp how ranks talk: shared memory, Unix sockets,
                                or TCP (default shm; across hosts, shm
                                within each host and TCP between them)
  SPMD_WAIT=auto|spin|yield|sleep
                                how a rank polls before it sleeps
                                (default auto: spin with a core per
                                rank, yielding while a peer shares its core;
                                yield with more ranks than cores)
  SPMD_SINGLE_COPY=auto|always|off
                                when a large message between ranks on one
                                machine is copied once, straight from the
                                sender's memory, where the kernel allows it
                                (default auto: when messages queue up on a
                                machine with more runnable tasks than cores)

Exit status: 0 when every rank exits 0; otherwise the first failure's: the
code a rank exited with or gave to abort (1 for an abort code of 0 or outside
1-255; 101 for a panic), 128+N for a rank
killed by signal N or for spmdrun receiving signal N, 124 for --timeout, 125
for a deadlock, 1 for a rank that exited without finalizing or without
joining the job, or when spmdrun's own output failed; 2 for a bad command
line.";

/// Runs PROGRAM as N ranks of one SPMD job.
#[derive(Debug, Parser)]
#[command(
    name = "spmdrun",
    version,
    about = "Run a program as N ranks of an spmd job",
    override_usage = "spmdrun [-n N] [OPTIONS] PROGRAM [ARGS]...",
    after_help = AFTER_HELP
)]
struct Args {
    /// Number of ranks to start (`-np N` works too). Without it, one rank
    /// per slot of the hosts (per core, without a hostfile or --host).
    #[arg(short = 'n', value_name = "N", allow_negative_numbers = true)]
    ranks: Option<i64>,

    /// Allow more ranks than the hosts have slots (never more than a
    /// host's max_slots). Without a hostfile or --host spmdrun always
    /// allows more ranks than cores.
    #[arg(long)]
    oversubscribe: bool,

    /// Place ranks on the slots of this hostfile, in Open MPI's
    /// (`host slots=N max_slots=M`) or MPICH's (`host:N`) format. A host
    /// without a slot count has one per core on this machine, else one.
    /// Ranks on other hosts start through ssh (see --launch-agent).
    #[arg(long, visible_alias = "machinefile", short = 'f', value_name = "FILE")]
    hostfile: Option<PathBuf>,

    /// Hosts on the command line instead of a hostfile: `a:2,b:2` (a host
    /// named N times without `:N` has N slots; `[::1]:2` for this
    /// machine's IPv6 address with a count).
    #[arg(long, short = 'H', value_name = "HOST[:N],...", conflicts_with = "hostfile")]
    host: Option<String>,

    /// Fill each host's slots in turn (`slot`, the default) or place one
    /// rank per host round the list (`node`).
    #[arg(long = "map-by", value_name = "slot|node", default_value = "slot")]
    map_by: String,

    /// How to reach another host: the command, split at spaces, that
    /// spmdrun runs with the host name and the agent's command line after
    /// it (default `ssh -T -o BatchMode=yes -o ConnectTimeout=10 -o
    /// ServerAliveInterval=5 -o ServerAliveCountMax=3`).
    #[arg(long = "launch-agent", value_name = "CMD")]
    launch_agent: Option<String>,

    /// The address other hosts reach this machine's ranks at (default: the
    /// source address of the route to the first remote host).
    #[arg(long = "control-address", value_name = "IP")]
    control_address: Option<std::net::IpAddr>,

    /// Say how the job is started: each host's agent, and the addresses
    /// the ranks listen on.
    #[arg(long, short = 'v')]
    verbose: bool,

    /// Prefix every output line with the rank that printed it, as `[R] `.
    #[arg(long = "tag-output", short = 'l')]
    tag_output: bool,

    /// Export VAR (from spmdrun's environment) or set VAR=VALUE for every
    /// rank. Repeatable.
    #[arg(short = 'x', value_name = "VAR[=VALUE]")]
    export: Vec<String>,

    /// Working directory of the ranks.
    #[arg(long, value_name = "DIR")]
    wdir: Option<PathBuf>,

    /// End the job with an error (status 124) if it runs longer than
    /// SECONDS, saying what every rank was doing.
    #[arg(long, value_name = "SECONDS", allow_negative_numbers = true)]
    timeout: Option<f64>,

    /// When ranks have been blocked inside spmd for SECONDS, say on what;
    /// when every rank is, and nothing is in flight, report the deadlock
    /// and end the job (status 125). 0 turns the reports off.
    #[arg(
        long = "hang-report",
        value_name = "SECONDS",
        default_value_t = 60.0,
        allow_negative_numbers = true
    )]
    hang_report: f64,

    /// What to do about a deadlock: `end` the job (the default) or only
    /// `report` it and keep waiting.
    #[arg(long = "on-deadlock", value_name = "end|report", default_value = "end")]
    on_deadlock: String,

    /// Bind each rank to a core of its own (`core`, the default, when there
    /// are no more ranks than cores spmdrun may use) or leave the ranks to
    /// the scheduler (`none`).
    #[arg(long = "bind-to", value_name = "core|none", default_value = "core")]
    bind_to: String,

    /// The program to run, and its arguments (passed on as they are).
    #[arg(value_name = "PROGRAM", required = true, trailing_var_arg = true, num_args = 1..)]
    command: Vec<OsString>,
}

/// How spmdrun reaches another host unless `--launch-agent` says: ssh that
/// never asks for a password, gives up on a host that does not answer in
/// 10 s, and notices within about 15 s a host that vanishes.
pub const DEFAULT_LAUNCH_AGENT: [&str; 10] = [
    "ssh",
    "-T",
    "-o",
    "BatchMode=yes",
    "-o",
    "ConnectTimeout=10",
    "-o",
    "ServerAliveInterval=5",
    "-o",
    "ServerAliveCountMax=3",
];

/// The most ranks spmdrun starts on one machine (each is a process, with
/// a link to every other).
pub const MAX_RANKS: usize = 1 << 16;

/// The checked options of one job.
#[derive(Debug)]
pub struct Options {
    pub ranks: usize,
    /// The hosts the ranks run on, and which rank runs on which.
    pub hosts: Vec<hostfile::Host>,
    pub placement: Placement,
    /// The machines the ranks run on, one node each.
    pub nodes: Nodes,
    /// The command that reaches another host (ssh and its options).
    pub launch_agent: Vec<String>,
    /// The address other hosts reach this machine's ranks at.
    pub control_address: Option<std::net::IpAddr>,
    pub verbose: bool,
    pub tag_output: bool,
    pub env: Vec<(String, String)>,
    pub wdir: Option<PathBuf>,
    pub timeout: Option<Duration>,
    pub hang_report: Option<Duration>,
    pub end_on_deadlock: bool,
    /// Bind each rank to a core of its own when the ranks fit.
    pub bind_to_cores: bool,
    pub settings: Settings,
    /// Whether the wait mode was chosen by the user (not `auto`).
    pub wait_chosen: bool,
    pub program: PathBuf,
    /// The program as other hosts get it.
    pub program_elsewhere: PathBuf,
    pub args: Vec<OsString>,
}

/// What the command line asked for: a job, or a text to print and exit.
pub enum Parsed {
    Job(Box<Options>),
    Exit { text: String, code: i32 },
}

/// Parses and checks the command line. Errors are one line.
pub fn parse(argv: Vec<OsString>) -> Parsed {
    // `-np` is a long option spelled with one dash in mpirun; clap wants it
    // as `-n`. Only options before the program are rewritten: an option is
    // a word starting with '-', and the flags that take a value take the
    // next word with them.
    let mut argv = argv;
    let mut i = 1;
    while i < argv.len() {
        let word = argv[i].to_string_lossy().into_owned();
        if !word.starts_with('-') {
            break;
        }
        if word == "-np" {
            argv[i] = OsString::from("-n");
        }
        let takes_value = [
            "-n",
            "-np",
            "-x",
            "-f",
            "--hostfile",
            "--machinefile",
            "-H",
            "--host",
            "--map-by",
            "--launch-agent",
            "--control-address",
            "--wdir",
            "--timeout",
        ]
        .contains(&word.as_str())
            || ["--hang-report", "--on-deadlock", "--bind-to"].contains(&word.as_str());
        i += if takes_value { 2 } else { 1 };
    }
    let args = match Args::try_parse_from(argv) {
        Ok(a) => a,
        Err(e) => {
            use clap::error::ErrorKind;
            if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
                return Parsed::Exit {
                    text: e.to_string(),
                    code: 0,
                };
            }
            // clap's message, without the usage block, on one line.
            let rendered = e.to_string();
            let text: Vec<&str> = rendered
                .lines()
                .take_while(|l| !l.starts_with("Usage:"))
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with("tip:") && !l.starts_with("For more information"))
                .collect();
            let text = text.join(" ");
            let text = text.strip_prefix("error: ").unwrap_or(&text);
            return fail(format!("{text} (see spmdrun --help)"));
        }
    };
    match check(args) {
        Ok(o) => Parsed::Job(Box::new(o)),
        Err(text) => fail(text),
    }
}

fn fail(text: String) -> Parsed {
    Parsed::Exit {
        text: format!("spmdrun: {text}"),
        code: 2,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use spmd::wire::TransportKind;

    fn error(args: &[&str]) -> String {
        let mut argv = vec![OsString::from("spmdrun")];
        argv.extend(args.iter().map(OsString::from));
        match parse(argv) {
            Parsed::Exit { text, code: 2 } => text,
            Parsed::Exit { text, code } => panic!("{args:?}: status {code}: {text}"),
            Parsed::Job(o) => panic!("{args:?}: accepted: {o:?}"),
        }
    }

    #[test]
    fn each_mistake_is_named_for_what_it_is() {
        assert!(error(&["--tag-outptu", "-n", "2", "true"]).contains("--tag-outptu"));
        assert!(error(&["-n", "3", "-np", "2", "true"]).contains("-n"));
        assert!(!error(&["-n", "3", "-np", "2", "true"]).contains("PATH"));
        assert!(error(&["-n", "2", "--wdir", "/etc/hostname", "true"]).contains("not a directory"));
        assert!(error(&["-n", "2", "--on-deadlock", "x", "true"]).contains("--on-deadlock"));
        assert!(error(&["-n", "2", "--bind-to", "socket", "true"]).contains("--bind-to"));
        assert!(error(&["-n", "65537", "true"]).contains("at most 65536 ranks"));
        assert!(error(&["-n", "2000000000", "true"]).contains("at most 65536 ranks"));
        assert!(error(&["-n", "2", "-x", "SPMD_TRANSPORT=udp", "true"]).contains("SPMD_TRANSPORT"));
        assert!(error(&["-n", "2", "--map-by", "socket", "true"]).contains("--map-by"));
    }

    #[test]
    fn attached_values_and_user_settings_are_accepted() {
        let argv = ["spmdrun", "-n3", "-x", "SPMD_TRANSPORT=socket", "true", "-n", "x"];
        let Parsed::Job(o) = parse(argv.iter().map(OsString::from).collect()) else {
            panic!("refused");
        };
        assert_eq!(o.ranks, 3);
        assert_eq!(o.settings.transport, TransportKind::Socket);
        assert_eq!(o.args, ["-n", "x"]);
    }
}
