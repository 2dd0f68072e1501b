//! The launcher's control listener: authenticates each rank, takes its
//! registration, and turns what ranks say into events for the job.

use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::mpsc::Sender;
use std::thread;
use std::time::Duration;

use spmd::auth::{self, Identity, Secret};
use spmd::wire::{Card, ControlMessage, LAUNCHER_ID};

use crate::job::Event;

/// What a rank told the launcher when it registered.
#[derive(Debug)]
pub struct Registration {
    pub rank: usize,
    pub pid: u32,
    pub host: String,
    pub card: Card,
    /// Where to send the table.
    pub stream: TcpStream,
}

/// The control listener of one job.
pub struct ControlServer {
    listener: TcpListener,
}

impl ControlServer {
    /// Listens on a loopback port chosen by the kernel.
    pub fn bind() -> std::io::Result<ControlServer> {
        Ok(ControlServer {
            listener: TcpListener::bind("127.0.0.1:0")?,
        })
    }

    /// The address ranks connect to.
    pub fn address(&self) -> std::io::Result<String> {
        Ok(self.listener.local_addr()?.to_string())
    }

    /// Accepts connections for ever on a background thread; each connection
    /// gets a thread that reports its events.
    pub fn serve(self, secret: Secret, job: u64, size: usize, events: Sender<Event>) {
        let secret = Arc::new(secret);
        thread::spawn(move || {
            for stream in self.listener.incoming() {
                let Ok(stream) = stream else { continue };
                let (secret, events) = (Arc::clone(&secret), events.clone());
                thread::spawn(move || serve_rank(stream, &secret, job, size, &events));
            }
        });
    }
}

fn serve_rank(mut stream: TcpStream, secret: &Secret, job: u64, size: usize, events: &Sender<Event>) {
    let peer = stream
        .peer_addr()
        .map(|a| format!("a control connection from {a}"))
        .unwrap_or_else(|_| "a control connection".into());
    let _ = stream.set_nodelay(true);
    let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
    let id = Identity {
        secret,
        job,
        me: LAUNCHER_ID,
    };
    let rank = match auth::accept(&mut stream, id, &peer) {
        Ok(r) => r as usize,
        Err(e) => {
            let _ = events.send(Event::Warning(format!("rejected {peer}: {e}")));
            return;
        }
    };
    let name = format!("rank {rank}");
    let registration = match ControlMessage::receive(&mut stream, &name) {
        Ok(ControlMessage::Register {
            rank: r,
            pid,
            host,
            card,
        }) if r as usize == rank && rank < size => match stream.try_clone() {
            Ok(writer) => Registration {
                rank,
                pid,
                host,
                card,
                stream: writer,
            },
            Err(e) => {
                let _ = events.send(Event::Warning(format!("{name}: {e}")));
                return;
            }
        },
        Ok(other) => {
            let _ = events.send(Event::Warning(format!(
                "{peer} authenticated as rank {rank} but sent {other:?} instead of a valid registration"
            )));
            return;
        }
        Err(e) => {
            let _ = events.send(Event::Warning(format!("{name} failed to register: {e}")));
            return;
        }
    };
    if events.send(Event::Registered(registration)).is_err() {
        return;
    }
    // From here on the rank may wait a long time before speaking again.
    let _ = stream.set_read_timeout(None);
    loop {
        match ControlMessage::receive(&mut stream, &name) {
            Ok(ControlMessage::Finalized) => {
                let _ = events.send(Event::Finalized(rank));
            }
            Ok(ControlMessage::Abort { code, message }) => {
                let _ = events.send(Event::Aborted { rank, code, message });
            }
            Ok(ControlMessage::Panic { message }) => {
                let _ = events.send(Event::Panicked { rank, message });
            }
            Ok(other) => {
                let _ = events.send(Event::Warning(format!("{name} sent an unexpected {other:?}")));
            }
            Err(_) => break,
        }
    }
    let _ = events.send(Event::ControlClosed(rank));
}
