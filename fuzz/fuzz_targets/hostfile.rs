//! A hostfile, in either format, or a `--host` list, and the placement of
//! ranks on what it names.

#![no_main]

use libfuzzer_sys::fuzz_target;
use spmdrun::placement::{MapBy, place};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    for hosts in [
        spmdrun::hostfile::parse(&text, "fuzz"),
        spmdrun::hostfile::parse_list(&text),
    ]
    .into_iter()
    .flatten()
    {
        let slots: Vec<usize> = hosts.iter().map(|h| h.slots_or(2)).collect();
        // A few rank counts, by slot and by node, oversubscribed or not:
        // an answer or an error, never a panic or a hang.
        let ranks = data.first().map_or(1, |b| usize::from(*b) % 64 + 1);
        for map_by in [MapBy::Slot, MapBy::Node] {
            for over in [false, true] {
                if let Ok(p) = place(&hosts, &slots, ranks, map_by, over) {
                    assert_eq!(p.host.len(), ranks);
                }
            }
        }
    }
});
