//! The command line of `spmdrun`: flags, their checks, and one-line errors.

use std::ffi::OsString;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Parser;

use crate::hostfile;

/// Runs PROGRAM as N ranks of one SPMD job.
#[derive(Debug, Parser)]
#[command(
    name = "spmdrun",
    version,
    about = "Run a program as N ranks of an spmd job",
    after_help = "Every rank gets SPMD_RANK, SPMD_SIZE, SPMD_LOCAL_RANK and SPMD_LOCAL_SIZE in its environment.\n\
                  If a rank fails, spmdrun ends the others and exits with the failing rank's status."
)]
struct Args {
    /// Number of ranks to start (`-np N` works too).
    #[arg(short = 'n', value_name = "N")]
    ranks: usize,

    /// Allow more ranks than the hostfile has slots. Without a hostfile
    /// spmdrun always allows more ranks than cores.
    #[arg(long)]
    oversubscribe: bool,

    /// Place ranks on the slots of this hostfile, in Open MPI's
    /// (`host slots=N`) or MPICH's (`host:N`) format. Every host must be
    /// this machine for now.
    #[arg(long, visible_alias = "machinefile", short = 'f', value_name = "FILE")]
    hostfile: Option<PathBuf>,

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

    /// End the job with an error if it runs longer than SECONDS.
    #[arg(long, value_name = "SECONDS")]
    timeout: Option<f64>,

    /// The program to run, and its arguments.
    #[arg(
        required = true,
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "PROGRAM [ARGS]..."
    )]
    command: Vec<OsString>,
}

/// The checked options of one job.
#[derive(Debug)]
pub struct Options {
    pub ranks: usize,
    pub tag_output: bool,
    pub env: Vec<(String, String)>,
    pub wdir: Option<PathBuf>,
    pub timeout: Option<Duration>,
    pub program: PathBuf,
    pub args: Vec<OsString>,
}

/// What the command line asked for: a job, or a text to print and exit.
pub enum Parsed {
    Job(Options),
    Exit { text: String, code: i32 },
}

/// Parses and checks the command line. Errors are one line.
pub fn parse(argv: Vec<OsString>) -> Parsed {
    // `-np` is a long option spelled with one dash in mpirun; clap wants it
    // as `-n`. Only rewrite it before the program name.
    let mut argv = argv;
    for a in argv.iter_mut().skip(1) {
        if a == "-np" {
            *a = OsString::from("-n");
            break;
        }
        if !a.to_string_lossy().starts_with('-') {
            break;
        }
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
        Ok(o) => Parsed::Job(o),
        Err(text) => fail(text),
    }
}

fn fail(text: String) -> Parsed {
    Parsed::Exit {
        text: format!("spmdrun: {text}"),
        code: 2,
    }
}

fn check(args: Args) -> Result<Options, String> {
    if args.ranks == 0 {
        return Err("-n must be at least 1".into());
    }
    if args.ranks > u32::MAX as usize / 2 {
        return Err(format!("-n {} is more ranks than spmd supports", args.ranks));
    }
    if let Some(path) = &args.hostfile {
        let hosts = hostfile::read(path)?;
        if let Some(remote) = hosts.iter().find(|h| !hostfile::is_local(&h.name)) {
            return Err(format!(
                "{}: host {} is not this machine; jobs across hosts are not supported yet",
                remote.origin, remote.name
            ));
        }
        hostfile::place(&hosts, args.ranks, args.oversubscribe)?;
    }
    let mut env = Vec::new();
    for x in &args.export {
        env.push(parse_export(x)?);
    }
    if let Some(dir) = &args.wdir {
        if !dir.is_dir() {
            return Err(format!("--wdir {}: no such directory", dir.display()));
        }
    }
    let timeout = match args.timeout {
        None => None,
        Some(s) if s.is_finite() && s > 0.0 => Some(Duration::from_secs_f64(s)),
        Some(s) => return Err(format!("--timeout {s}: must be a positive number of seconds")),
    };
    let mut command = args.command.into_iter();
    let Some(program) = command.next() else {
        return Err("no program given".into());
    };
    let program = find_program(&program)?;
    Ok(Options {
        ranks: args.ranks,
        tag_output: args.tag_output,
        env,
        wdir: args.wdir,
        timeout,
        program,
        args: command.collect(),
    })
}

fn parse_export(x: &str) -> Result<(String, String), String> {
    let (name, value) = match x.split_once('=') {
        Some((n, v)) => (n, Some(v.to_string())),
        None => (x, None),
    };
    let valid = !name.is_empty()
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !valid {
        return Err(format!(
            "-x {x:?}: expected VAR or VAR=VALUE with VAR made of letters, digits and _"
        ));
    }
    if name.starts_with("SPMD_") {
        return Err(format!("-x {name}: SPMD_ variables are set by spmdrun itself"));
    }
    let value = match value {
        Some(v) => v,
        None => std::env::var(name).map_err(|_| format!("-x {name}: {name} is not set in spmdrun's environment"))?,
    };
    Ok((name.to_string(), value))
}

fn is_executable(p: &Path) -> bool {
    p.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Finds the program as a path, or on `PATH` when it has no slash.
fn find_program(program: &OsString) -> Result<PathBuf, String> {
    let shown = program.to_string_lossy();
    let path = Path::new(program);
    if shown.contains('/') {
        if !path.exists() {
            return Err(format!("cannot run {shown}: no such file"));
        }
        if !is_executable(path) {
            return Err(format!("cannot run {shown}: not an executable file"));
        }
        return std::path::absolute(path).map_err(|e| format!("cannot run {shown}: {e}"));
    }
    let search = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&search) {
        let candidate = dir.join(path);
        if is_executable(&candidate) {
            return Ok(candidate);
        }
    }
    Err(format!("cannot run {shown}: not found in PATH"))
}
