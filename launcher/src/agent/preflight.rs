//! The agent's checks of its host before any rank starts: not a terminal,
//! the working directory and the program there, and the address of this
//! host that the other hosts reach.

use std::net::IpAddr;

use crate::spawn::Launch;

/// The program as this host finds it: a bare name on this host's `PATH`.
fn find_here(program: &std::path::Path) -> std::path::PathBuf {
    if program.to_string_lossy().contains('/') {
        return program.to_path_buf();
    }
    let search = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&search)
        .map(|dir| dir.join(program))
        .find(|c| c.is_file())
        .unwrap_or_else(|| program.to_path_buf())
}

/// Checks, before any rank starts, that the directory and the program are
/// there; returns the address this host's ranks listen on.
pub(super) fn preflight(launch: &Launch, listed: &str) -> Result<IpAddr, String> {
    let host = nix::unistd::gethostname().map_or_else(|_| "this host".into(), |h| h.to_string_lossy().into_owned());
    if let Some(dir) = &launch.wdir {
        std::env::set_current_dir(dir).map_err(|e| format!("cannot enter {} on {host}: {e}", dir.display()))?;
    }
    let program = &find_here(&launch.program);
    match std::fs::metadata(program) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(format!("{}: no such file on {host}", program.display()));
        }
        Err(e) => return Err(format!("{}: {e} on {host}", program.display())),
        Ok(m) if m.is_dir() => return Err(format!("{}: a directory on {host}", program.display())),
        Ok(_) if nix::unistd::access(program, nix::unistd::AccessFlags::X_OK).is_err() => {
            return Err(format!("{}: not executable on {host}", program.display()));
        }
        Ok(_) => {}
    }
    // The address the hostfile's name for this host resolves to; else the
    // one ssh says this host was reached at (an alias of ~/.ssh/config);
    // else what the host's own name resolves to. Only an address of this
    // host will do (one a socket binds to), and loopback only if the
    // hostfile named it.
    let resolve = |name: &str| {
        use std::net::ToSocketAddrs;
        (name, 0u16)
            .to_socket_addrs()
            .ok()
            .into_iter()
            .flatten()
            .map(|a| a.ip())
            .next()
    };
    let listed_ip = resolve(listed);
    let seen = std::env::var("SSH_CONNECTION")
        .ok()
        .and_then(|c| c.split_whitespace().nth(2).and_then(|a| a.parse::<IpAddr>().ok()))
        .filter(|ip| !ip.is_loopback());
    let named = resolve(&host).filter(|ip| !ip.is_loopback());
    let ours =
        |ip: &IpAddr| !ip.is_unspecified() && !ip.is_multicast() && std::net::TcpListener::bind((*ip, 0)).is_ok();
    [listed_ip, seen, named]
        .into_iter()
        .flatten()
        .find(ours)
        .ok_or_else(|| {
            format!(
                "cannot tell which address of {host} the other hosts reach ({listed:?} resolves to {listed_ip:?}, ssh \
             reached {seen:?}, the host's own name resolves to {named:?}, and none is an address of this host)"
            )
        })
}

/// Refuses to speak the protocol over a terminal: ssh made a tty (a
/// `RequestTTY` in the ssh configuration), which would mangle its bytes.
pub(super) fn check_not_a_terminal() -> Result<(), String> {
    for fd in [0, 1] {
        // SAFETY: isatty only inspects the descriptor.
        if unsafe { libc::isatty(fd) } == 1 {
            return Err(
                "the agent's standard input or output is a terminal: ssh must not allocate one (run it with -T, or \
                 RequestTTY no)"
                    .into(),
            );
        }
    }
    Ok(())
}
