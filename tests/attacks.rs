//! Nobody outside the job can stop it, join it or crash it: a second
//! user's attacker (tests/programs/attacker) looks for the job's sockets,
//! listeners, files and processes, connects to what it finds, floods,
//! trickles and squats names, while real jobs of 16 and 64 ranks run over
//! every transport; every job completes with correct results, and the
//! attacker reaches nothing of the job's. Over TCP, the ranks' listeners
//! are open while the job starts: the attacker connects to them and sends
//! garbage, a plausible frame, a trickle or nothing, and must get no
//! answer while the job goes on.

mod common;

use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{example, run, spmdrun_over};

/// Starts the attacker as the other user for `seconds`, from a copy the
/// other user can run (kept until the attacker is done with it).
fn start_attacker(seconds: u32) -> (std::process::Child, common::RunnableCopy) {
    let copy = common::runnable_by_anyone(&example("spmd-attacker"));
    let attacker = common::as_other_user(copy.path())
        .arg(seconds.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("setpriv runs the attacker");
    (attacker, copy)
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
    let (attacker, _copy) = start_attacker(20);
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
    // There is nothing to connect to: ranks talk over socket pairs and
    // memory spmdrun hands them, and no job names a socket.
    assert_eq!(
        count(r, "unix socket names new during the run:"),
        0,
        "a socket name appeared while jobs ran: {report:?}"
    );
    let connected: usize = r
        .lines()
        .find(|l| l.starts_with("connections to them"))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .expect("a count");
    assert_eq!(connected, 0, "the attacker connected to a job's socket: {r}");
    // Over TCP the attacker finds the ranks' listeners while jobs start
    // (it must have tried some, or the TCP case proves nothing), and none
    // of them ever answers it.
    let tcp_line = r
        .lines()
        .find(|l| l.starts_with("tcp listeners on loopback"))
        .expect("a tcp line");
    let tried: usize = tcp_line
        .split("tried ")
        .nth(1)
        .and_then(|t| t.split(',').next()?.parse().ok())
        .expect("a tried count");
    assert!(tried > 0, "the attacker never found a job's TCP listener: {r}");
    assert_eq!(
        count(r, "tcp listeners on loopback:"),
        0,
        "a listener answered: {report:?}"
    );
    assert_eq!(count(r, "spmd files or directories opened:"), 0, "{r}");
    assert_eq!(count(r, "spmd processes looked into:"), 0, "{r}");
    assert!(jobs >= 4, "only {jobs} jobs ran under attack");
}
