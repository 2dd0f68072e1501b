//! How a process learns who it is: from spmdrun's environment, from an MPI
//! launcher's (the MPI backend with the `mpi` feature, refused without
//! it), or alone as one rank.

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
    /// By an MPI launcher, with the `mpi` feature.
    #[cfg(feature = "mpi")]
    Mpi(MpiLauncher),
}

/// An MPI-style launcher that started this process, as its environment
/// says.
#[derive(Debug, Clone)]
pub(crate) struct MpiLauncher {
    /// Its name, for messages.
    pub name: &'static str,
    /// The number of ranks it started, if its environment says.
    pub size: Option<usize>,
    /// For srun: the MPI plugin it was told (`--mpi=`, `SLURM_MPI_TYPE`).
    #[cfg_attr(not(feature = "mpi"), allow(dead_code))]
    pub plugin: Option<String>,
}

/// Reads the environment of this process.
pub(crate) fn detect() -> Result<Launch> {
    if std::env::var_os(env::RANK).is_some() {
        return from_spmdrun().map(Launch::Spmdrun);
    }
    match mpi_launcher(&|name| std::env::var(name).ok()) {
        #[cfg(feature = "mpi")]
        Some(launcher) => Ok(Launch::Mpi(launcher)),
        // Without the backend, a job of one is fine to run alone.
        #[cfg(not(feature = "mpi"))]
        Some(launcher) if launcher.size.is_some_and(|n| n > 1) => Err(Error::WrongLauncher {
            launcher: launcher.name,
            problem: "spmd was built without its `mpi` feature, so each rank would be a job of its own: build \
                      with `--features spmd/mpi` (README, \"Running on a cluster\"), or start the program with \
                      spmdrun"
                .into(),
        }),
        _ => Ok(Launch::Alone),
    }
}

/// The MPI-style launcher that started this process, if any, from the
/// variables each really sets. `SLURM_PROCID` alone is set in a plain
/// batch script too, so only a job step (`SLURM_STEP_ID`) counts.
pub(crate) fn mpi_launcher(get: &Lookup<'_>) -> Option<MpiLauncher> {
    let size = |var: &str| get(var).and_then(|v| v.trim().parse::<usize>().ok());
    let (name, size) = if get("OMPI_COMM_WORLD_SIZE").is_some() {
        ("Open MPI's mpirun", size("OMPI_COMM_WORLD_SIZE"))
    } else if get("SLURM_STEP_ID").is_some() && get("SLURM_MPI_TYPE").is_some() {
        // srun with an MPI plugin (which may set PMI_RANK itself).
        (
            "Slurm's srun",
            size("SLURM_STEP_NUM_TASKS").or_else(|| size("SLURM_NTASKS")),
        )
    } else if get("PMI_RANK").is_some() || get("PMI_SIZE").is_some() {
        ("an MPICH (Hydra) mpiexec", size("PMI_SIZE"))
    } else if get("SLURM_STEP_ID").is_some() {
        (
            "Slurm's srun",
            size("SLURM_STEP_NUM_TASKS").or_else(|| size("SLURM_NTASKS")),
        )
    } else if get("PMIX_RANK").is_some() || get("PMIX_SIZE").is_some() {
        ("a PMIx launcher", size("PMIX_SIZE").or_else(|| size("PMIX_UNIV_SIZE")))
    } else {
        return None;
    };
    let plugin = get("SLURM_MPI_TYPE").filter(|_| name == "Slurm's srun");
    Some(MpiLauncher { name, size, plugin })
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

/// The name of the machine this process runs on ("localhost" if it has
/// none that spmdrun takes: see [`crate::wire::control::is_host_name`]).
pub(crate) fn host_name() -> String {
    nix::unistd::gethostname()
        .map(|h| h.to_string_lossy().into_owned())
        .ok()
        .filter(|h| crate::wire::control::is_host_name(h))
        .unwrap_or_else(|| "localhost".to_string())
}

#[cfg(test)]
mod tests {
    use super::{control, mpi_launcher};

    #[test]
    fn each_launcher_is_known_by_what_it_really_sets() {
        let detect = |vars: &[(&str, &str)]| {
            let vars: Vec<(String, String)> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
            mpi_launcher(&|name| vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())).map(|l| (l.name, l.size))
        };
        assert_eq!(
            detect(&[("OMPI_COMM_WORLD_SIZE", "4"), ("PMIX_RANK", "1")]),
            Some(("Open MPI's mpirun", Some(4)))
        );
        assert_eq!(
            detect(&[("PMI_RANK", "0"), ("PMI_SIZE", "2"), ("PMI_FD", "6")]),
            Some(("an MPICH (Hydra) mpiexec", Some(2)))
        );
        assert_eq!(
            detect(&[
                ("SLURM_STEP_ID", "0"),
                ("SLURM_PROCID", "3"),
                ("SLURM_STEP_NUM_TASKS", "8")
            ]),
            Some(("Slurm's srun", Some(8)))
        );
        // srun --mpi=pmi2 sets PMI_RANK as Hydra does.
        assert_eq!(
            detect(&[
                ("SLURM_STEP_ID", "0"),
                ("SLURM_MPI_TYPE", "pmi2"),
                ("PMI_RANK", "1"),
                ("SLURM_STEP_NUM_TASKS", "2")
            ]),
            Some(("Slurm's srun", Some(2)))
        );
        // A batch script has SLURM_PROCID but is no launch.
        assert_eq!(detect(&[("SLURM_PROCID", "0"), ("SLURM_NTASKS", "4")]), None);
        assert_eq!(detect(&[]), None);
    }

    #[test]
    fn control_values_parse_or_are_refused() {
        assert_eq!(control("fd:5:1234"), Some((5, 1234)));
        for bad in ["", "fd:", "fd:5", "5:1234", "fd:-1:3", "fd:5:0", "fd:x:1", "fd:5:1:2"] {
            assert_eq!(control(bad), None, "{bad:?}");
        }
    }
}
