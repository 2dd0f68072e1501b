//! Links made of fuzzer bytes, for `crate::fuzzing`: a stream that
//! delivers the bytes in reads of chosen sizes, a control channel that
//! reads them from a socket, and a fastbox area and ring control block
//! filled with them.

use std::io::{IoSlice, Write};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;

use crate::error::Result;
use crate::matching::Sink;
use crate::wire::Channel;

use super::shm::fuzz_shared;
use super::stream::{Io, Link, Peer};

/// A link that reads `data` in pieces sized by `cuts` (cycled).
struct Bytes<'a> {
    data: &'a [u8],
    cuts: &'a [u8],
    read: usize,
}

// SAFETY: writes only bytes into what it reads into (see `Link`).
unsafe impl Link for Bytes<'_> {
    fn write(&mut self, iov: &[IoSlice<'_>]) -> Result<Io> {
        Ok(Io::Done(iov.iter().map(|s| s.len()).sum::<usize>().max(1)))
    }

    fn read(&mut self, buf: &mut [std::mem::MaybeUninit<u8>]) -> Result<Io> {
        if self.data.is_empty() {
            return Ok(Io::Closed);
        }
        let cut = self
            .cuts
            .get(self.read % self.cuts.len().max(1))
            .copied()
            .unwrap_or(255);
        let n = (usize::from(cut) + 1).min(self.data.len()).min(buf.len());
        super::link::copy_bytes(buf, &self.data[..n]);
        self.data = &self.data[n..];
        self.read += 1;
        Ok(Io::Done(n))
    }
}

/// Parses `data` as the stream from rank 1, in reads sized by `cuts`.
pub(crate) fn stream(data: &[u8], cuts: &[u8], sink: &mut dyn Sink) -> Result<()> {
    let mut peer = Peer::new(0, 1, Bytes { data, cuts, read: 0 });
    // A stream never delivers more than what it holds, so this ends.
    for _ in 0..=data.len() {
        peer.read_available(1 << 20, sink, true)?;
        if !peer.is_open() {
            break;
        }
    }
    Ok(())
}

/// Reads `data` from a control channel, message after message.
pub(crate) fn control(data: &[u8]) -> Result<()> {
    let (mut a, b) = UnixStream::pair().map_err(|e| crate::error::Error::io("a socket pair", e))?;
    // The socket holds a few hundred KiB: enough for what a fuzzer gives.
    let _ = a.write_all(&data[..data.len().min(64 << 10)]);
    drop(a);
    let _ = b.set_nonblocking(true);
    let mut channel = Channel::new(OwnedFd::from(b), 0, 1, "fuzz");
    channel.read_available()?;
    while channel.next_message()?.is_some() {}
    Ok(())
}

/// Reads a fastbox area and a ring's control block filled with `data`.
pub(crate) fn shared(data: &[u8], sink: &mut dyn Sink) -> Result<()> {
    fuzz_shared(data, sink)
}
