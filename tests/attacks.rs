//! Nobody outside the job can stop it, join it or crash it: a second
//! user's attacker (tests/programs/attacker) looks for the job's sockets,
//! listeners, files and processes, connects to what it finds, floods,
//! trickles and squats names, while real jobs of 16 and 64 ranks run over
//! both transports; every job completes with correct results, and the
//! attacker reaches nothing of the job's.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{example, run, spmdrun_over};

const MALLORY: &str = "spmd-mallory";

/// The attacker's account, made if it is missing (the tests run as root in
/// CI; elsewhere, make it once: `useradd -M spmd-mallory`).
fn mallory() {
    let exists = Command::new("id")
        .arg(MALLORY)
        .output()
        .is_ok_and(|o| o.status.success());
    if exists {
        return;
    }
    assert!(
        nix::unistd::geteuid().is_root(),
        "the attack tests need a second user: run `useradd -M {MALLORY}` as root (CI does)"
    );
    let made = Command::new("useradd")
        .args(["-M", "-s", "/usr/sbin/nologin", MALLORY])
        .status()
        .expect("useradd runs");
    // Another test may have made it meanwhile (status 9: it exists).
    assert!(made.success() || made.code() == Some(9), "useradd failed: {made:?}");
}

/// Starts the attacker as the other user for `seconds`, from a copy the
/// other user can run.
fn start_attacker(seconds: u32) -> std::process::Child {
    mallory();
    let copy = std::env::temp_dir().join(format!("spmd-attacker-copy-{}", std::process::id()));
    std::fs::copy(example("spmd-attacker"), &copy).expect("copying the attacker");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o755)).expect("making it runnable");
    Command::new("setpriv")
        .args(["--reuid", MALLORY, "--regid", MALLORY, "--clear-groups"])
        .arg(&copy)
        .arg(seconds.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("setpriv runs the attacker")
}

/// The number after `label` in the attacker's report.
fn count(report: &str, label: &str) -> usize {
    let line = report
        .lines()
        .find(|l| l.starts_with(label))
        .unwrap_or_else(|| panic!("no {label:?} in {report}"));
    line.rsplit(' ')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{line}"))
}

#[test]
fn a_stranger_cannot_stop_join_or_crash_a_job() {
    let attacker = start_attacker(20);
    let check = example("spmd-check");
    let ring = example("ring");
    let until = Instant::now() + Duration::from_secs(18);
    let mut jobs = 0;
    while Instant::now() < until {
        for transport in common::TRANSPORTS {
            let out = run(spmdrun_over(
                transport,
                &["-n", "16", "--timeout", "60", &check, "collectives", "7", "10"],
            ));
            assert_eq!(out.code(), Some(0), "{transport}, under attack: {out:?}");
            assert!(
                out.stdout.contains("collectives: all checks passed on 16 ranks"),
                "{out:?}"
            );
            assert!(out.stderr.is_empty(), "{transport}: something complained: {out:?}");
            let out = run(spmdrun_over(transport, &["-n", "64", "--timeout", "60", &ring]));
            assert_eq!(out.code(), Some(0), "{transport}, 64 ranks under attack: {out:?}");
            let chain: String = (0..64).map(|r| format!("P{r}")).collect();
            assert!(out.stdout.contains(&chain), "{out:?}");
            jobs += 2;
        }
    }
    let report = common::finish(attacker);
    assert_eq!(report.code(), Some(0), "the attacker failed: {report:?}");
    let r = &report.stdout;
    assert!(count(r, "rounds:") > 100, "the attacker barely ran: {r}");
    let connected: usize = r
        .lines()
        .find(|l| l.starts_with("unix sockets"))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .expect("a count");
    assert_eq!(connected, 0, "the attacker connected to a job's socket: {r}");
    assert_eq!(count(r, "spmd files or directories opened:"), 0, "{r}");
    assert_eq!(count(r, "spmd processes looked into:"), 0, "{r}");
    assert!(jobs >= 4, "only {jobs} jobs ran under attack");
}
