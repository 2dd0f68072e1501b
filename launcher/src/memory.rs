//! Whether this machine has the memory a job's shared-memory segments
//! need, checked once before any rank starts: a rank that runs out while
//! reserving its segment would be killed by the out-of-memory killer, not
//! given an error.

/// Free memory in bytes as `/proc/meminfo` and the memory cgroup of this
/// process tell, with where the limit comes from.
fn available() -> Option<(u64, String)> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = meminfo.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    let mut best = (kib * 1024, "available memory (/proc/meminfo)".to_string());
    if let Some((free, what)) = cgroup_free() {
        if free < best.0 {
            best = (free, what);
        }
    }
    Some(best)
}

/// Room left under this process's memory cgroup limit, if it has one.
fn cgroup_free() -> Option<(u64, String)> {
    let groups = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    for line in groups.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        let read = |file: String| -> Option<u64> { std::fs::read_to_string(file).ok()?.trim().parse().ok() };
        if controllers.split(',').any(|c| c == "memory") {
            let dir = format!("/sys/fs/cgroup/memory{path}");
            let limit = read(format!("{dir}/memory.limit_in_bytes"))?;
            let used = read(format!("{dir}/memory.usage_in_bytes"))?;
            if limit < (1 << 60) {
                return Some((
                    limit.saturating_sub(used),
                    format!("the memory cgroup {path} (limit {limit} bytes)"),
                ));
            }
        } else if controllers.is_empty() {
            for root in ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"] {
                let dir = format!("{root}{path}");
                if let (Some(limit), Some(used)) =
                    (read(format!("{dir}/memory.max")), read(format!("{dir}/memory.current")))
                {
                    return Some((
                        limit.saturating_sub(used),
                        format!("the memory cgroup {path} (limit {limit} bytes)"),
                    ));
                }
            }
        }
    }
    None
}

/// Fails with a message saying how much a job of `ranks` ranks on this
/// machine needs and what is free, when it will not fit.
pub fn check_shared_memory(ranks: usize) -> Result<(), String> {
    let need = spmd::shared_memory_per_node(ranks);
    let Some((free, what)) = available() else { return Ok(()) };
    if need <= free {
        return Ok(());
    }
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    Err(format!(
        "the job needs {:.1} MiB of shared memory on this machine for {ranks} ranks, but only {:.1} MiB is free \
         under {what}; run fewer ranks, free memory, or use SPMD_TRANSPORT=socket",
        mib(need),
        mib(free)
    ))
}
