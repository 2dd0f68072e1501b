//! Receives only this rank could satisfy (from itself, or from anyone
//! while alone in a communicator): a blocking wait for one that was never
//! sent is an error (it would wait for ever), but a test, a `try_` call
//! and a timed wait are not: they say "not yet" or time out, as for any
//! other receive, and the receive completes once the rank sends.

use std::time::Duration;

use spmd::{Communicator, Error, Match, Request};

const SHORT: Duration = Duration::from_millis(20);

pub fn run(world: &Communicator) -> Result<(), Error> {
    let me = world.rank();
    let mut own = world.immediate_receive_with_tag::<u64>(me, 30)?;
    assert!(!own.test()?, "a test of a receive from itself not sent yet");
    assert_eq!(spmd::test_any(&mut [&mut own])?, None);
    assert!(!spmd::test_all(&mut [&mut own])?);
    assert!(!own.wait_timeout(SHORT)?);
    assert_eq!(spmd::wait_any_timeout(&mut [&mut own], SHORT)?, None);
    assert!(spmd::wait_some_timeout(&mut [&mut own], SHORT)?.is_empty());
    timed_out(world.receive_with_tag_timeout::<u64>(me, 31, SHORT), "receive_timeout");
    timed_out(
        world.probe_timeout(Match::source(me).with_tag(31), SHORT),
        "probe_timeout",
    );
    // A wait on it and on a receive another rank completes ends with the
    // other: the one from itself does not fail it.
    if world.size() > 1 {
        let prev = (me + world.size() - 1) % world.size();
        let next = (me + 1) % world.size();
        let mut other = world.immediate_receive_with_tag::<u64>(prev, 30)?;
        let sent = world.immediate_send_with_tag(&(me as u64), next, 30)?;
        assert_eq!(spmd::wait_any(&mut [&mut own, &mut other])?, 1);
        assert_eq!(other.wait()?.0, prev as u64);
        sent.wait()?;
    }
    // A wait with no end on it alone, or on it and another like it, would
    // wait for ever: an error, and the receives go on.
    let mut also_own = world.immediate_receive_with_tag::<u64>(me, 32)?;
    never_sent(spmd::wait_any(&mut [&mut own]), "wait_any");
    never_sent(spmd::wait_some(&mut [&mut own, &mut also_own]), "wait_some");
    // A request's own wait, too (the receive is withdrawn).
    let never = world.immediate_receive_with_tag::<u64>(me, 33)?;
    never_sent(never.wait(), "a request's wait");
    // It was a receive like any other all along.
    world.send_with_tag(&7u64, me, 30)?;
    world.send_with_tag(&8u64, me, 32)?;
    assert_eq!(spmd::wait_some(&mut [&mut own, &mut also_own])?, [0, 1]);
    assert_eq!(own.wait()?.0, 7);
    assert_eq!(also_own.wait()?.0, 8);

    // Alone in a communicator, an any-source receive: the same.
    let alone = world.split(Some(me as u32), 0)?.expect("a colour");
    let mut any = alone.immediate_receive_matching::<u64>(Match::any())?;
    assert!(!any.test()?, "a test of an any-source receive alone");
    assert!(!any.wait_timeout(SHORT)?);
    timed_out(
        alone.receive_matching_timeout::<u64>(Match::tag(3), SHORT).map(|_| ()),
        "any-source receive_timeout alone",
    );
    alone.send(&9u64, 0)?;
    assert_eq!(any.wait()?.0, 9);
    // A blocking receive that only this rank could satisfy, never sent,
    // is still an error at once.
    never_sent(alone.receive::<u64>(0), "receive from itself");
    never_sent(alone.receive_matching::<u64>(Match::any()), "any-source receive alone");
    let mut any = alone.immediate_receive_matching::<u64>(Match::any())?;
    never_sent(spmd::wait_any(&mut [&mut any]), "wait_any alone");
    alone.send(&10u64, 0)?;
    assert_eq!(any.wait()?.0, 10);
    drop(alone);
    world.barrier()?;
    if me == 0 {
        println!("ok receives only this rank could satisfy: tests and timed waits wait, blocking ones fail");
    }
    Ok(())
}

/// Checks that `result` is the error of a wait for a message only this
/// rank could send.
fn never_sent<T: std::fmt::Debug>(result: Result<T, Error>, what: &str) {
    match result {
        Err(Error::InvalidArgument(m)) => assert!(m.contains("only it could send"), "{what}: {m}"),
        other => panic!("{what}: {other:?}"),
    }
}

/// Checks that `result` is a timeout.
fn timed_out<T: std::fmt::Debug>(result: Result<T, Error>, what: &str) {
    assert!(matches!(result, Err(Error::Timeout { .. })), "{what}: {result:?}");
}
