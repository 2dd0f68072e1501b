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
