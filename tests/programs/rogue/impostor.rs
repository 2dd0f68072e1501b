//! For `spmd-rogue impostor` (over TCP, 3 ranks): rank 1, a member of the
//! job, takes the keys and the table spmdrun tells it and, before its own
//! init hears the table, connects to rank 0 claiming to be rank 2, with
//! its own keys under rank 2's name. It prints whether rank 0 took it.
//! With one secret for the whole job, rank 0 did: it took the impostor as
//! rank 2 (and then refused, or never heard, the real one).

use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use spmd::auth::{Identity, PairKeys};
use spmd::wire::{Access, ControlMessage};

/// The shape of [`PairKeys`], to put other words in it.
#[derive(Serialize, Deserialize)]
struct Forged {
    me: u32,
    keys: Vec<[u8; 32]>,
}

/// Starts the relay that tries; call before `spmd::init`.
pub fn pass_for_rank_2() {
    let mut access: Option<Access> = None;
    let down: crate::relay::Down = Box::new(move |msg| match msg {
        ControlMessage::Welcome { access: given, .. } => access = given.clone(),
        ControlMessage::Table { cards, .. } => {
            let (Some(access), Some(rank_0)) = (access.as_ref(), cards[0].tcp) else {
                println!("impostor: no keys or no address of rank 0");
                return;
            };
            match connect_as_rank_2(access, rank_0) {
                Ok(()) => println!("impostor: rank 0 took rank 1 as rank 2"),
                Err(e) => println!("impostor: refused: {e}"),
            }
        }
        _ => {}
    });
    crate::relay::start(1, Box::new(|_, _| {}), down);
}

/// Proves rank 1's keys under rank 2's name to rank 0 at `address`.
fn connect_as_rank_2(access: &Access, address: SocketAddr) -> Result<(), String> {
    let config = bincode::config::standard();
    let bytes = bincode::serde::encode_to_vec(&access.keys, config).map_err(|e| e.to_string())?;
    let (mut forged, _): (Forged, usize) =
        bincode::serde::decode_from_slice(&bytes, config).map_err(|e| e.to_string())?;
    forged.me = 2;
    let bytes = bincode::serde::encode_to_vec(&forged, config).map_err(|e| e.to_string())?;
    let (keys, _): (PairKeys, usize) = bincode::serde::decode_from_slice(&bytes, config).map_err(|e| e.to_string())?;
    let keys = Arc::new(keys);
    // Rank 0 listens once it has the table too.
    let until = Instant::now() + Duration::from_secs(10);
    let mut stream = loop {
        match TcpStream::connect(address) {
            Ok(s) => break s,
            Err(_) if Instant::now() < until => std::thread::sleep(Duration::from_millis(5)),
            Err(e) => return Err(format!("connecting: {e}")),
        }
    };
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    let id = Identity {
        keys: &keys,
        job: access.job,
    };
    spmd::auth::connect(&mut stream, id, 0, "rank 0").map_err(|e| e.to_string())?;
    // Held open, as a peer's connection would be.
    std::mem::forget(stream);
    Ok(())
}
