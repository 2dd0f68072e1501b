//! The rank's side of the control channel to spmdrun: register, receive the
//! table of peers, and report finalize, abort and panics.

use std::io::Write;
use std::net::TcpStream;
use std::sync::Mutex;
use std::time::Duration;

use crate::auth::{self, Identity};
use crate::bootstrap::Placement;
use crate::error::{Error, Result};
use crate::wire::{Card, ControlMessage, LAUNCHER_ID};

const LAUNCHER: &str = "the launcher (spmdrun)";

/// The control connection, reachable from the panic hook and `abort`.
static CHANNEL: Mutex<Option<(u32, TcpStream)>> = Mutex::new(None);

/// Connects to the launcher, proves the secret, registers this rank's card
/// and waits for everybody's. Returns the cards and node of every rank.
pub(crate) fn register(p: &Placement, card: Card) -> Result<(Vec<Card>, Vec<u32>)> {
    let rank = p.rank as u32;
    let mut stream = TcpStream::connect(&p.control)
        .map_err(|e| Error::io(format!("connecting to {LAUNCHER} at {}", p.control), e))?;
    stream
        .set_write_timeout(Some(Duration::from_secs(30)))
        .and_then(|_| stream.set_nodelay(true))
        .map_err(|e| Error::io("configuring the control connection", e))?;
    let id = Identity {
        secret: &p.secret,
        job: p.job,
        me: rank,
    };
    auth::connect(&mut stream, id, LAUNCHER_ID, LAUNCHER)?;
    let host = crate::world::host_name();
    ControlMessage::Register {
        rank,
        pid: std::process::id(),
        host,
        card,
    }
    .send(&mut stream, rank, LAUNCHER)?;
    // The table comes when every rank has registered, however long that is.
    let table = ControlMessage::receive(&mut stream, LAUNCHER)?;
    let ControlMessage::Table { cards, nodes } = table else {
        return Err(Error::protocol(
            LAUNCHER,
            "control message",
            format!("expected the table, got {table:?}"),
        ));
    };
    if cards.len() != p.size || nodes.len() != p.size {
        return Err(Error::protocol(
            LAUNCHER,
            "table",
            format!(
                "{} cards and {} nodes for a job of {}",
                cards.len(),
                nodes.len(),
                p.size
            ),
        ));
    }
    if let Ok(mut guard) = CHANNEL.lock() {
        *guard = Some((rank, stream));
    }
    Ok((cards, nodes))
}

/// Sends one message to the launcher if the channel is open; `close` drops
/// the channel afterwards. Failures are ignored: the launcher also watches
/// the process itself.
pub(crate) fn tell(msg: &ControlMessage, close: bool) {
    // A panic while holding the lock must not stop a later report.
    let mut guard = match CHANNEL.lock() {
        Ok(g) => g,
        Err(poisoned) => poisoned.into_inner(),
    };
    if let Some((rank, stream)) = guard.as_mut() {
        let _ = msg.send(stream, *rank, LAUNCHER);
        let _ = stream.flush();
    }
    if close {
        *guard = None;
    }
}

/// Reports panics to the launcher, then runs the previous hook (which prints
/// the usual message).
pub(crate) fn install_panic_hook() {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let payload = info.payload();
        let text = payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a non-text panic payload".to_string());
        let message = match info.location() {
            Some(loc) => format!("{text} at {}:{}", loc.file(), loc.line()),
            None => text,
        };
        tell(&ControlMessage::Panic { message }, false);
        previous(info);
    }));
}
