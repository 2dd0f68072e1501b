//! spmdrun's command line: each mistake named in one line, and hostfiles and `--host` placing the ranks.

mod common;

use common::{example, run, spmdrun};

/// Runs spmdrun with a bad command line: it must fail with status 2 and a
/// single line that mentions `what`.
fn rejected(args: &[&str], what: &str) {
    let out = run(spmdrun(args));
    assert_eq!(out.code(), Some(2), "{args:?}: {out:?}");
    let lines: Vec<&str> = out.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{args:?}: not one line: {out:?}");
    assert!(lines[0].starts_with("spmdrun: "), "{args:?}: {}", lines[0]);
    assert!(
        lines[0].contains(what),
        "{args:?}: {:?} does not mention {what:?}",
        lines[0]
    );
    assert!(out.stdout.is_empty(), "{args:?}: {out:?}");
}

#[test]
fn bad_command_lines_get_one_line_errors() {
    rejected(&["-n", "0", "true"], "-n");
    rejected(&["-n", "two", "true"], "two");
    rejected(&["-n", "2"], "PROGRAM");
    rejected(&["-n", "2", "/no/such/program"], "no such file");
    rejected(&["-n", "2", "no-such-program-anywhere"], "not found in PATH");
    let plain = std::env::temp_dir().join(format!("spmd-not-executable-{}", std::process::id()));
    std::fs::write(&plain, "echo hi\n").expect("writing a temp file");
    rejected(&["-n", "2", &plain.display().to_string()], "not an executable");
    let _ = std::fs::remove_file(&plain);
    rejected(&["-n", "2", "-x", "1BAD=x", "true"], "-x");
    rejected(&["-n", "2", "-x", "=x", "true"], "-x");
    rejected(&["-n", "2", "-x", "NOT_SET_ANYWHERE_42", "true"], "not set");
    rejected(&["-n", "2", "-x", "SPMD_RANK=3", "true"], "SPMD_");
    rejected(&["-n", "2", "--wdir", "/no/such/dir", "true"], "--wdir");
    rejected(&["-n", "2", "--timeout", "-1", "true"], "--timeout");
    rejected(
        &["-n", "2", "--timeout", "1e300", "true"],
        "--timeout 1e300: more than 999999999 seconds",
    );
    rejected(
        &["-n", "2", "--timeout", "1e-300", "true"],
        "--timeout 1e-300: less than a millisecond",
    );
    rejected(
        &["-n", "2", "--hang-report", "0.0001", "true"],
        "--hang-report 1e-4: less than a millisecond",
    );
}

#[test]
fn each_mistake_is_named_for_what_it_is() {
    rejected(&["--tag-outptu", "-n", "2", "hostname"], "--tag-outptu");
    rejected(&["-n", "3", "-np", "2", "hostname"], "cannot be used multiple times");
    rejected(&["-n", "2", "--wdir", "/etc/hostname", "true"], "not a directory");
    rejected(&["-n", "2", "--wdir", "/no/such/dir", "true"], "no such directory");
    rejected(&["-n", "2", "-x", "SPMD_SINGLE_COPY=on", "true"], "SPMD_SINGLE_COPY");
    rejected(&["-n", "2", "-x", "SPMD_WAIT=fast", "true"], "SPMD_WAIT");
    rejected(&["-n", "2", "/"], "it is a directory");
    // Attached values, and the documented user settings through -x.
    let out = run(spmdrun(&["-n3", "-x", "SPMD_TRANSPORT=socket", &example("ring")]));
    assert_eq!(out.code(), Some(0), "{out:?}");
    assert!(out.stdout.contains("\"P0P1P2\""), "{out:?}");
    let out = run(spmdrun(&["-n3", "-x", "SPMD_SINGLE_COPY=off", &example("ring")]));
    assert_eq!(out.code(), Some(0), "{out:?}");
    // The help names every variable a rank gets and the exit statuses.
    let help = run(spmdrun(&["--help"]));
    assert_eq!(help.code(), Some(0), "{help:?}");
    for word in [
        "SPMD_NODE",
        "SPMD_TRANSPORT",
        "SPMD_WAIT",
        "SPMD_SINGLE_COPY",
        "Exit status",
        "124",
        "125",
        "--hang-report",
    ] {
        assert!(help.stdout.contains(word), "--help does not mention {word}");
    }
    assert!(
        help.stdout
            .contains("Usage: spmdrun [-n N] [OPTIONS] PROGRAM [ARGS]..."),
        "{}",
        help.stdout
    );
}

#[test]
fn hostfiles_place_ranks_and_bad_ones_name_file_and_line() {
    let root = env!("CARGO_MANIFEST_DIR");
    for file in ["hostfiles/localhost", "hostfiles/mpich-style"] {
        let path = format!("{root}/{file}");
        let out = run(spmdrun(&["-n", "4", "--hostfile", &path, &example("ring")]));
        assert_eq!(out.code(), Some(0), "{file}: {out:?}");
        assert!(out.stdout.contains("received message \"P0P1P2P3\""), "{out:?}");
        rejected(&["-n", "5", "--hostfile", &path, "true"], "--oversubscribe");
        let out = run(spmdrun(&["-n", "5", "--oversubscribe", "--hostfile", &path, "true"]));
        assert_eq!(out.code(), Some(0), "{out:?}");
    }
    // This machine's IPv6 address, bare or in brackets with a count.
    let v6 = std::env::temp_dir().join(format!("spmd-v6-hostfile-{}", std::process::id()));
    std::fs::write(&v6, "::1 slots=2\n[::1]:2\n").expect("writing a hostfile");
    let v6_path = v6.display().to_string();
    let out = run(spmdrun(&["-n", "4", "--hostfile", &v6_path, &example("ring")]));
    let _ = std::fs::remove_file(&v6);
    assert_eq!(out.code(), Some(0), "::1: {out:?}");
    assert!(out.stdout.contains("received message \"P0P1P2P3\""), "{out:?}");
    let bad = std::env::temp_dir().join(format!("spmd-bad-hostfile-{}", std::process::id()));
    std::fs::write(&bad, "# two hosts\nlocalhost slots=2\nlocalhost slots=lots\n").expect("writing a hostfile");
    let shown = bad.display().to_string();
    rejected(
        &["-n", "2", "--hostfile", &shown, "true"],
        &format!("{shown}:3: slots \"lots\""),
    );
    // Bytes that are not UTF-8: any in a comment (Latin-1 here), none in a
    // host line.
    std::fs::write(&bad, b"# Z\xfcrich\nlocalhost slots=2\n").expect("writing a hostfile");
    let out = run(spmdrun(&["-n", "2", "--hostfile", &shown, &example("ring")]));
    assert_eq!(out.code(), Some(0), "a Latin-1 comment: {out:?}");
    std::fs::write(&bad, b"localhost slots=1\nz\xfcrich slots=1\n").expect("writing a hostfile");
    rejected(
        &["-n", "2", "--hostfile", &shown, "true"],
        &format!("{shown}:2: not UTF-8 text (byte 2 of the line)"),
    );
    // Another host is reached (here through a launch agent that fails at
    // once, so that no packet leaves the machine) only once a rank lands
    // on it, by slot or round the hosts; its failure names file:line.
    let unreachable = |args: &[&str]| {
        let mut all = vec!["--launch-agent", "false"];
        all.extend_from_slice(args);
        let out = run(spmdrun(&all));
        assert_eq!(out.code(), Some(1), "{args:?}: {out:?}");
        assert!(
            out.stderr.contains(&format!(
                "cannot start the job: 1 of 1 hosts failed: host elsewhere.example ({shown}:2): the connection closed"
            )),
            "{args:?}: {out:?}"
        );
    };
    std::fs::write(&bad, "localhost slots=1\nelsewhere.example slots=2\n").expect("writing a hostfile");
    let out = run(spmdrun(&[
        "--launch-agent",
        "false",
        "-n",
        "1",
        "--hostfile",
        &shown,
        "true",
    ]));
    assert_eq!(out.code(), Some(0), "{out:?}");
    unreachable(&["-n", "2", "--hostfile", &shown, "true"]);
    std::fs::write(&bad, "localhost slots=2\nelsewhere.example slots=2\n").expect("writing a hostfile");
    let out = run(spmdrun(&[
        "--launch-agent",
        "false",
        "-n",
        "2",
        "--hostfile",
        &shown,
        "true",
    ]));
    assert_eq!(out.code(), Some(0), "{out:?}");
    unreachable(&["-n", "2", "--map-by", "node", "--hostfile", &shown, "true"]);
    // max_slots holds even with --oversubscribe, and the error names both
    // counts.
    std::fs::write(&bad, "localhost slots=1 max_slots=2\n").expect("writing a hostfile");
    let out = run(spmdrun(&["-n", "2", "--oversubscribe", "--hostfile", &shown, "true"]));
    assert_eq!(out.code(), Some(0), "{out:?}");
    rejected(
        &["-n", "3", "--oversubscribe", "--hostfile", &shown, "true"],
        "-n 3 is more ranks than the hosts' max_slots allow (2 in all)",
    );
    std::fs::write(&bad, "localhost slots=2 max_slots=1\n").expect("writing a hostfile");
    rejected(
        &["-n", "1", "--hostfile", &shown, "true"],
        &format!("{shown}:1: slots=2 is more than max_slots=1"),
    );
    let _ = std::fs::remove_file(&bad);
    rejected(
        &["-n", "2", "--hostfile", "/no/such/hostfile", "true"],
        "/no/such/hostfile",
    );
}

#[test]
fn hosts_on_the_command_line_and_ranks_per_slot() {
    // --host, with slots after ':' or one per mention; without -n, one
    // rank per slot.
    for hosts in ["localhost:3", "localhost,localhost,127.0.0.1", "[::1]:2,::1"] {
        let out = run(spmdrun(&["--host", hosts, &example("ring")]));
        assert_eq!(out.code(), Some(0), "{hosts}: {out:?}");
        assert!(out.stdout.contains("received message \"P0P1P2\""), "{hosts}: {out:?}");
    }
    let out = run(spmdrun(&["-H", "localhost:2", "-n", "2", &example("ring")]));
    assert_eq!(out.code(), Some(0), "{out:?}");
    rejected(
        &["-H", "localhost:2", "-n", "3", "true"],
        "-n 3 is more ranks than the 2 slots of the hosts; add --oversubscribe",
    );
    rejected(&["-H", "localhost:2,,x", "true"], "--host entry 2");
    rejected(&["-H", "localhost:0", "true"], "must be at least 1");
    rejected(&["--map-by", "core", "-n", "2", "true"], "--map-by \"core\"");
    let root = env!("CARGO_MANIFEST_DIR");
    rejected(
        &[
            "-H",
            "localhost",
            "--hostfile",
            &format!("{root}/hostfiles/localhost"),
            "true",
        ],
        "cannot be used with",
    );
    // Without -n and without hosts: one rank per core this process may use.
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let out = run(spmdrun(&["printenv", "SPMD_SIZE"]));
    assert_eq!(out.code(), Some(0), "{out:?}");
    let sizes: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(sizes.len(), cores, "{out:?}");
    assert!(sizes.iter().all(|s| *s == cores.to_string()), "{out:?}");
}

#[test]
fn an_unknown_transport_is_a_clear_error() {
    let mut cmd = spmdrun(&["-n", "2", &example("ring")]);
    cmd.env("SPMD_TRANSPORT", "carrier-pigeon");
    let out = run(cmd);
    assert_ne!(out.code(), Some(0), "{out:?}");
    assert!(
        out.stderr.contains("SPMD_TRANSPORT") && out.stderr.contains("carrier-pigeon"),
        "the error names the variable and the value: {out:?}"
    );
    let report: Vec<&str> = out.stderr.lines().filter(|l| l.starts_with("spmdrun: ")).collect();
    assert_eq!(report.len(), 1, "{out:?}");
}
