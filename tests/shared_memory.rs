//! Properties of the shared-memory transport that only whole jobs show:
//! idle ranks sleep, segments never outlive the job, many ranks start.

mod common;

use std::time::Duration;

use common::{assert_all_gone, example, finish_reporting, run, signal, spmdrun, start_reporting_pids};
use nix::sys::signal::Signal;

/// CPU time (user + system) a process has used so far, in seconds.
fn cpu_seconds(pid: i32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("the rank is alive");
    let (_, rest) = stat.rsplit_once(')').expect("a stat line");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the command: state is field 3 of stat, utime 14 and stime 15.
    let ticks: f64 = fields[11].parse::<f64>().unwrap_or(0.0) + fields[12].parse::<f64>().unwrap_or(0.0);
    // SAFETY: sysconf has no memory effects.
    let hz = match unsafe { libc::sysconf(libc::_SC_CLK_TCK) } {
        n if n > 0 => n as f64,
        _ => 100.0,
    };
    ticks / hz
}

/// The job id of a rank, from its environment.
fn job_of(pid: i32) -> String {
    let environ = std::fs::read(format!("/proc/{pid}/environ")).expect("the rank's environment");
    environ
        .split(|b| *b == 0)
        .find_map(|kv| kv.strip_prefix(b"SPMD_JOB="))
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .expect("SPMD_JOB is set")
}

fn leftover_segments(job: &str) -> Vec<String> {
    std::fs::read_dir("/dev/shm")
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|name| name.starts_with(&format!("spmd-{job}-")))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn ranks_blocked_in_a_receive_sleep() {
    let check = example("spmd-check");
    let (child, pids, reader) = start_reporting_pids(&["-n", "4", &check, "fail", "idle"], 4);
    let before: Vec<f64> = pids.iter().map(|p| cpu_seconds(*p)).collect();
    std::thread::sleep(Duration::from_secs(2));
    let used: Vec<f64> = pids.iter().zip(&before).map(|(p, b)| cpu_seconds(*p) - b).collect();
    signal(child.id() as i32, Signal::SIGTERM);
    let out = finish_reporting(child, reader);
    assert_all_gone(&pids);
    assert_eq!(out.code(), Some(143), "{out:?}");
    for (rank, cpu) in used.iter().enumerate() {
        assert!(
            *cpu < 0.2,
            "rank {rank} used {cpu} CPU-seconds in 2 s while blocked in a receive"
        );
    }
}

#[test]
fn a_rank_killed_mid_transfer_ends_the_job_and_leaves_no_segment() {
    let check = example("spmd-check");
    let (child, pids, reader) = start_reporting_pids(&["-n", "3", &check, "fail", "stream"], 3);
    let job = job_of(pids[0]);
    // Let a few 64 MiB messages go through the rings, then kill the sender.
    std::thread::sleep(Duration::from_millis(300));
    signal(pids[0], Signal::SIGKILL);
    let out = finish_reporting(child, reader);
    assert_all_gone(&pids);
    assert_eq!(out.code(), Some(137), "{out:?}");
    assert!(out.stderr.contains(&format!("rank 0 (pid {} ", pids[0])), "{out:?}");
    assert_eq!(
        leftover_segments(&job),
        Vec::<String>::new(),
        "segments left in /dev/shm"
    );
}

#[test]
fn no_segment_outlives_a_finished_job() {
    let check = example("spmd-check");
    let (child, pids, reader) = start_reporting_pids(&["-n", "2", &check, "fail", "idle"], 2);
    let job = job_of(pids[0]);
    // Once running, the segments are already unlinked (only mapped).
    assert_eq!(
        leftover_segments(&job),
        Vec::<String>::new(),
        "segments still named while running"
    );
    signal(child.id() as i32, Signal::SIGTERM);
    finish_reporting(child, reader);
    assert_all_gone(&pids);
}

#[test]
fn sixty_four_ranks_start_on_two_cores() {
    let out = run(spmdrun(&["-n", "64", "--timeout", "120", &example("ring")]));
    assert_eq!(out.code(), Some(0), "{out:?}");
    let chain: String = (0..64).map(|r| format!("P{r}")).collect();
    assert!(
        out.stdout
            .contains(&format!("received message \"{chain}\" from rank 63")),
        "{out:?}"
    );
}
