//! The checks that turn spmdrun's parsed command line into a job's [`Options`], each failure one line.

use std::ffi::OsString;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use spmd::wire::{Settings, SingleCopy, TransportKind, WaitMode, env};

use super::{Args, DEFAULT_LAUNCH_AGENT, MAX_RANKS, Options};
use crate::hostfile;
use crate::placement::{self, MapBy, Nodes, Placement};

/// The hosts and the placement of the ranks on them: from the hostfile or
/// `--host`, or this machine with a slot per core (oversubscribed at will).
fn placed(args: &Args, map_by: MapBy) -> Result<(Vec<hostfile::Host>, Placement), String> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let listed = match (&args.hostfile, &args.host) {
        (Some(path), _) => Some(hostfile::read(path)?),
        (None, Some(list)) => Some(hostfile::parse_list(list)?),
        (None, None) => None,
    };
    let Some(hosts) = listed else {
        let ranks = args.ranks.map_or(cores, |n| n as usize);
        let here = hostfile::Host {
            name: "localhost".into(),
            slots: Some(cores),
            max_slots: None,
            origin: "this machine".into(),
        };
        return Ok((vec![here], Placement { host: vec![0; ranks] }));
    };
    // A host without a slot count has one per core where that can be
    // learnt: on this machine.
    let slots: Vec<usize> = hosts
        .iter()
        .map(|h| h.slots_or(if hostfile::is_local(&h.name) { cores } else { 1 }))
        .collect();
    let total = slots.iter().fold(0usize, |a, s| a.saturating_add(*s));
    let ranks = match args.ranks {
        Some(n) => n as usize,
        None if total > MAX_RANKS => {
            return Err(format!(
                "the hosts have {total} slots, more than the {MAX_RANKS} ranks spmdrun runs; give -n"
            ));
        }
        None => total,
    };
    let placement = placement::place(&hosts, &slots, ranks, map_by, args.oversubscribe)?;
    Ok((hosts, placement))
}

fn seconds(flag: &str, s: f64, zero_ok: bool) -> Result<Option<Duration>, String> {
    if zero_ok && s == 0.0 {
        return Ok(None);
    }
    if s.is_finite() && s > 0.0 && s < 1e9 {
        return Ok(Some(Duration::from_secs_f64(s)));
    }
    if s >= 1e9 {
        // About 31 years: a longer limit is no limit (give 0 for none where
        // the flag allows it).
        return Err(format!("{flag} {s:e}: more than 999999999 seconds"));
    }
    Err(format!("{flag} {s}: must be a positive number of seconds"))
}

/// [`seconds`], and no shorter than a millisecond: a limit that rounds to
/// nothing (`1e-300`) would end the job at once and say it ran longer
/// than "0 s".
fn limit(flag: &str, s: f64, zero_ok: bool) -> Result<Option<Duration>, String> {
    let limit = seconds(flag, s, zero_ok)?;
    if limit.is_some_and(|d| d < Duration::from_millis(1)) {
        return Err(format!("{flag} {s:e}: less than a millisecond"));
    }
    Ok(limit)
}

pub(super) fn check(args: Args) -> Result<Options, String> {
    if let Some(n) = args.ranks {
        if n < 1 {
            return Err(format!("-n {n}: must be at least 1"));
        }
        if n > MAX_RANKS as i64 {
            return Err(format!("-n {n}: spmdrun runs at most {MAX_RANKS} ranks on one machine"));
        }
    }
    let map_by = MapBy::parse(&args.map_by)?;
    let (hosts, placement) = placed(&args, map_by)?;
    let ranks = placement.host.len();
    let local: Vec<bool> = hosts.iter().map(|h| hostfile::is_local(&h.name)).collect();
    let nodes = Nodes::of(&placement, &local);
    let launch_agent: Vec<String> = match &args.launch_agent {
        Some(cmd) => cmd.split_whitespace().map(String::from).collect(),
        None => DEFAULT_LAUNCH_AGENT.iter().map(|w| w.to_string()).collect(),
    };
    if launch_agent.is_empty() {
        return Err("--launch-agent: the command is empty".into());
    }
    let mut env = Vec::new();
    for x in &args.export {
        env.push(parse_export(x)?);
    }
    if let Some(dir) = &args.wdir {
        check_wdir(dir)?;
    }
    let timeout = match args.timeout {
        None => None,
        Some(s) => limit("--timeout", s, false)?,
    };
    let hang_report = limit("--hang-report", args.hang_report, true)?;
    let end_on_deadlock = match args.on_deadlock.as_str() {
        "end" => true,
        "report" => false,
        other => return Err(format!("--on-deadlock {other:?}: expected \"end\" or \"report\"")),
    };
    let bind_to_cores = match args.bind_to.as_str() {
        "core" => true,
        "none" => false,
        other => return Err(format!("--bind-to {other:?}: expected \"core\" or \"none\"")),
    };
    let setting = |name: &str| {
        env.iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .or_else(|| std::env::var(name).ok())
    };
    let transport = match setting(env::TRANSPORT) {
        Some(v) => TransportKind::parse(&v)?,
        None => TransportKind::Shm,
    };
    // Between hosts only TCP reaches: over shared memory (the default),
    // ranks on one host share memory and use TCP to the others; over tcp,
    // every pair uses TCP; Unix sockets cannot leave a host.
    let spans = nodes.host.len();
    if spans > 1 && transport == TransportKind::Socket {
        return Err(format!(
            "{}=socket: the job spans {spans} hosts, which Unix sockets cannot reach (use shm or tcp)",
            env::TRANSPORT
        ));
    }
    let wait = match setting(env::WAIT) {
        Some(v) => WaitMode::parse(&v)?,
        None => None,
    };
    let single_copy = match setting(env::SINGLE_COPY) {
        Some(v) => SingleCopy::parse(&v)?,
        None => SingleCopy::Auto,
    };
    let mut command = args.command.into_iter();
    let Some(program) = command.next() else {
        return Err("no program given".into());
    };
    // Other hosts get the program as given (a bare name is looked up on
    // each host's own PATH), and check it before any rank starts; this
    // machine checks it now if ranks run here.
    let elsewhere = if program.to_string_lossy().contains('/') {
        std::path::absolute(&program).map_err(|e| format!("cannot run {}: {e}", program.to_string_lossy()))?
    } else {
        PathBuf::from(&program)
    };
    let program = if nodes.host.contains(&None) {
        find_program(&program)?
    } else {
        elsewhere.clone()
    };
    Ok(Options {
        ranks,
        hosts,
        placement,
        nodes,
        launch_agent,
        control_address: args.control_address,
        verbose: args.verbose,
        tag_output: args.tag_output,
        env,
        wdir: args.wdir,
        timeout,
        hang_report,
        end_on_deadlock,
        bind_to_cores,
        settings: Settings {
            transport,
            wait: wait.unwrap_or(WaitMode::Spin),
            single_copy,
        },
        wait_chosen: wait.is_some(),
        program,
        program_elsewhere: elsewhere,
        args: command.collect(),
    })
}

fn check_wdir(dir: &Path) -> Result<(), String> {
    let shown = dir.display();
    match std::fs::metadata(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(format!("--wdir {shown}: no such directory")),
        Err(e) => Err(format!("--wdir {shown}: {e}")),
        Ok(m) if !m.is_dir() => Err(format!("--wdir {shown}: not a directory")),
        Ok(_) => match std::fs::read_dir(dir) {
            Ok(_) => Ok(()),
            Err(e) => Err(format!("--wdir {shown}: {e}")),
        },
    }
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
    let user_settings = [env::TRANSPORT, env::WAIT, env::SINGLE_COPY];
    if name.starts_with("SPMD_") && !user_settings.contains(&name) {
        return Err(format!(
            "-x {name}: SPMD_ variables are set by spmdrun itself (only {} are user settings)",
            user_settings.join(", ")
        ));
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
        if path.is_dir() {
            return Err(format!("cannot run {shown}: it is a directory"));
        }
        if !is_executable(path) {
            return Err(format!("cannot run {shown}: not an executable file"));
        }
        return std::path::absolute(path).map_err(|e| format!("cannot run {shown}: {e}"));
    }
    if shown.is_empty() {
        return Err("the program name is empty".into());
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
