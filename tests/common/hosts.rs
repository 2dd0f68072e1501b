//! "Hosts" for the multi-host tests: a real sshd listening on each of
//! 127.0.0.2, 127.0.0.3, ... (one process each, on a port the kernel
//! picked), with keys made for the test in a directory of its own, and an
//! ssh configuration that trusts exactly those hosts. Nothing of the
//! user's own ~/.ssh is read or touched. Every such host is this machine
//! with the same hostname: spmdrun must tell them apart by the hostfile.

use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use super::spmdrun;

const SSHD: &str = "/usr/sbin/sshd";

/// A set of ssh hosts on loopback addresses; they stop when dropped.
pub struct Hosts {
    dir: PathBuf,
    sshd: Vec<Child>,
    port: u16,
    /// The host names, `127.0.0.N`.
    pub names: Vec<String>,
}

fn keygen(path: &Path) {
    let out = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(path)
        .output()
        .expect("ssh-keygen runs (install openssh-client; .ci/run does)");
    assert!(out.status.success(), "ssh-keygen failed: {out:?}");
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

impl Hosts {
    /// Starts an sshd on each of 127.0.0.2 up to 127.0.0.(count+1).
    pub fn start(count: usize) -> Hosts {
        assert!(
            Path::new(SSHD).exists(),
            "{SSHD} is missing: the multi-host tests need openssh-server (apt-get install openssh-server; .ci/run \
             installs it)"
        );
        assert!(
            nix::unistd::geteuid().is_root(),
            "the multi-host tests run sshd, which needs root"
        );
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "spmd-hosts-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        // Its keys are root's alone (and the attack tests' stranger finds
        // nothing named spmd it can look into).
        std::os::unix::fs::DirBuilderExt::mode(&mut std::fs::DirBuilder::new(), 0o700)
            .create(&dir)
            .expect("making the hosts' directory");
        std::fs::create_dir_all("/run/sshd").expect("making sshd's privilege separation directory");
        keygen(&dir.join("host_key"));
        keygen(&dir.join("client_key"));
        keygen(&dir.join("stranger_key"));
        std::fs::copy(dir.join("client_key.pub"), dir.join("authorized_keys")).expect("authorizing the test key");
        let names: Vec<String> = (0..count).map(|i| format!("127.0.0.{}", i + 2)).collect();
        let port = free_port(count);
        let host_key = read(&dir.join("host_key.pub"));
        let key: Vec<&str> = host_key.split_whitespace().take(2).collect();
        let mut known = String::new();
        let mut sshd = Vec::new();
        for name in &names {
            known.push_str(&format!("[{name}]:{port} {}\n", key.join(" ")));
            let config = dir.join(format!("sshd-{name}.conf"));
            std::fs::write(
                &config,
                format!(
                    "ListenAddress {name}:{port}\nHostKey {d}/host_key\nPidFile {d}/sshd-{name}.pid\n\
                     AuthorizedKeysFile {d}/authorized_keys\nStrictModes no\nPasswordAuthentication no\n\
                     KbdInteractiveAuthentication no\nUsePAM no\nPermitRootLogin prohibit-password\n\
                     MaxStartups 100\nMaxSessions 100\nLogLevel ERROR\n",
                    d = dir.display()
                ),
            )
            .expect("writing an sshd configuration");
            let log = std::fs::File::create(dir.join(format!("sshd-{name}.log"))).expect("sshd's log");
            let child = Command::new(SSHD)
                .arg("-D")
                .arg("-e")
                .arg("-f")
                .arg(&config)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .process_group(0)
                .spawn()
                .expect("sshd starts");
            sshd.push(child);
        }
        std::fs::write(dir.join("known_hosts"), known).expect("writing known_hosts");
        let config = |known: &str, key: &str| {
            format!(
                "Host 127.0.0.*\n  Port {port}\n  IdentityFile {d}/{key}\n  IdentitiesOnly yes\n  \
                 UserKnownHostsFile {known}\n  StrictHostKeyChecking yes\n  BatchMode yes\n  LogLevel ERROR\n",
                d = dir.display()
            )
        };
        let known = dir.join("known_hosts").display().to_string();
        std::fs::write(dir.join("ssh_config"), config(&known, "client_key")).expect("writing ssh_config");
        std::fs::write(dir.join("ssh_config_stranger"), config(&known, "stranger_key")).expect("writing ssh_config");
        std::fs::write(dir.join("ssh_config_unknown"), config("/dev/null", "client_key")).expect("writing ssh_config");
        let mut hosts = Hosts { dir, sshd, port, names };
        hosts.wait_until_listening();
        hosts
    }

    fn wait_until_listening(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        for (name, sshd) in self.names.iter().zip(&mut self.sshd) {
            let addr = SocketAddrV4::new(name.parse().expect("an address"), self.port);
            // An sshd that could not bind has exited: whatever answers
            // there is not it.
            let log = || read(&self.dir.join(format!("sshd-{name}.log")));
            loop {
                let exited = sshd.try_wait().ok().flatten();
                assert!(
                    exited.is_none(),
                    "sshd on {addr} exited ({exited:?}); its log: {}",
                    log()
                );
                if TcpStream::connect(addr).is_ok() {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "sshd on {addr} did not start listening; its log: {}",
                    log()
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    /// `--launch-agent` for ssh with this test's keys and known hosts.
    pub fn launch_agent(&self) -> String {
        format!("ssh -F {}", self.dir.join("ssh_config").display())
    }

    /// ssh with a key the hosts do not accept.
    pub fn launch_agent_with_unknown_key(&self) -> String {
        format!("ssh -F {}", self.dir.join("ssh_config_stranger").display())
    }

    /// ssh that knows none of the hosts' keys.
    pub fn launch_agent_knowing_no_host(&self) -> String {
        format!("ssh -F {}", self.dir.join("ssh_config_unknown").display())
    }

    /// A file in the test's directory.
    pub fn file(&self, name: &str, text: &str) -> PathBuf {
        let path = self.dir.join(name);
        std::fs::write(&path, text).expect("writing a test file");
        path
    }

    /// The test's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        for child in &mut self.sshd {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(child.id() as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `spmdrun` reaching the hosts through the test's ssh.
pub fn across(hosts: &Hosts, args: &[&str]) -> std::process::Command {
    let agent = hosts.launch_agent();
    let mut all = vec!["--launch-agent", agent.as_str()];
    all.extend_from_slice(args);
    spmdrun(&all)
}

/// A port free on each of the `count` addresses from 127.0.0.2, below the
/// kernel's range for ports it picks itself: a rank of a test running
/// beside this one, listening on port 0, can never take it between this
/// look and sshd's bind (and one free on the first address only was taken
/// on another by a rank's connection).
fn free_port(count: usize) -> u16 {
    use std::hash::{BuildHasher, Hasher};
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    // (Not 16817-16999, where scripts/slurm-local looks for its ports.)
    let (from, to) = (10_000u16, low.max(12_000));
    for _ in 0..100 {
        let mut random = std::collections::hash_map::RandomState::new().build_hasher();
        random.write_u32(std::process::id());
        let port = from + (random.finish() % u64::from(to - from)) as u16;
        if (16_817..17_000).contains(&port) {
            continue;
        }
        let free = |i: usize| TcpListener::bind(SocketAddrV4::new(Ipv4Addr::new(127, 0, 0, 2 + i as u8), port)).is_ok();
        if (0..count).all(free) {
            return port;
        }
    }
    panic!("no port free on all of 127.0.0.2..{} in 100 tries", count + 1)
}
