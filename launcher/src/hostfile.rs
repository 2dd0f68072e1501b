//! Hostfiles in both common formats (Open MPI's `host slots=N` and MPICH's
//! `host:N`), and the placement of ranks on their slots.

use std::path::Path;

/// One host of a hostfile and how many ranks it takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Host {
    pub name: String,
    pub slots: usize,
    /// `file:line` where the host was named, for errors.
    pub origin: String,
}

/// Reads a hostfile. Errors name `file:line`.
pub fn read(path: &Path) -> Result<Vec<Host>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("--hostfile {}: {e}", path.display()))?;
    parse(&text, &path.display().to_string())
}

/// Parses hostfile text; `file` names it in errors.
pub fn parse(text: &str, file: &str) -> Result<Vec<Host>, String> {
    let mut hosts: Vec<Host> = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let origin = format!("{file}:{}", i + 1);
        let line = raw.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let mut words = line.split_whitespace();
        let first = words.next().unwrap_or_default();
        let (name, mut slots) = match first.split_once(':') {
            // MPICH: host:N
            Some((name, n)) => (name, Some(count(n, "the slot count after ':'", &origin)?)),
            None => (first, None),
        };
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || "-._".contains(c)) {
            return Err(format!("{origin}: {name:?} is not a host name"));
        }
        for word in words {
            let Some((key, value)) = word.split_once('=') else {
                return Err(format!(
                    "{origin}: expected key=value after the host name, got {word:?}"
                ));
            };
            match key {
                "slots" => {
                    if slots.is_some() {
                        return Err(format!("{origin}: the slot count is given twice"));
                    }
                    slots = Some(count(value, "slots", &origin)?);
                }
                // Accepted for compatibility; spmdrun places by slots.
                "max_slots" | "max-slots" => {
                    count(value, key, &origin)?;
                }
                _ => return Err(format!("{origin}: unknown setting {key:?} (expected slots=N)")),
            }
        }
        let slots = slots.unwrap_or(1);
        match hosts.iter_mut().find(|h| h.name == name) {
            Some(h) if h.slots + slots > MAX_SLOTS => {
                return Err(format!(
                    "{origin}: {name} has {} slots in all with this line, more than the {MAX_SLOTS} a host may have",
                    h.slots + slots
                ));
            }
            Some(h) => h.slots += slots,
            None => hosts.push(Host {
                name: name.to_string(),
                slots,
                origin,
            }),
        }
    }
    if hosts.is_empty() {
        return Err(format!("{file}: names no host"));
    }
    Ok(hosts)
}

/// The most slots a host may have, over all its lines: more ranks than
/// spmdrun can run on one machine would be a promise it cannot keep.
pub const MAX_SLOTS: usize = crate::cli::MAX_RANKS;

fn count(value: &str, what: &str, origin: &str) -> Result<usize, String> {
    match value.parse::<usize>() {
        Ok(0) => Err(format!("{origin}: {what} must be at least 1")),
        Ok(n) if n > MAX_SLOTS => Err(format!(
            "{origin}: {what} {n} is more than the {MAX_SLOTS} a host may have"
        )),
        Ok(n) => Ok(n),
        Err(_) => Err(format!("{origin}: {what} {value:?} is not a whole number")),
    }
}

/// Where each rank runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    /// `host[r]` is the index in the host list of rank `r`'s host.
    pub host: Vec<usize>,
}

/// Fills the hosts' slots in order, rank by rank. More ranks than slots
/// needs `oversubscribe`, and then wraps around the hosts again.
pub fn place(hosts: &[Host], ranks: usize, oversubscribe: bool) -> Result<Placement, String> {
    let total: usize = hosts.iter().map(|h| h.slots).sum();
    if ranks > total && !oversubscribe {
        return Err(format!(
            "-n {ranks} is more ranks than the hostfile's {total} slots; add --oversubscribe to allow it"
        ));
    }
    let slots = hosts
        .iter()
        .enumerate()
        .flat_map(|(i, h)| std::iter::repeat_n(i, h.slots));
    Ok(Placement {
        host: slots.cycle().take(ranks).collect(),
    })
}

/// True if `name` is this machine: spmdrun does not start ranks over ssh yet.
pub fn is_local(name: &str) -> bool {
    if name == "localhost" || name == "::1" || name.starts_with("127.") {
        return true;
    }
    nix::unistd::gethostname().is_ok_and(|h| h.to_string_lossy() == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_formats_and_comments() {
        let hosts = parse(
            "# cluster\nnode1 slots=2 max_slots=4\nnode2:3  # fast\n\nnode3\nnode1:1\n",
            "hf",
        )
        .unwrap();
        let summary: Vec<(&str, usize, &str)> = hosts
            .iter()
            .map(|h| (h.name.as_str(), h.slots, h.origin.as_str()))
            .collect();
        assert_eq!(
            summary,
            [("node1", 3, "hf:2"), ("node2", 3, "hf:3"), ("node3", 1, "hf:5")]
        );
    }

    #[test]
    fn errors_name_file_and_line() {
        for (text, want) in [
            ("a slots=x", "hf:1: slots \"x\" is not a whole number"),
            ("a\nb slots=0", "hf:2: slots must be at least 1"),
            (
                "a\n\nb:two",
                "hf:3: the slot count after ':' \"two\" is not a whole number",
            ),
            ("a cores=2", "hf:1: unknown setting \"cores\""),
            ("a slots", "hf:1: expected key=value"),
            ("a:2 slots=3", "hf:1: the slot count is given twice"),
            ("b@d", "hf:1: \"b@d\" is not a host name"),
            ("# nothing\n", "hf: names no host"),
        ] {
            let err = parse(text, "hf").unwrap_err();
            assert!(err.starts_with(want), "{text:?}: {err}");
        }
    }

    #[test]
    fn placement_fills_slots_in_order_and_oversubscribes_on_request() {
        let hosts = parse("a:2\nb:1", "hf").unwrap();
        assert_eq!(place(&hosts, 3, false).unwrap().host, [0, 0, 1]);
        assert!(place(&hosts, 4, false).unwrap_err().contains("--oversubscribe"));
        assert_eq!(place(&hosts, 5, true).unwrap().host, [0, 0, 1, 0, 0]);
    }

    #[test]
    fn slot_counts_beyond_what_a_host_may_have_are_errors_naming_the_line() {
        // Found by the fuzzer: a host repeated with huge counts overflowed
        // the sum (and would have placed ranks in a vector that large).
        let text = "a slots=3333333333333\na slots=33333333333\n";
        let e = parse(text, "h").unwrap_err();
        assert!(e.starts_with("h:1: slots 3333333333333 is more than"), "{e}");
        let half = MAX_SLOTS / 2 + 1;
        let e = parse(&format!("a slots={half}\n\na:{half}\n"), "h").unwrap_err();
        assert!(e.starts_with("h:3: a has") && e.contains("in all"), "{e}");
        let hosts = parse(&format!("a slots={MAX_SLOTS}\nb:{MAX_SLOTS}\n"), "h").unwrap();
        assert_eq!(place(&hosts, 3, false).unwrap().host, [0, 0, 0]);
    }
}
