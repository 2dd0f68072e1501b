//! Turns SIGINT, SIGTERM and SIGHUP sent to spmdrun into job events, so the
//! job ends the same way as when a rank fails.

use std::sync::mpsc::Sender;
use std::thread;

use nix::sys::signal::{SigSet, Signal};

use crate::job::Event;

fn watched() -> SigSet {
    let mut set = SigSet::empty();
    set.add(Signal::SIGINT);
    set.add(Signal::SIGTERM);
    set.add(Signal::SIGHUP);
    set
}

/// Blocks the watched signals in this thread (call it before any other
/// thread starts, so every thread inherits the mask) and returns the set.
/// Children get an empty mask back when they are spawned.
pub fn block() -> Result<(), String> {
    watched()
        .thread_block()
        .map_err(|e| format!("cannot block signals: {e}"))
}

/// Waits for the watched signals on a thread and reports each one.
pub fn watch(events: Sender<Event>) {
    thread::spawn(move || {
        let set = watched();
        while let Ok(sig) = set.wait() {
            if events.send(Event::Signal(sig)).is_err() {
                break;
            }
        }
    });
}
