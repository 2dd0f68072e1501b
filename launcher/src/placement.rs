//! Where each rank runs: the ranks placed on the hosts' slots, filling
//! each host in turn (`--map-by slot`, the default) or one rank per host
//! round the list (`--map-by node`); more ranks than slots only with
//! `--oversubscribe`, and never more than a host's `max_slots`.

use crate::hostfile::Host;

/// How ranks are spread over the hosts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MapBy {
    /// Fill each host's slots before the next host's.
    Slot,
    /// One rank per host, round the list, while hosts have free slots.
    Node,
}

impl MapBy {
    /// Parses `--map-by`'s value.
    pub fn parse(value: &str) -> Result<MapBy, String> {
        match value {
            "slot" => Ok(MapBy::Slot),
            "node" => Ok(MapBy::Node),
            other => Err(format!("--map-by {other:?}: expected \"slot\" or \"node\"")),
        }
    }
}

/// Where each rank runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    /// `host[r]` is the index in the host list of rank `r`'s host.
    pub host: Vec<usize>,
}

/// Places `ranks` ranks on `hosts`, whose slot counts are `slots` (a
/// host's own, or the default filled in). More ranks than slots needs
/// `oversubscribe`, and then goes round the hosts again, one rank each,
/// skipping hosts at their `max_slots`.
pub fn place(
    hosts: &[Host],
    slots: &[usize],
    ranks: usize,
    map_by: MapBy,
    oversubscribe: bool,
) -> Result<Placement, String> {
    let total: usize = slots.iter().sum();
    if ranks > total && !oversubscribe {
        return Err(format!(
            "-n {ranks} is more ranks than the {total} slots of the hosts; add --oversubscribe to allow it"
        ));
    }
    // With no max_slots, a host takes any number (up to spmdrun's limit).
    let most: Vec<usize> = hosts.iter().map(|h| h.max_slots.unwrap_or(usize::MAX)).collect();
    let room: usize = most.iter().fold(0usize, |a, m| a.saturating_add(*m));
    if ranks > room {
        return Err(format!(
            "-n {ranks} is more ranks than the hosts' max_slots allow ({room} in all), even with --oversubscribe"
        ));
    }
    let mut taken = vec![0usize; hosts.len()];
    let mut host = Vec::with_capacity(ranks);
    // First the slots, in the order asked for.
    match map_by {
        MapBy::Slot => {
            for (h, &n) in slots.iter().enumerate() {
                let n = n.min(ranks - host.len());
                host.extend(std::iter::repeat_n(h, n));
                taken[h] += n;
            }
        }
        MapBy::Node => {
            while host.len() < ranks.min(total) {
                for h in 0..hosts.len() {
                    if host.len() < ranks && taken[h] < slots[h] {
                        host.push(h);
                        taken[h] += 1;
                    }
                }
            }
        }
    }
    // Then, oversubscribed, round the hosts that have room left.
    while host.len() < ranks {
        for h in 0..hosts.len() {
            if host.len() < ranks && taken[h] < most[h] {
                host.push(h);
                taken[h] += 1;
            }
        }
    }
    Ok(Placement { host })
}

/// The machines of a job, one node each: this machine (every host entry
/// that names it) and each remote host that got a rank. A rank's node
/// comes from here, never from comparing host names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Nodes {
    /// `of_rank[r]` is rank `r`'s node; rank 0's node is node 0.
    pub of_rank: Vec<usize>,
    /// `host[n]` is node `n`'s entry in the host list, `None` for this
    /// machine.
    pub host: Vec<Option<usize>>,
}

impl Nodes {
    /// The nodes of `placement`, where `local[h]` says whether host `h` is
    /// this machine; numbered in the order of their first rank.
    pub fn of(placement: &Placement, local: &[bool]) -> Nodes {
        let mut host: Vec<Option<usize>> = Vec::new();
        let of_rank = placement
            .host
            .iter()
            .map(|&h| {
                let key = if local[h] { None } else { Some(h) };
                match host.iter().position(|k| *k == key) {
                    Some(n) => n,
                    None => {
                        host.push(key);
                        host.len() - 1
                    }
                }
            })
            .collect();
        Nodes { of_rank, host }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hostfile::parse;

    fn placed(text: &str, ranks: usize, map_by: MapBy, over: bool) -> Result<Vec<usize>, String> {
        let hosts = parse(text, "hf").unwrap();
        let slots: Vec<usize> = hosts.iter().map(|h| h.slots_or(1)).collect();
        place(&hosts, &slots, ranks, map_by, over).map(|p| p.host)
    }

    #[test]
    fn a_node_per_remote_host_and_one_for_this_machine() {
        let placement = Placement {
            host: vec![1, 1, 0, 2, 0, 3],
        };
        // Hosts 0 and 2 are this machine under two names.
        let nodes = Nodes::of(&placement, &[true, false, true, false]);
        assert_eq!(nodes.of_rank, [0, 0, 1, 1, 1, 2]);
        assert_eq!(nodes.host, [Some(1), None, Some(3)]);
    }

    #[test]
    fn slots_fill_in_order_and_oversubscribe_on_request() {
        assert_eq!(placed("a:2\nb:1", 3, MapBy::Slot, false).unwrap(), [0, 0, 1]);
        let e = placed("a:2\nb:1", 4, MapBy::Slot, false).unwrap_err();
        assert!(
            e.contains("-n 4") && e.contains("3 slots") && e.contains("--oversubscribe"),
            "{e}"
        );
        assert_eq!(placed("a:2\nb:1", 5, MapBy::Slot, true).unwrap(), [0, 0, 1, 0, 1]);
        assert_eq!(placed("a:2\nb:1", 1, MapBy::Slot, false).unwrap(), [0]);
    }

    #[test]
    fn by_node_goes_round_the_hosts_while_they_have_slots() {
        assert_eq!(placed("a:2\nb:2\nc:1", 5, MapBy::Node, false).unwrap(), [0, 1, 2, 0, 1]);
        assert_eq!(placed("a:3\nb:1", 4, MapBy::Node, false).unwrap(), [0, 1, 0, 0]);
        assert_eq!(placed("a:1\nb:1", 3, MapBy::Node, true).unwrap(), [0, 1, 0]);
    }

    #[test]
    fn max_slots_is_a_hard_limit() {
        let text = "a slots=1 max_slots=2\nb slots=1 max_slots=1";
        assert_eq!(placed(text, 3, MapBy::Slot, true).unwrap(), [0, 1, 0]);
        let e = placed(text, 4, MapBy::Slot, true).unwrap_err();
        assert!(e.contains("-n 4") && e.contains("max_slots allow (3 in all)"), "{e}");
        // A host without max_slots takes the rest.
        assert_eq!(
            placed("a slots=1 max_slots=1\nb:1", 4, MapBy::Slot, true).unwrap(),
            [0, 1, 1, 1]
        );
        // A host without a slot count has the default, but never more than
        // its max_slots.
        let hosts = parse("a max_slots=2\nb", "hf").unwrap();
        let slots: Vec<usize> = hosts.iter().map(|h| h.slots_or(8)).collect();
        assert_eq!(slots, [2, 8]);
        let p = place(&hosts, &slots, 6, MapBy::Slot, false).unwrap();
        assert_eq!(p.host, [0, 0, 1, 1, 1, 1]);
    }

    #[test]
    fn map_by_names_its_choices() {
        assert_eq!(MapBy::parse("node"), Ok(MapBy::Node));
        assert!(
            MapBy::parse("core")
                .unwrap_err()
                .contains("expected \"slot\" or \"node\"")
        );
    }
}
