//! The bytes an agent on another host sends spmdrun, and those spmdrun
//! sends an agent, cut anywhere: each is a message or an error naming the
//! peer, never a panic, a hang or an allocation the length asks for.

#![no_main]

use libfuzzer_sys::fuzz_target;
use spmdrun::agent::protocol::{Down, Inbox, Up, greeting};

fuzz_target!(|data: &[u8]| {
    let cut = data.first().map_or(0, |b| usize::from(*b)) % (data.len() + 1);
    let mut up = Inbox::new("fuzz");
    let mut down = Inbox::new("fuzz");
    for inbox in [&mut up, &mut down] {
        inbox.feed(&greeting());
        inbox.feed(&data[..cut]);
    }
    while let Ok(Some(_)) = up.next_message::<Up>() {}
    while let Ok(Some(_)) = down.next_message::<Down>() {}
    up.feed(&data[cut..]);
    while let Ok(Some(_)) = up.next_message::<Up>() {}
});
