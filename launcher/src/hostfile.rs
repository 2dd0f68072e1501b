//! Hostfiles in both common formats (Open MPI's `host slots=N
//! max_slots=M` and MPICH's `host:N`), and the `--host` list: which hosts
//! a job may use and how many ranks each takes. Errors name `file:line`.

use std::path::Path;

/// One host of a hostfile and how many ranks it takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Host {
    pub name: String,
    /// Its slots, when a line gave them; otherwise the host's core count
    /// where it can be learnt (see [`Host::slots_or`]).
    pub slots: Option<usize>,
    /// The most ranks it may take even when oversubscribed.
    pub max_slots: Option<usize>,
    /// `file:line` where the host was first named, for errors.
    pub origin: String,
}

impl Host {
    /// Its slots, or `default` (at most its max_slots) when no line gave
    /// them.
    pub fn slots_or(&self, default: usize) -> usize {
        self.slots.unwrap_or(default.min(self.max_slots.unwrap_or(usize::MAX)))
    }
}

/// Reads a hostfile. Errors name `file:line`.
pub fn read(path: &Path) -> Result<Vec<Host>, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("--hostfile {}: {e}", path.display()))?;
    let file = path.display().to_string();
    parse(&text_of(bytes, &file)?, &file)
}

/// A hostfile's text. A comment may hold any bytes (a name in Latin-1,
/// say), and is dropped here when the file is not all UTF-8; a host line
/// that is not UTF-8 is an error naming `file:line`.
fn text_of(bytes: Vec<u8>, file: &str) -> Result<String, String> {
    let bytes = match String::from_utf8(bytes) {
        Ok(text) => return Ok(text),
        Err(e) => e.into_bytes(),
    };
    let mut text = String::with_capacity(bytes.len());
    for (i, line) in bytes.split(|&b| b == b'\n').enumerate() {
        let before_comment = line.split(|&b| b == b'#').next().unwrap_or_default();
        match std::str::from_utf8(before_comment) {
            Ok(kept) => text.push_str(kept),
            Err(e) => {
                return Err(format!(
                    "{file}:{}: not UTF-8 text (byte {} of the line)",
                    i + 1,
                    e.valid_up_to() + 1
                ));
            }
        }
        text.push('\n');
    }
    Ok(text)
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
        let (name, after_colon) = split_count(first);
        // MPICH: host:N
        let mut slots = after_colon
            .map(|n| count(n, "the slot count after ':'", &origin))
            .transpose()?;
        check_name(name, &origin)?;
        let mut max_slots = None;
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
                "max_slots" | "max-slots" => {
                    if max_slots.is_some() {
                        return Err(format!("{origin}: {key} is given twice"));
                    }
                    max_slots = Some(count(value, key, &origin)?);
                }
                _ => {
                    return Err(format!(
                        "{origin}: unknown setting {key:?} (expected slots=N or max_slots=N)"
                    ));
                }
            }
        }
        if let (Some(s), Some(m)) = (slots, max_slots) {
            if s > m {
                return Err(format!("{origin}: slots={s} is more than max_slots={m}"));
            }
        }
        add(&mut hosts, name, slots, max_slots, origin)?;
    }
    if hosts.is_empty() {
        return Err(format!("{file}: names no host"));
    }
    Ok(hosts)
}

/// Parses `--host a:2,b,b`: each entry names a host and its slots (`:N`,
/// or one slot per mention, as Open MPI counts them).
pub fn parse_list(list: &str) -> Result<Vec<Host>, String> {
    let mut hosts: Vec<Host> = Vec::new();
    for (i, entry) in list.split(',').enumerate() {
        let origin = format!("--host entry {} ({entry:?})", i + 1);
        let entry = entry.trim();
        let (name, slots) = match split_count(entry) {
            (name, Some(n)) => (name, count(n, "the slot count after ':'", &origin)?),
            (name, None) => (name, 1),
        };
        check_name(name, &origin)?;
        add(&mut hosts, name, Some(slots), None, origin)?;
    }
    Ok(hosts)
}

/// Splits `host:N` into the host and the count after the colon. An IPv6
/// address has colons of its own: bare (`::1`) it has no count, and in
/// brackets (`[::1]:2`) it may have one.
fn split_count(entry: &str) -> (&str, Option<&str>) {
    if let Some(rest) = entry.strip_prefix('[') {
        // Only an IPv6 address goes in brackets, followed by nothing or by
        // `:N`; anything else is left whole, and is not a host name.
        match rest.split_once(']') {
            Some((name, "")) if name.contains(':') => return (name, None),
            Some((name, after)) if name.contains(':') && after.starts_with(':') => return (name, Some(&after[1..])),
            _ => return (entry, None),
        }
    }
    match entry.split_once(':') {
        Some((_, after)) if after.contains(':') => (entry, None),
        Some((name, n)) => (name, Some(n)),
        None => (entry, None),
    }
}

fn check_name(name: &str, origin: &str) -> Result<(), String> {
    let quoted = quoted(name);
    if name.contains(':') {
        // Only this machine's IPv6 address: ranks on other hosts are
        // reached over IPv4 or by name.
        return match name.parse::<std::net::Ipv6Addr>() {
            Ok(ip) if ip.is_loopback() => Ok(()),
            Ok(_) => Err(format!(
                "{origin}: {quoted}: IPv6 addresses other than ::1 are not supported; name the host, or give its IPv4 \
                 address (a slot count after an IPv6 address goes after brackets: [::1]:2)"
            )),
            Err(_) => Err(format!("{origin}: {quoted} is not a host name")),
        };
    }
    // (A leading hyphen would reach ssh as an option.)
    if !spmd::wire::control::is_host_name(name) {
        return Err(format!(
            "{origin}: {quoted} is not a host name (1 to 255 ASCII letters, digits, dots, hyphens and underscores, \
             not starting with a dot or a hyphen)"
        ));
    }
    Ok(())
}

/// `name` quoted for an error, cut after 100 bytes.
fn quoted(name: &str) -> String {
    const SHOWN: usize = 100;
    if name.len() <= SHOWN {
        return format!("{name:?}");
    }
    let cut = (0..=SHOWN).rev().find(|i| name.is_char_boundary(*i)).unwrap_or(0);
    format!("{:?}... ({} bytes)", &name[..cut], name.len())
}

/// Adds a host's line: a host named again adds its slots (and its
/// max_slots, when every line of it gives one).
fn add(
    hosts: &mut Vec<Host>,
    name: &str,
    slots: Option<usize>,
    max_slots: Option<usize>,
    origin: String,
) -> Result<(), String> {
    let Some(h) = hosts.iter_mut().find(|h| h.name == name) else {
        hosts.push(Host {
            name: name.to_string(),
            slots,
            max_slots,
            origin,
        });
        return Ok(());
    };
    let sum = |a: Option<usize>, b: Option<usize>| Some(a? + b?);
    let total = h.slots.unwrap_or(1) + slots.unwrap_or(1);
    if total > MAX_SLOTS {
        return Err(format!(
            "{origin}: {name} has {total} slots in all with this line, more than the {MAX_SLOTS} a host may have"
        ));
    }
    h.slots = Some(total);
    h.max_slots = sum(h.max_slots, max_slots).map(|m| m.min(MAX_SLOTS));
    Ok(())
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
        // All digits, but past what a number of slots can be.
        Err(_) if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) => Err(format!(
            "{origin}: {what} {value} is more than the {MAX_SLOTS} a host may have"
        )),
        Err(_) => Err(format!("{origin}: {what} {value:?} is not a whole number")),
    }
}

/// True if `name` is this machine, whose ranks spmdrun starts itself
/// (without ssh).
pub fn is_local(name: &str) -> bool {
    // Other loopback addresses (127.0.0.2, ...) are hosts of their own,
    // reached through ssh: an sshd listening there is a host for tests.
    if name == "localhost" || name == "127.0.0.1" || name.parse::<std::net::Ipv6Addr>().is_ok_and(|ip| ip.is_loopback())
    {
        return true;
    }
    nix::unistd::gethostname().is_ok_and(|h| h.to_string_lossy() == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(hosts: &[Host]) -> Vec<(&str, Option<usize>, Option<usize>, &str)> {
        hosts
            .iter()
            .map(|h| (h.name.as_str(), h.slots, h.max_slots, h.origin.as_str()))
            .collect()
    }

    #[test]
    fn both_formats_and_comments() {
        let hosts = parse(
            "# cluster\nnode1 slots=2 max_slots=4\nnode2:3  # fast\n\nnode3\nnode1:1\n",
            "hf",
        )
        .unwrap();
        assert_eq!(
            summary(&hosts),
            [
                ("node1", Some(3), None, "hf:2"),
                ("node2", Some(3), None, "hf:3"),
                ("node3", None, None, "hf:5")
            ]
        );
        let hosts = parse("a slots=2 max_slots=3\na max-slots=2\nb max_slots=5", "hf").unwrap();
        assert_eq!(
            summary(&hosts),
            [("a", Some(3), Some(5), "hf:1"), ("b", None, Some(5), "hf:3")]
        );
    }

    #[test]
    fn host_lists_count_mentions_and_slots() {
        let hosts = parse_list("a:2,b,b,c:1").unwrap();
        assert_eq!(
            summary(&hosts),
            [
                ("a", Some(2), None, "--host entry 1 (\"a:2\")"),
                ("b", Some(2), None, "--host entry 2 (\"b\")"),
                ("c", Some(1), None, "--host entry 4 (\"c:1\")")
            ]
        );
        let e = parse_list("a:2,,b").unwrap_err();
        assert!(e.starts_with("--host entry 2 (\"\"): \"\" is not a host name"), "{e}");
        let e = parse_list("a:x").unwrap_err();
        assert!(e.contains("\"x\" is not a whole number"), "{e}");
    }

    #[test]
    fn bytes_that_are_not_utf8_are_an_error_on_a_host_line_only() {
        // Latin-1 "Zürich" in a comment is dropped; in a host name it is
        // the line's error.
        let hosts = parse(&text_of(b"a # Z\xfcrich\nb:2\n".to_vec(), "hf").unwrap(), "hf").unwrap();
        assert_eq!(
            summary(&hosts),
            [("a", None, None, "hf:1"), ("b", Some(2), None, "hf:2")]
        );
        let e = text_of(b"a\n# ok\nz\xfcrich slots=2\n".to_vec(), "hf").unwrap_err();
        assert_eq!(e, "hf:3: not UTF-8 text (byte 2 of the line)");
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
            ("a max_slots=2 max_slots=3", "hf:1: max_slots is given twice"),
            ("a\nb slots=4 max_slots=3", "hf:2: slots=4 is more than max_slots=3"),
            ("a max_slots=-1", "hf:1: max_slots \"-1\" is not a whole number"),
            (
                "a slots=99999999999999999999",
                "hf:1: slots 99999999999999999999 is more than the",
            ),
            ("b@d", "hf:1: \"b@d\" is not a host name"),
            ("-Fevil slots=2", "hf:1: \"-Fevil\" is not a host name"),
            (".x", "hf:1: \".x\" is not a host name"),
            ("::1:2", "hf:1: \"::1:2\": IPv6 addresses other than ::1"),
            ("[::1", "hf:1: \"[::1\" is not a host name"),
            (
                "fe80::1",
                "hf:1: \"fe80::1\": IPv6 addresses other than ::1 are not supported",
            ),
            ("[::1]x", "hf:1: \"[::1]x\" is not a host name"),
            ("[node1]:2", "hf:1: \"[node1]:2\" is not a host name"),
            ("[::1]:x", "hf:1: the slot count after ':' \"x\""),
            ("# nothing\n", "hf: names no host"),
        ] {
            let err = parse(text, "hf").unwrap_err();
            assert!(err.starts_with(want), "{text:?}: {err}");
        }
        // A long bad name is quoted in part, not whole.
        let err = parse(&format!("{}@", "n".repeat(1 << 20)), "hf").unwrap_err();
        assert!(
            err.contains("... (1048577 bytes) is not a host name") && err.len() < 400,
            "{err}"
        );
    }

    #[test]
    fn this_machines_ipv6_address_is_a_host_bare_or_in_brackets() {
        let hosts = parse("::1 slots=2\n[::1]:3\n", "hf").unwrap();
        assert_eq!(
            (hosts.len(), hosts[0].name.as_str(), hosts[0].slots),
            (1, "::1", Some(5))
        );
        let hosts = parse_list("[::1]:2,::1").unwrap();
        assert_eq!((hosts.len(), hosts[0].slots), (1, Some(3)));
        assert!(is_local("::1") && is_local("0:0:0:0:0:0:0:1"));
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
        assert_eq!(hosts[0].slots, Some(MAX_SLOTS));
    }
}
