//! A hostile local user, for the attack tests: run as another user while a
//! job runs, it looks for anything of the job it can reach and tries to
//! stop, join or crash it, for `SECONDS` seconds; then it prints one line
//! per kind of attempt with how many succeeded. `spmd-attacker SECONDS`.
//!
//! - every Unix socket name (path or abstract) that appears in
//!   /proc/net/unix after it starts, and every listening TCP port on
//!   loopback: connect, then hold the
//!   connection idle, send garbage, send a plausible Hello, or trickle a
//!   byte at a time; up to a few thousand connections at once;
//! - /dev/shm and /tmp: create the names an spmd job used to use, and open
//!   for writing anything named spmd there;
//! - /proc: read the environment and the descriptors of every spmd process.

use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixStream};
use std::time::{Duration, Instant};

#[derive(Default)]
struct Tally {
    unix_tried: usize,
    unix_connected: usize,
    tcp_tried: usize,
    tcp_connected: usize,
    files_made: usize,
    spmd_files_opened: usize,
    proc_read: usize,
}

/// Unix socket names listed in /proc/net/unix (abstract ones start '@').
fn unix_names() -> HashSet<String> {
    let text = std::fs::read_to_string("/proc/net/unix").unwrap_or_default();
    text.lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().nth(7).map(str::to_string))
        .collect()
}

/// Loopback TCP ports in the LISTEN state.
fn tcp_ports() -> HashSet<u16> {
    let text = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    text.lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let (addr, state) = (f.get(1)?, f.get(3)?);
            let (ip, port) = addr.split_once(':')?;
            (*state == "0A" && ip == "0100007F").then(|| u16::from_str_radix(port, 16).ok())?
        })
        .collect()
}

fn connect_unix(name: &str) -> Option<UnixStream> {
    match name.strip_prefix('@') {
        Some(abs) => {
            let addr = SocketAddr::from_abstract_name(abs.as_bytes()).ok()?;
            UnixStream::connect_addr(&addr).ok()
        }
        None => UnixStream::connect(name).ok(),
    }
}

/// What to do with a connection, by its number.
fn abuse<S: Write>(s: &mut S, n: usize) {
    let _ = match n % 4 {
        // Hold it idle.
        0 => Ok(()),
        // Garbage.
        1 => s.write_all(&[0xa5; 200]),
        // A plausible start of a Hello frame, then nothing more.
        2 => s.write_all(b"SPMD\x02\x04\0\0"),
        // One byte now, more later (a trickle).
        _ => s.write_all(b"S"),
    };
}

fn main() {
    let seconds: f64 = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(10.0);
    let until = Instant::now() + Duration::from_secs_f64(seconds);
    let mut t = Tally::default();
    let mut held_unix: Vec<UnixStream> = Vec::new();
    let mut held_tcp: Vec<TcpStream> = Vec::new();
    let mut round = 0usize;
    // spmd names no socket; anything that shows up while jobs run is a
    // candidate, whatever it is called.
    let before = unix_names();
    // Listeners that were there before the jobs are not the jobs'.
    let ports_before = tcp_ports();
    let mut new_names = HashSet::new();
    while Instant::now() < until {
        round += 1;
        for name in unix_names() {
            if before.contains(&name) {
                continue;
            }
            if new_names.insert(name.clone()) {
                eprintln!("a new socket name: {name}");
            }
            t.unix_tried += 1;
            if let Some(mut s) = connect_unix(&name) {
                t.unix_connected += 1;
                abuse(&mut s, t.unix_connected);
                if held_unix.len() < 3000 {
                    held_unix.push(s);
                }
            }
        }
        for port in tcp_ports().difference(&ports_before) {
            t.tcp_tried += 1;
            if let Ok(mut s) = TcpStream::connect(("127.0.0.1", *port)) {
                // A job over TCP listens while it starts. Count a listener
                // only if it answers a stranger with anything at all: an
                // spmd rank never does (it waits for a proof of the
                // job's secret, then closes).
                abuse(&mut s, t.tcp_tried);
                let _ = s.set_read_timeout(Some(Duration::from_millis(1)));
                let mut b = [0u8; 1];
                if matches!(s.read(&mut b), Ok(n) if n > 0) {
                    t.tcp_connected += 1;
                    eprintln!("port {port} answered a stranger");
                }
                if held_tcp.len() < 3000 {
                    held_tcp.push(s);
                }
            }
        }
        // Trickle on what is held.
        for s in held_unix.iter_mut().step_by(4) {
            let _ = s.write_all(b"P");
        }
        // Squat the names spmd jobs used to use, and open anything spmd.
        for dir in ["/dev/shm", "/tmp"] {
            for i in 0..4 {
                let name = format!("{dir}/spmd-{round:016x}-{i}");
                if std::fs::File::create(&name).is_ok() {
                    t.files_made += 1;
                }
            }
            if let Ok(entries) = std::fs::read_dir(dir) {
                for e in entries.flatten() {
                    let name = e.file_name().to_string_lossy().into_owned();
                    // SAFETY: a plain system call.
                    let me = unsafe { libc::geteuid() };
                    let ours = e
                        .metadata()
                        .is_ok_and(|m| std::os::unix::fs::MetadataExt::uid(&m) == me);
                    if name.starts_with("spmd") && !ours {
                        let path = e.path();
                        if std::fs::OpenOptions::new().write(true).open(&path).is_ok()
                            || std::fs::read_dir(&path).is_ok()
                        {
                            t.spmd_files_opened += 1;
                            eprintln!("opened {}", path.display());
                        }
                    }
                }
            }
        }
        // Look into every spmd process.
        if let Ok(procs) = std::fs::read_dir("/proc") {
            for p in procs.flatten() {
                let path = p.path();
                let cmd = std::fs::read(path.join("cmdline")).unwrap_or_default();
                let cmd = String::from_utf8_lossy(&cmd);
                let spmd = cmd.contains("spmd") && !cmd.contains("attacker");
                if spmd && (std::fs::read(path.join("environ")).is_ok() || std::fs::read_dir(path.join("fd")).is_ok()) {
                    t.proc_read += 1;
                }
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    // Clean up the squatted names.
    for dir in ["/dev/shm", "/tmp"] {
        if let Ok(entries) = std::fs::read_dir(dir) {
            for e in entries.flatten() {
                // SAFETY: a plain system call.
                let me = unsafe { libc::geteuid() };
                if e.metadata()
                    .is_ok_and(|m| std::os::unix::fs::MetadataExt::uid(&m) == me)
                {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
    }
    println!("unix socket names new during the run: {}", new_names.len());
    println!(
        "connections to them: tried {}, connected {}",
        t.unix_tried, t.unix_connected
    );
    println!(
        "tcp listeners on loopback: tried {}, answered {}",
        t.tcp_tried, t.tcp_connected
    );
    println!("names made in /dev/shm and /tmp: {}", t.files_made);
    println!("spmd files or directories opened: {}", t.spmd_files_opened);
    println!("spmd processes looked into: {}", t.proc_read);
    println!("rounds: {round}");
}
