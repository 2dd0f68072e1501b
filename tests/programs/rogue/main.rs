//! A rank that lies to spmdrun, for the tests of what spmdrun believes
//! (tests/rogue_rank.rs): rank 1 does what `spmd-rogue CASE` says, through
//! its own control channel and status page where the public API would not
//! let it; the other ranks are honest and wait in `init` or a barrier.
//!
//! - `abort-text`, `panic-text`: an abort's message and a panic's text
//!   with terminal escapes, a carriage return and a line of its own that
//!   starts like spmdrun's;
//! - `long-text`: an abort whose message is 4 MiB long;
//! - `bad-host`: registers a host name with escapes in it;
//! - `bad-card`: registers a card with nothing on it (no segment over
//!   shared memory, no address over TCP);
//! - `bad-page`: writes a wait on rank 4294967294, begun an hour from now,
//!   on its status page, and sleeps; `future-page` the same with a wait
//!   on rank 0;
//! - `bad-wake` (in a job that spans hosts, with rank 0 on rank 1's
//!   host): rank 1 registers a pipe that no one reads as its wake-up
//!   socket and holds its doorbell at "wake me through it"
//!   (`relay.rs`); rank 0 sends it 2,000 messages; `full-wake` the same
//!   with a real wake-up socket, full and made blocking;
//! - `impostor` (over TCP, 3 ranks): rank 1 connects to rank 0 as rank 2
//!   with its own keys while the job starts (`impostor.rs`), then every
//!   rank sends its rank to rank 0, which prints what it got;
//! - `flood`: every rank prints `pid RANK PID`; rank 1 joins, then sends
//!   `Finalized` on its channel as fast as it can for `ROGUE_SECONDS`
//!   (default 10) seconds, then exits 3.

mod impostor;
mod relay;

use std::time::{Duration, Instant};

use spmd::wire::status::{Page, Phase, WaitOp, Waiting, now_ns};
use spmd::wire::{Card, Channel, ControlMessage};

/// The text a rank hopes spmdrun prints as it is.
const FORGERY: &str = "x\u{1b}[2J\u{1b}]0;PWNED\u{7}\r\nspmdrun: rank 0 (pid 1) panicked: forged\n";

fn main() {
    let case = std::env::args().nth(1).unwrap_or_default();
    let rank: usize = std::env::var("SPMD_RANK")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(0);
    if case == "flood" {
        // For the test, which watches rank 1's parent (its host's agent).
        println!("pid {rank} {}", std::process::id());
    }
    if case == "impostor" {
        if rank == 1 {
            impostor::pass_for_rank_2();
        }
        let world = spmd::init().expect("init");
        if rank == 0 {
            for from in 1..world.size() {
                let got: u64 = world.receive(from).expect("receive");
                println!("rank 0 got {got} from rank {from}");
            }
        } else {
            world.send(&(rank as u64), 0).expect("send");
        }
        world.finalize().expect("finalize");
        relay::finish();
        return;
    }
    if case == "bad-wake" || case == "full-wake" {
        if rank == 1 {
            let wake = match case.as_str() {
                "bad-wake" => relay::unread_pipe,
                _ => relay::full_blocking_socket,
            };
            relay::register_as_wake(1, wake);
        }
        let world = spmd::init().expect("init");
        for i in 0..2000u64 {
            match rank {
                0 => {
                    world.send(&i, 1).expect("send");
                    // Time for rank 1's thread to say "asleep" again.
                    std::thread::sleep(Duration::from_micros(200));
                }
                1 => assert_eq!(world.receive::<u64>(0).expect("receive"), i),
                _ => break,
            }
        }
        world.barrier().expect("barrier");
        world.finalize().expect("finalize");
        relay::finish();
        return;
    }
    if rank != 1 {
        // Honest: joins (waiting for rank 1 as long as it takes) and waits.
        let world = spmd::init().expect("init");
        world.barrier().expect("barrier");
        world.finalize().expect("finalize");
        return;
    }
    match case.as_str() {
        "abort-text" => spmd::init().expect("init").abort_with_message(3, FORGERY),
        "panic-text" => {
            let _world = spmd::init().expect("init");
            panic!("{FORGERY}");
        }
        "long-text" => spmd::init().expect("init").abort_with_message(3, &"L".repeat(4 << 20)),
        "bad-host" => {
            let (mut channel, _) = join();
            register(&mut channel, &format!("vm{FORGERY}"), Card::default());
        }
        "bad-card" => {
            let (mut channel, _) = join();
            register(&mut channel, "vm", Card::default());
        }
        "bad-page" | "future-page" => {
            let (_channel, page) = join();
            page.set_phase(Phase::Running);
            let waiting = Waiting {
                op: WaitOp::Receive,
                peer: Some(if case == "bad-page" { 4_294_967_294 } else { 0 }),
                tag: Some(7),
                context: 0,
                call: 0,
                sig: 0,
                since_ns: now_ns() + 3_600_000_000_000,
                until_ns: 0,
            };
            page.set_waiting(&waiting, 0, 0);
            std::thread::sleep(Duration::from_secs(60));
        }
        "flood" => {
            let (mut channel, _) = join();
            let seconds = std::env::var("ROGUE_SECONDS")
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(10);
            let until = Instant::now() + Duration::from_secs(seconds);
            while Instant::now() < until {
                if channel.send(&ControlMessage::Finalized, &[]).is_err() {
                    break;
                }
            }
            std::process::exit(3);
        }
        other => panic!("unknown case {other:?}"),
    }
    // spmdrun ends the job; the rank waits for that.
    std::thread::sleep(Duration::from_secs(60));
}

/// Says Hello on the inherited control channel and takes the Welcome's
/// status page.
fn join() -> (Channel, Page) {
    // (spmd::init is never called on this path.)
    let socket = relay::inherited_channel();
    let mut channel = Channel::new(socket, 1, u32::MAX, "spmdrun");
    let hello = ControlMessage::Hello {
        rank: 1,
        pid: std::process::id(),
    };
    channel.send(&hello, &[]).expect("hello");
    let (welcome, fds) = channel.receive(None).expect("welcome");
    assert!(matches!(welcome, ControlMessage::Welcome { .. }), "{welcome:?}");
    let page = Page::map(fds.first().expect("a status page")).expect("map the page");
    (channel, page)
}

fn register(channel: &mut Channel, host: &str, card: Card) {
    let msg = ControlMessage::Register {
        host: host.to_string(),
        card,
    };
    channel.send(&msg, &[]).expect("register");
}
