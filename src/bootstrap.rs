//! How a process learns who it is: from spmdrun's environment, from an MPI
//! launcher's (refused: there is no MPI backend yet), or alone as one rank.

use crate::error::{Error, Result};
use crate::wire::env;

/// The place of this process in a job started by spmdrun.
#[derive(Debug, Clone)]
pub(crate) struct Placement {
    pub rank: usize,
    pub size: usize,
    pub local_rank: usize,
    pub local_size: usize,
    pub node: usize,
    /// The inherited control channel's descriptor.
    pub control_fd: i32,
    /// The launcher process at the other end of it.
    pub launcher_pid: i32,
}

/// How this process was started.
#[derive(Debug)]
pub(crate) enum Launch {
    /// No launcher: a job of one rank.
    Alone,
    /// By spmdrun.
    Spmdrun(Placement),
}

/// Reads the environment of this process.
pub(crate) fn detect() -> Result<Launch> {
    if std::env::var_os(env::RANK).is_some() {
        return from_spmdrun().map(Launch::Spmdrun);
    }
    if let Some(launcher) = mpi_launcher() {
        return Err(Error::WrongLauncher { launcher });
    }
    Ok(Launch::Alone)
}

/// Names the MPI-style launcher that started this process as one of several
/// ranks, if any. A job of size one is fine to run alone; `SLURM_PROCID`
/// alone is set in a plain batch script too, so only a job step counts.
fn mpi_launcher() -> Option<&'static str> {
    let size_above_one = |var: &str| {
        std::env::var(var)
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok())
            .is_some_and(|n| n > 1)
    };
    if size_above_one("OMPI_COMM_WORLD_SIZE") {
        Some("Open MPI's mpirun")
    } else if size_above_one("PMI_SIZE") {
        Some("an MPICH/Hydra mpiexec")
    } else if size_above_one("PMIX_SIZE") || size_above_one("PMIX_UNIV_SIZE") {
        Some("a PMIx launcher")
    } else if std::env::var_os("SLURM_STEP_ID").is_some() && size_above_one("SLURM_STEP_NUM_TASKS") {
        Some("Slurm's srun")
    } else {
        None
    }
}

/// Looks up one variable of the environment (or of a test's).
type Lookup<'a> = dyn Fn(&str) -> Option<String> + 'a;

fn var(get: &Lookup<'_>, name: &str) -> Result<String> {
    get(name).ok_or_else(|| {
        Error::Bootstrap(format!(
            "{name} is missing or not UTF-8, but {} is set: start the program with spmdrun",
            env::RANK
        ))
    })
}

fn number(get: &Lookup<'_>, name: &str) -> Result<usize> {
    let v = var(get, name)?;
    v.trim()
        .parse()
        .map_err(|_| Error::Bootstrap(format!("{name}={v:?} is not a non-negative whole number")))
}

/// Parses `fd:<descriptor>:<launcher pid>`.
fn control(value: &str) -> Option<(i32, i32)> {
    let rest = value.strip_prefix("fd:")?;
    let (fd, pid) = rest.split_once(':')?;
    let fd: i32 = fd.parse().ok()?;
    let pid: i32 = pid.parse().ok()?;
    (fd >= 0 && pid > 0).then_some((fd, pid))
}

fn from_spmdrun() -> Result<Placement> {
    placement(&|name| std::env::var(name).ok())
}

/// The placement the variables `get` finds describe, every one checked.
pub(crate) fn placement(get: &Lookup<'_>) -> Result<Placement> {
    let rank = number(get, env::RANK)?;
    let size = number(get, env::SIZE)?;
    let local_rank = number(get, env::LOCAL_RANK)?;
    let local_size = number(get, env::LOCAL_SIZE)?;
    let node = number(get, env::NODE)?;
    if size == 0 || rank >= size {
        return Err(Error::Bootstrap(format!(
            "{}={rank} is not below {}={size}",
            env::RANK,
            env::SIZE
        )));
    }
    if local_rank >= local_size || local_size > size {
        return Err(Error::Bootstrap(format!(
            "{}={local_rank} and {}={local_size} do not fit a job of {size}",
            env::LOCAL_RANK,
            env::LOCAL_SIZE
        )));
    }
    if u32::try_from(size).is_err() {
        return Err(Error::Bootstrap(format!("{}={size} is too large", env::SIZE)));
    }
    let control_text = var(get, env::CONTROL)?;
    let Some((control_fd, launcher_pid)) = control(&control_text) else {
        return Err(Error::Bootstrap(format!(
            "{}={control_text:?} is not fd:<descriptor>:<pid>",
            env::CONTROL
        )));
    };
    Ok(Placement {
        rank,
        size,
        local_rank,
        local_size,
        node,
        control_fd,
        launcher_pid,
    })
}

/// The name of the machine this process runs on.
pub(crate) fn host_name() -> String {
    nix::unistd::gethostname()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_else(|_| "localhost".to_string())
}

#[cfg(test)]
mod tests {
    use super::control;

    #[test]
    fn control_values_parse_or_are_refused() {
        assert_eq!(control("fd:5:1234"), Some((5, 1234)));
        for bad in ["", "fd:", "fd:5", "5:1234", "fd:-1:3", "fd:5:0", "fd:x:1", "fd:5:1:2"] {
            assert_eq!(control(bad), None, "{bad:?}");
        }
    }
}
