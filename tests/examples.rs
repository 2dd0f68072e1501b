//! The examples, run for real through spmdrun with 1, 2, 3, 4 and 8 ranks.

mod common;

use common::{example, run, spmdrun};

const SIZES: [usize; 5] = [1, 2, 3, 4, 8];

#[test]
fn ring_passes_the_message_around() {
    for n in SIZES {
        let out = run(spmdrun(&["-n", &n.to_string(), "--timeout", "60", &example("ring")]));
        assert_eq!(out.code(), Some(0), "n={n}: {out:?}");
        let chain: String = (0..n).map(|r| format!("P{r}")).collect();
        let last = format!("Processor 0 received message \"{chain}\" from rank {}", n - 1);
        assert!(
            out.lines().contains(&last.as_str()),
            "n={n}: missing {last:?} in {out:?}"
        );
        for r in 0..n {
            let hello = format!("I am rank {r} of {n} on node ");
            assert_eq!(
                out.lines().iter().filter(|l| l.starts_with(&hello)).count(),
                1,
                "n={n}: rank {r} did not introduce itself once: {out:?}"
            );
        }
    }
}

#[test]
fn reduction_sums_squares() {
    for n in SIZES {
        let out = run(spmdrun(&["-n", &n.to_string(), &example("reduction")]));
        assert_eq!(out.code(), Some(0), "n={n}: {out:?}");
        assert!(
            out.lines()
                .contains(&"sum of squares 1..=10000000 = 333333383333335000000"),
            "n={n}: {out:?}"
        );
        assert!(
            out.lines().contains(&"allreduce gave every rank the same total: true"),
            "n={n}: {out:?}"
        );
    }
    // Fewer items than ranks, and none at all.
    for (items, want) in [(3u64, 14u64), (0, 0)] {
        let out = run(spmdrun(&["-n", "8", &example("reduction"), &items.to_string()]));
        assert!(
            out.stdout.contains(&format!("sum of squares 1..={items} = {want}")),
            "{out:?}"
        );
    }
}

#[test]
fn reduction_rejects_a_bad_argument_with_abort() {
    let out = run(spmdrun(&["-n", "2", &example("reduction"), "lots"]));
    assert_eq!(out.code(), Some(2), "{out:?}");
    assert!(out.stderr.contains("called abort(2)"), "{out:?}");
}

#[test]
fn pi_is_close() {
    for n in [1, 3, 8] {
        let out = run(spmdrun(&["-n", &n.to_string(), &example("pi"), "1000000"]));
        assert_eq!(out.code(), Some(0), "{out:?}");
        assert!(out.stdout.starts_with("pi = 3.14159265"), "n={n}: {out:?}");
    }
}

#[test]
fn taskfarm_returns_results_in_task_order() {
    for n in [1, 2, 4, 8] {
        let out = run(spmdrun(&["-n", &n.to_string(), &example("taskfarm"), "27", "20"]));
        assert_eq!(out.code(), Some(0), "{out:?}");
        let fibs: Vec<&str> = out.lines().into_iter().filter(|l| l.starts_with("fib(")).collect();
        let want = [
            (27, 196418),
            (26, 121393),
            (25, 75025),
            (24, 46368),
            (23, 28657),
            (22, 17711),
            (21, 10946),
            (20, 6765),
        ];
        assert_eq!(fibs.len(), want.len(), "n={n}: {out:?}");
        for (line, (k, v)) in fibs.iter().zip(want) {
            assert!(line.starts_with(&format!("fib({k}) = {v} (rank ")), "n={n}: {line}");
            if n > 1 {
                assert!(!line.ends_with("(rank 0)"), "n={n}: the master computed a task: {line}");
            }
        }
    }
}

/// The value in the row for `size` of an OSU-style table.
fn row(out: &common::Finished, size: u64) -> f64 {
    out.lines()
        .iter()
        .find_map(|l| match l.split_whitespace().collect::<Vec<_>>()[..] {
            [s, v] if s == size.to_string() => v.parse().ok(),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no row for {size} in {out:?}"))
}

#[test]
fn benchmarks_print_osu_tables() {
    let cases: [(&str, usize, &[&str], &str, u64); 11] = [
        ("osu_latency", 2, &["4096"], "# Size            Latency (us)", 4096),
        (
            "osu_latency",
            2,
            &["4096", "serde"],
            "# Size            Latency (us)",
            4096,
        ),
        ("osu_bw", 2, &["65536"], "# Size        Bandwidth (MB/s)", 65536),
        (
            "osu_allreduce",
            3,
            &["4096", "4", "20"],
            "# Size         Avg Latency(us)",
            4096,
        ),
        (
            "osu_allreduce",
            4,
            &["262144", "262144", "5"],
            "# Size         Avg Latency(us)",
            262144,
        ),
        ("osu_barrier", 8, &["50"], "# Size         Avg Latency(us)", 0),
        (
            "osu_reduce",
            5,
            &["65536", "1024", "10"],
            "# Size         Avg Latency(us)",
            65536,
        ),
        (
            "osu_allgather",
            5,
            &["65536", "1024", "10"],
            "# Size         Avg Latency(us)",
            65536,
        ),
        (
            "osu_alltoall",
            5,
            &["65536", "1024", "10"],
            "# Size         Avg Latency(us)",
            65536,
        ),
        (
            "osu_iallreduce",
            3,
            &["65536", "1024", "10"],
            "# Size         Avg Latency(us)",
            65536,
        ),
        (
            "osu_bcast",
            5,
            &["65536", "1024", "10"],
            "# Size         Avg Latency(us)",
            65536,
        ),
    ];
    for (name, n, args, header, size) in cases {
        let program = example(name);
        let mut argv = vec![
            "-n".to_string(),
            n.to_string(),
            "--timeout".into(),
            "120".into(),
            program,
        ];
        argv.extend(args.iter().map(|a| a.to_string()));
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        let out = run(spmdrun(&argv));
        assert_eq!(out.code(), Some(0), "{name} {args:?}: {out:?}");
        assert!(out.lines().contains(&header), "{name}: no header {header:?} in {out:?}");
        assert!(row(&out, size) > 0.0, "{name} {args:?}: {out:?}");
    }
    // Several pairs: a third column, the message rate, which is the
    // bandwidth over the size; an odd number of ranks is refused.
    let out = run(spmdrun(&["-n", "4", "--timeout", "120", &example("osu_mbw_mr"), "64"]));
    assert_eq!(out.code(), Some(0), "{out:?}");
    assert!(out.stdout.contains("(2 pairs)"), "{out:?}");
    let rows: Vec<Vec<f64>> = out
        .lines()
        .iter()
        .filter(|l| !l.starts_with('#'))
        .map(|l| l.split_whitespace().map(|v| v.parse().expect("a number")).collect())
        .collect();
    assert_eq!(rows.len(), 7, "sizes 1 to 64: {out:?}");
    for r in &rows {
        let expected = r[2] * r[0] / 1e6;
        assert!(
            r[1] > 0.0 && (r[1] - expected).abs() <= 0.01 + expected * 1e-3,
            "{r:?}: {out:?}"
        );
    }
    let out = run(spmdrun(&["-n", "3", &example("osu_mbw_mr"), "8"]));
    assert_eq!(out.code(), Some(1), "{out:?}");
    assert!(
        out.stderr.contains("osu_mbw_mr needs an even number of ranks"),
        "{out:?}"
    );
    let out = run(spmdrun(&["-n", "4", &example("launch")]));
    assert_eq!(out.code(), Some(0), "{out:?}");
    let out = run(spmdrun(&["-n", "3", &example("idle_cpu"), "0.2"]));
    assert_eq!(out.code(), Some(0), "{out:?}");
    assert!(
        out.stdout.contains("2 ranks blocked in a receive for 0.2 s used"),
        "{out:?}"
    );
}

#[test]
fn a_bad_bench_repeat_ends_the_job_with_a_message_naming_it() {
    for (name, args) in [
        ("osu_latency", vec!["8"]),
        ("osu_bw", vec!["8"]),
        ("osu_barrier", vec!["10"]),
    ] {
        let program = example(name);
        let mut argv = vec!["-n", "2", program.as_str()];
        argv.extend(args.iter().copied());
        let mut cmd = spmdrun(&argv);
        cmd.env("BENCH_REPEAT", "0");
        let out = run(cmd);
        assert_eq!(out.code(), Some(2), "{name}: {out:?}");
        assert!(
            out.stderr.contains("called abort(2)")
                && out
                    .stderr
                    .contains("BENCH_REPEAT must be a whole number of at least 1, got \"0\""),
            "{name}: {out:?}"
        );
    }
}

#[test]
fn bad_example_arguments_end_the_job_with_a_message_naming_them() {
    for (name, args, says) in [
        ("osu_latency", vec!["abc"], "max-bytes must be a number, got \"abc\""),
        ("osu_latency", vec!["8", "fast"], "may only be \"serde\", got \"fast\""),
        (
            "osu_allreduce",
            vec!["8", "4", "many"],
            "iterations must be a number, got \"many\"",
        ),
        ("pi", vec!["-5"], "intervals must be a number, got \"-5\""),
        ("taskfarm", vec!["30", "x"], "smallest must be a number, got \"x\""),
    ] {
        let program = example(name);
        let mut argv = vec!["-n", "2", program.as_str()];
        argv.extend(args.iter().copied());
        let out = run(spmdrun(&argv));
        assert_eq!(out.code(), Some(2), "{name} {args:?}: {out:?}");
        let report: Vec<&str> = out.stderr.lines().filter(|l| l.starts_with("spmdrun: ")).collect();
        assert_eq!(report.len(), 1, "{out:?}");
        assert!(
            report[0].contains("called abort(2)") && report[0].contains(says),
            "{name}: {}",
            report[0]
        );
    }
}
