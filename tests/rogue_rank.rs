//! spmdrun believes no rank: a rank that lies on its control channel or
//! its status page (tests/programs/rogue) ends the job naming itself and
//! what it got wrong, or is shown as what it is, and nothing it wrote
//! reaches spmdrun's own lines as it was (terminal escapes, a line break,
//! a forged `spmdrun:` line, megabytes of text). Its flood of control
//! messages does not grow the agent of its host without bound.

mod common;

use std::time::{Duration, Instant};

use common::hosts::Hosts;
use common::{example, run, spmdrun, spmdrun_over};

/// spmdrun's own lines about rank 1.
fn about_rank_1(stderr: &str) -> Vec<&str> {
    stderr.lines().filter(|l| l.starts_with("spmdrun: rank 1 ")).collect()
}

/// Checks that every spmdrun line about rank 1 is printable text of at
/// most a few KiB, and that at least one contains `wanted`.
fn shown_safely(stderr: &str, wanted: &str, what: &str) {
    let lines = about_rank_1(stderr);
    assert!(
        lines.iter().any(|l| l.contains(wanted)),
        "{what}: no line with {wanted:?}: {stderr}"
    );
    for l in lines {
        assert!(!l.chars().any(char::is_control), "{what}: a control character in {l:?}");
        assert!(l.len() < 4096, "{what}: a line of {} bytes", l.len());
    }
}

#[test]
fn a_ranks_words_reach_spmdruns_lines_escaped_and_cut() {
    let rogue = example("spmd-rogue");
    let out = run(spmdrun(&["-n", "3", &rogue, "abort-text"]));
    assert_eq!(out.code(), Some(3), "{out:?}");
    shown_safely(
        &out.stderr,
        r"called abort(3): x\u{1b}[2J\u{1b}]0;PWNED\u{7} spmdrun: rank 0 (pid 1) panicked: forged; ending the job",
        "abort",
    );
    // The forged line is not one of spmdrun's (the rank printed nothing).
    assert!(
        !out.stderr.lines().any(|l| l.starts_with("spmdrun: rank 0 (pid 1)")),
        "{out:?}"
    );
    let out = run(spmdrun(&["-n", "3", &rogue, "panic-text"]));
    assert_eq!(out.code(), Some(101), "{out:?}");
    shown_safely(
        &out.stderr,
        r"panicked: x\u{1b}[2J\u{1b}]0;PWNED\u{7} spmdrun:",
        "panic",
    );
    let out = run(spmdrun(&["-n", "3", &rogue, "long-text"]));
    assert_eq!(out.code(), Some(3), "{out:?}");
    shown_safely(&out.stderr, "more bytes not shown)", "4 MiB abort message");
}

#[test]
fn a_rank_that_registers_a_bad_host_or_card_is_the_one_named() {
    let rogue = example("spmd-rogue");
    let out = run(spmdrun(&["-n", "3", &rogue, "bad-host"]));
    assert_eq!(out.code(), Some(1), "{out:?}");
    shown_safely(&out.stderr, r#"bad host: it registered "vmx\u{1b}[2J"#, "host");
    // Over shared memory a card needs a segment; over TCP an address. The
    // honest ranks never see the card (before, they failed on it and
    // blamed the launcher).
    for (transport, fault) in [
        ("shm", "no shared-memory segment, which this job needs"),
        ("tcp", "no TCP address, which this job needs"),
    ] {
        let out = run(spmdrun_over(transport, &["-n", "3", &rogue, "bad-card"]));
        assert_eq!(out.code(), Some(1), "{transport}: {out:?}");
        shown_safely(&out.stderr, &format!("bad card: it registered {fault}"), transport);
        assert!(!out.stderr.contains("launcher"), "{transport}: {out:?}");
    }
}

#[test]
fn a_status_page_that_says_what_cannot_be_is_reported_as_such() {
    let rogue = example("spmd-rogue");
    let out = run(spmdrun(&[
        "-n",
        "3",
        "--hang-report",
        "1",
        "--timeout",
        "4",
        &rogue,
        "bad-page",
    ]));
    assert_eq!(out.code(), Some(124), "{out:?}");
    assert!(
        out.stderr.contains("rank 1 (pid ",)
            && out
                .stderr
                .contains("has a status page that says what cannot be (field peer: rank 4294967294 in a job of 3)"),
        "{out:?}"
    );
    assert!(!out.stderr.contains("waits receive"), "{out:?}");
}

#[test]
fn a_wait_begun_in_the_future_is_reported_as_what_cannot_be_here_and_on_another_host() {
    // Rank 1 here, then on another host (whose times its agent converts):
    // there its page's wait on rank 0 was quoted as a wait "for 0.0 s".
    let hosts = Hosts::start(1);
    let rogue = example("spmd-rogue");
    let agent = hosts.launch_agent();
    for hostlist in ["localhost:3", "localhost:1,127.0.0.2:2"] {
        let out = run(spmdrun(&[
            "--launch-agent",
            &agent,
            "-H",
            hostlist,
            "--hang-report",
            "1",
            "--timeout",
            "6",
            &rogue,
            "future-page",
        ]));
        assert_eq!(out.code(), Some(124), "{hostlist}: {out:?}");
        assert!(
            out.stderr
                .contains("has a status page that says what cannot be (field since: a wait that starts 3"),
            "{hostlist}: {out:?}"
        );
        assert!(!out.stderr.contains("waits receive"), "{hostlist}: {out:?}");
    }
}

#[test]
fn a_rank_flooding_its_channel_does_not_grow_its_agent() {
    let hosts = Hosts::start(1);
    let rogue = example("spmd-rogue");
    let agent = hosts.launch_agent();
    let (child, pids, reader) = common::start_reporting_pids_with(
        &[
            "--launch-agent",
            &agent,
            "-H",
            "127.0.0.2:3",
            "-x",
            "ROGUE_SECONDS=15",
            &rogue,
            "flood",
        ],
        3,
        &[],
    );
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", pids[1])).expect("rank 1 runs");
    let agent_pid: i32 = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().nth(1))
        .and_then(|p| p.parse().ok())
        .expect("rank 1's parent");
    // The agent keeps at most 8 MiB waiting for ssh; reading the flood
    // unchecked, it grew by several MiB a second.
    let start = Instant::now();
    let mut most = 0;
    while start.elapsed() < Duration::from_secs(14) {
        match common::status_kib(agent_pid, "VmRSS") {
            Some(kib) => most = most.max(kib),
            None => break,
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let out = common::finish_reporting(child, reader);
    assert!(most > 0, "the agent was never seen: {out:?}");
    assert!(most < 40 << 10, "the agent grew to {most} KiB under the flood: {out:?}");
    assert_eq!(out.code(), Some(3), "{out:?}");
    assert!(out.stderr.contains("rank 1 (pid"), "{out:?}");
}

#[test]
fn a_rank_that_registers_a_pipe_as_its_wake_up_socket_is_the_one_named() {
    // Rank 1 on this machine (spmdrun takes its card), then on another
    // host (its agent does), each with rank 0 beside it. Before the
    // descriptor was checked, rank 0 stopped for ever in its 513th send,
    // writing to the pipe, and spmdrun called it busy.
    let hosts = Hosts::start(1);
    let rogue = example("spmd-rogue");
    let agent = hosts.launch_agent();
    for hostlist in ["localhost:2,127.0.0.2:1", "127.0.0.2:2,localhost:1"] {
        let out = run(spmdrun(&[
            "--launch-agent",
            &agent,
            "-H",
            hostlist,
            "--timeout",
            "60",
            &rogue,
            "bad-wake",
        ]));
        assert_eq!(out.code(), Some(1), "{hostlist}: {out:?}");
        shown_safely(
            &out.stderr,
            "bad card: its wake-up descriptor is not a datagram socket (a pipe)",
            hostlist,
        );
    }
    // A real wake-up socket, full, its flag made blocking: a ring never
    // waits on it (an eventfd's write could: its flag is shared with
    // whoever holds it), and the job completes.
    let out = run(spmdrun(&[
        "--launch-agent",
        &agent,
        "-H",
        "localhost:2,127.0.0.2:1",
        "--timeout",
        "60",
        &rogue,
        "full-wake",
    ]));
    assert_eq!(out.code(), Some(0), "{out:?}");
}

#[test]
fn over_tcp_a_rank_cannot_pass_for_another() {
    // Rank 1, which holds keys of its own pairs, connects to rank 0 as
    // rank 2 while the job starts. With one secret for the whole job rank
    // 0 took it as rank 2, and the job hung (or blamed the real rank 2).
    let rogue = example("spmd-rogue");
    let out = run(spmdrun_over("tcp", &["-n", "3", "--timeout", "60", &rogue, "impostor"]));
    assert_eq!(out.code(), Some(0), "{out:?}");
    assert!(
        out.stdout
            .contains("impostor: refused: authentication with rank 0 failed"),
        "{out:?}"
    );
    for from in [1, 2] {
        assert!(
            out.stdout.contains(&format!("rank 0 got {from} from rank {from}")),
            "{out:?}"
        );
    }
}
