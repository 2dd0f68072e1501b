//! Ranks that fail on purpose, for the launcher's failure tests, and the
//! checks of a program started without a launcher.
//!
//! `fail HOW`: every rank prints `pid RANK PID`, joins a barrier, then the
//! last rank fails in the way HOW names while the others wait in a receive
//! that nothing will match (from the failing rank itself, for `error`).
//! `fail idle` has nobody fail; `fail idle-late` neither, rank 1 computing
//! for 5 s before it waits.

use std::io::Write;

use spmd::{Error, Match, op};

pub fn run(mode: &str, args: &[String]) -> Option<Result<(), Error>> {
    match mode {
        "fail" => Some(fail(args.first().map(String::as_str).unwrap_or("idle"))),
        "alone" => Some(alone()),
        "children" => Some(children()),
        _ => None,
    }
}

fn fail(how: &str) -> Result<(), Error> {
    let world = spmd::init()?;
    let (me, n) = (world.rank(), world.size());
    println!("pid {me} {}", std::process::id());
    let _ = std::io::stdout().flush();
    world.barrier()?;
    if how == "stream" && n >= 2 {
        // Ranks 0 and 1 move 64 MiB messages until somebody is killed.
        let big = vec![7u8; 64 << 20];
        let mut buf = vec![0u8; 64 << 20];
        loop {
            match me {
                0 => world.send_slice(&big, 1)?,
                1 => {
                    world.receive_into(&mut buf, 0)?;
                }
                _ => break,
            }
        }
    }
    if me == n - 1 {
        match how {
            "panic" => panic!("deliberate panic on rank {me}"),
            "exit" => {
                // The moment of death, for scripts/failure-latency.
                let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
                println!("dying {}", now.map_or(0, |d| d.as_nanos()));
                let _ = std::io::stdout().flush();
                std::process::exit(3)
            }
            // A child that keeps the rank's stdout and stderr open (a
            // helper process, a shell's background job) as the rank dies.
            "exit-leaving-child" => {
                let child = std::process::Command::new("sleep")
                    .arg("30")
                    .spawn()
                    .expect("starting sleep");
                println!("child {}", child.id());
                eprintln!("last words of rank {me}");
                let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
                println!("dying {}", now.map_or(0, |d| d.as_nanos()));
                let _ = std::io::stdout().flush();
                std::process::exit(3)
            }
            "abort" => world.abort(5),
            // Codes a process cannot exit with, or that read as success.
            "abort-0" => world.abort(0),
            "abort-256" => world.abort(256),
            "error" => return Err(Error::InvalidArgument(format!("deliberate error on rank {me}"))),
            // The others' barrier messages reach it first (over sockets).
            "error-after-barrier" => {
                std::thread::sleep(std::time::Duration::from_millis(300));
                return Err(Error::InvalidArgument(format!("deliberate error on rank {me}")));
            }
            "no-finalize" if n > 1 => std::process::exit(0),
            _ => {}
        }
    }
    if how == "error-after-barrier" {
        world.barrier()?;
    }
    // Rank 1 computes for 5 s first: no deadlock before then, whenever a
    // test stops it.
    if how == "idle-late" && me == 1 {
        std::thread::sleep(std::time::Duration::from_secs(5));
    }
    // Wait for a message nobody sends; the launcher ends this rank. After
    // an error, wait on the failing rank itself: finding it gone must not
    // make this rank the one the report blames.
    let from = if how.starts_with("error") {
        Match::source(n - 1)
    } else {
        Match::any()
    };
    let _: u8 = world.receive_matching(from.with_tag(999)).map(|(v, _)| v)?;
    world.finalize()
}

/// Without spmdrun: a job of one rank where everything still works.
fn alone() -> Result<(), Error> {
    let world = spmd::init()?;
    assert_eq!((world.rank(), world.size()), (0, 1));
    assert!(matches!(spmd::init(), Err(Error::AlreadyInitialized)));
    world.barrier()?;
    assert_eq!(world.allreduce(&21u32, &op::Sum)?, 21);
    assert_eq!(world.gather(&"x".to_string(), 0)?, Some(vec!["x".to_string()]));
    world.send(&"to myself", 0)?;
    assert_eq!(world.receive::<String>(0)?, "to myself");
    assert!(matches!(world.receive::<u8>(0), Err(Error::InvalidArgument(_))));
    assert!(matches!(
        world.send(&1, 1),
        Err(Error::InvalidRank { rank: 1, size: 1 })
    ));
    println!("alone: all checks passed");
    world.finalize()
}

/// A program a rank starts inherits no descriptor of the job (its control
/// channel) and no secret; if it calls `init` itself, it is told that it is
/// not part of the job.
fn children() -> Result<(), Error> {
    let world = spmd::init()?;
    // On MPI the library's own descriptors and variables are its business;
    // a program the rank starts must still not take itself for a rank (an
    // MPICH one would wait for ever in MPI_Init on the rank's socket).
    let on_mpi = world.backend() == spmd::Backend::Mpi;
    if !on_mpi {
        let listing = std::process::Command::new("sh")
            .args(["-c", "for f in /proc/self/fd/*; do readlink $f; done; env"])
            .output()
            .expect("sh runs");
        let text = String::from_utf8_lossy(&listing.stdout);
        assert!(!text.contains("socket:"), "a child inherited a socket: {text}");
        assert!(!text.contains("memfd:"), "a child inherited shared memory: {text}");
        assert!(!text.contains("SECRET"), "a child sees a secret: {text}");
    }
    let me = std::env::current_exe().expect("own path");
    let nested = std::process::Command::new(me).arg("nested").output().expect("runs");
    let said = String::from_utf8_lossy(&nested.stderr);
    assert!(!nested.status.success(), "a nested init succeeded: {said}");
    let refusal = if on_mpi {
        "a program that a rank starts is not a rank"
    } else {
        "does not lead to spmdrun"
    };
    assert!(said.contains(refusal), "{said}");
    world.barrier()?;
    if world.rank() == 0 {
        println!("children: all checks passed");
    }
    world.finalize()
}
