//! Properties of the shared-memory transport that only whole jobs show:
//! idle ranks sleep, segments never outlive the job, many ranks start.

mod common;

use std::time::Duration;

use common::{assert_all_gone, cpu_seconds, example, finish_reporting, run, signal, spmdrun, start_reporting_pids};
use nix::sys::signal::Signal;

/// The names in a directory.
fn names(dir: &std::path::Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// A fresh empty directory for a job's TMPDIR, removed with what is in it
/// when dropped, a failed assertion's unwinding included (a directory left
/// behind would stand in the way of the next run's tests).
struct FreshDir(std::path::PathBuf);

impl FreshDir {
    fn new(name: &str) -> FreshDir {
        let dir = std::env::temp_dir().join(format!("spmd-test-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("a temp dir");
        FreshDir(dir)
    }
}

impl Drop for FreshDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn ranks_blocked_in_a_receive_sleep() {
    // Over every transport: sockets poll for a moment too, then sleep.
    for transport in common::TRANSPORTS {
        let check = example("spmd-check");
        let (child, pids, reader) = common::start_reporting_pids_with(
            &["-n", "4", &check, "fail", "idle"],
            4,
            &[("SPMD_TRANSPORT", transport)],
        );
        let before: Vec<f64> = pids.iter().map(|p| cpu_seconds(*p)).collect();
        std::thread::sleep(Duration::from_secs(2));
        let used: Vec<f64> = pids.iter().zip(&before).map(|(p, b)| cpu_seconds(*p) - b).collect();
        signal(child.id() as i32, Signal::SIGTERM);
        let out = finish_reporting(child, reader);
        assert_all_gone(&pids);
        assert_eq!(out.code(), Some(143), "{transport}: {out:?}");
        for (rank, cpu) in used.iter().enumerate() {
            assert!(
                *cpu < 0.2,
                "{transport}: rank {rank} used {cpu} CPU-seconds in 2 s while blocked in a receive"
            );
        }
    }
}

#[test]
fn a_rank_killed_mid_transfer_ends_the_job_and_leaves_nothing_behind() {
    for transport in common::TRANSPORTS {
        let check = example("spmd-check");
        let dir = FreshDir::new(&format!("killed-{transport}"));
        let tmp = &dir.0;
        let shm_before = names(std::path::Path::new("/dev/shm"));
        let args = ["-n", "3", &check, "fail", "stream"];
        let (child, pids, reader) = common::start_reporting_pids_with(
            &args,
            3,
            &[("SPMD_TRANSPORT", transport), ("TMPDIR", &tmp.display().to_string())],
        );
        // Let a few 64 MiB messages go through, then kill the sender.
        std::thread::sleep(Duration::from_millis(300));
        signal(pids[0], Signal::SIGKILL);
        let out = finish_reporting(child, reader);
        assert_all_gone(&pids);
        assert_eq!(out.code(), Some(137), "{transport}: {out:?}");
        assert!(out.stderr.contains(&format!("rank 0 (pid {} ", pids[0])), "{out:?}");
        assert_eq!(names(tmp), Vec::<String>::new(), "{transport}: left in TMPDIR");
        let new: Vec<String> = names(std::path::Path::new("/dev/shm"))
            .into_iter()
            .filter(|n| !shm_before.contains(n) && n.starts_with("spmd"))
            .collect();
        assert_eq!(new, Vec::<String>::new(), "{transport}: left in /dev/shm");
    }
}

#[test]
fn shared_memory_has_no_name_anyone_could_open_or_squat() {
    let check = example("spmd-check");
    let (child, pids, reader) = start_reporting_pids(&["-n", "2", &check, "fail", "idle"], 2);
    for pid in &pids {
        let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).expect("the rank's maps");
        assert!(
            maps.contains("memfd:spmd-segment"),
            "no anonymous segment mapped: {maps}"
        );
        assert!(!maps.contains("/dev/shm/"), "a named segment: {maps}");
    }
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

/// Single copy where the kernel allows it, the ring and the windows where
/// it does not: a second user's job (root could read any process)
/// exchanges messages of 256 KiB to 16 MiB with every one of them offered
/// where the receiver can read the sender (`SPMD_SINGLE_COPY=always`), and
/// alltoalls of large parts, which copy straight only if every rank may
/// read every other. Three runs: with ranks the kernel lets read each
/// other; with ranks that made themselves non-dumpable before `init`, as
/// hardened programs do; and with only rank 1 non-dumpable, so that rank 1
/// may read rank 0 but not the other way round, where both ranks must take
/// the windows. Every element arrives intact each time, and the job's own
/// check of the kernel's answer shows that the runs took both paths.
#[test]
fn large_messages_arrive_intact_whether_or_not_the_kernel_allows_single_copy() {
    let spmdrun = common::runnable_by_anyone(&common::spmdrun_path().display().to_string());
    let check = common::runnable_by_anyone(&example("spmd-check"));
    for (extra, readable) in [
        (None, "yes"),
        (Some("undumpable"), "no"),
        (Some("rank-1-undumpable"), "no"),
    ] {
        let mut cmd = common::as_other_user(spmdrun.path());
        cmd.args(["-n", "2", "--timeout", "60"])
            .arg(check.path())
            .arg("single-copy")
            .args(extra)
            .env("SPMD_SINGLE_COPY", "always")
            .current_dir(check.dir());
        let out = run(cmd);
        assert_eq!(out.code(), Some(0), "{extra:?}: {out:?}");
        assert!(
            out.stdout.contains(&format!("rank 1's memory readable: {readable}")),
            "{extra:?}: {out:?}"
        );
        assert!(out.stdout.contains("single-copy: all checks passed"), "{out:?}");
    }
}
