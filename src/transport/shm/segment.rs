//! A rank's shared-memory segment: an anonymous memory file (memfd) with
//! nothing in `/dev/shm` to name, squat or leave behind, its memory
//! reserved when it is made, and sealed so that nobody can shrink it under
//! a peer that maps it (which would kill the peer with SIGBUS). It holds a
//! header (the owner's doorbell, state and core, and a count its peers add
//! to when they change state), one ring per sender on the node, and, in
//! the node leader's segment, the region the node-wide collectives share.
//!
//! Nothing here hands out a Rust reference to bytes a peer may write: the
//! header words are atomics, and the rings and the region are reached
//! through raw pointers only.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use crate::error::{Error, Result};

use super::fastbox::slots_for;

/// (The layout's version is its last character: 3 since the count of
/// fastboxes follows the node's size, so that a peer from an older build
/// is refused by name, not misread.)
const MAGIC: u64 = u64::from_le_bytes(*b"spmd-sh3");
/// Bytes before the first ring.
const HEADER: usize = 4096;
const OFF_MAGIC: usize = 0;
const OFF_RING_BYTES: usize = 8;
const OFF_LOCAL: usize = 16;
const OFF_REGION: usize = 24;
const OFF_PID: usize = 32;
const OFF_ADDRESS: usize = 40;
/// The bytes of the header a peer compares, through the owner's address
/// space, with its own mapping: the fields above.
const IDENTITY: usize = 48;
const OFF_DOORBELL: usize = 64;
const OFF_STATE: usize = 128;
const OFF_CORE: usize = 192;
const OFF_STATE_CHANGES: usize = 256;

/// The bytes of a ring's control block with `slots` fastboxes: `head`
/// (bytes written) and `tail` (bytes read), each on its own cache line,
/// then the pair's fastboxes.
pub(super) fn ring_control(slots: usize) -> usize {
    128 + super::fastbox::area_bytes(slots)
}

/// Where the reader of a ring, in the ring's control block, says that it
/// can copy from the writer's memory (1) or not (0): the second word of
/// the tail's line, written by the reader once at start-up.
const OFF_READER_PULLS: usize = 72;

/// The owner of a segment has finalized: nothing written to it from now on
/// will be read. (Every state from here on is closed.)
pub(super) const CLOSED: u32 = 2;
/// The owner has finalized and taken its last look at what its peers
/// wrote: what it has not read by now it never will (see
/// `RingLink::wait_for_last_look`).
pub(super) const LOOKED: u32 = 3;
const OPEN: u32 = 1;

/// The largest ring between two ranks.
const MAX_RING: usize = 1 << 20;
/// The smallest ring, whatever the number of ranks.
const MIN_RING: usize = 16 << 10;
/// What the rings of one node take at most, as long as rings stay above
/// their minimum: 32 MiB (1 MiB rings up to 5 ranks on a node). Every page
/// is reserved at start-up and freed when the job ends, so this is also
/// what the kernel has to clear when a job ends (256 MiB took 30 ms more
/// for a 16-rank job to end on a 2-core machine).
const NODE_RINGS_BUDGET: usize = 32 << 20;

/// The size of each ring on a node of `local` ranks: 1 MiB, less when
/// there are so many ranks that the rings of the node (one per pair and
/// direction) would pass 32 MiB (512 KiB at 8 ranks, 128 KiB at 16, 32 KiB
/// at 32, and 16 KiB at the least, from 33 ranks).
pub(crate) fn ring_bytes(local: usize) -> usize {
    let pairs = local.max(1) * local.max(1);
    let mut ring = MAX_RING;
    while ring * pairs > NODE_RINGS_BUDGET && ring > MIN_RING {
        ring /= 2;
    }
    ring
}

/// The bytes of a segment for a node of `local` ranks with rings of
/// `ring` bytes, holding a collective region of `region` bytes.
pub(crate) fn segment_len(local: usize, ring: usize, region: usize) -> usize {
    rings_end(local, ring) + region
}

fn rings_end(local: usize, ring: usize) -> usize {
    HEADER + local * (ring_control(slots_for(local)) + ring)
}

/// The memory of one ring, inside a mapped segment.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RingMemory {
    /// The control block: head, tail, fastboxes.
    pub control: *mut u8,
    /// The ring's bytes.
    pub data: *mut u8,
    /// The fastboxes in the control block (a power of two).
    pub slots: usize,
    /// A power of two, so that a stream position's place in the ring is a
    /// mask, not a division, on every message.
    pub capacity: usize,
}

/// One rank's segment, mapped. The mapping lives as long as this value.
#[derive(Debug)]
pub(crate) struct Segment {
    file: OwnedFd,
    base: NonNull<u8>,
    len: usize,
    local: usize,
    ring: usize,
    region: usize,
}

// SAFETY: the mapping is owned by this value; shared memory is only
// reached through atomics and raw pointers.
unsafe impl Send for Segment {}

fn os_error(what: String) -> impl FnOnce(nix::errno::Errno) -> Error {
    move |e| Error::io(what, e.into())
}

impl Segment {
    /// Makes, reserves, seals and maps the segment of one rank on a node of
    /// `local` ranks (holding a region of `region` bytes, for the node
    /// leader). `who` names the rank in errors.
    pub fn create(local: usize, ring: usize, region: usize, who: &str) -> Result<Segment> {
        let len = segment_len(local, ring, region);
        let name = c"spmd-segment";
        // SAFETY: a plain system call with a valid C string.
        let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING) };
        if fd < 0 {
            return Err(Error::io(
                format!("{who}: creating its shared-memory segment (memfd_create)"),
                std::io::Error::last_os_error(),
            ));
        }
        // SAFETY: the descriptor was just created and is owned by nothing else.
        let file = unsafe { OwnedFd::from_raw_fd(fd) };
        nix::unistd::ftruncate(&file, len as i64)
            .map_err(os_error(format!("{who}: sizing its segment to {len} bytes")))?;
        // Reserve every page now: running out later would kill the rank
        // with SIGBUS in the middle of a copy.
        // SAFETY: a plain system call on a descriptor we own.
        let r = unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, len as libc::off_t) };
        if r != 0 {
            return Err(Error::Bootstrap(format!(
                "{who}: cannot reserve {len} bytes ({:.1} MiB) of shared memory for its segment: {}",
                len as f64 / (1 << 20) as f64,
                std::io::Error::last_os_error()
            )));
        }
        let seals = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL;
        // SAFETY: a plain fcntl on a descriptor we own.
        if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_ADD_SEALS, seals) } != 0 {
            return Err(Error::io(
                format!("{who}: sealing its segment"),
                std::io::Error::last_os_error(),
            ));
        }
        let segment = Segment::map(file, len, local, ring, region, who)?;
        segment.word64(OFF_RING_BYTES).store(ring as u64, Ordering::Relaxed);
        segment.word64(OFF_LOCAL).store(local as u64, Ordering::Relaxed);
        segment.word64(OFF_REGION).store(region as u64, Ordering::Relaxed);
        segment
            .word64(OFF_PID)
            .store(u64::from(std::process::id()), Ordering::Relaxed);
        segment
            .word64(OFF_ADDRESS)
            .store(segment.base.as_ptr() as u64, Ordering::Relaxed);
        segment.state().store(OPEN, Ordering::Relaxed);
        segment.word64(OFF_MAGIC).store(MAGIC, Ordering::Release);
        Ok(segment)
    }

    /// Maps a peer's segment received from the launcher, after checking
    /// that it is what it must be: sealed against shrinking (so that it
    /// cannot vanish under this rank), of the size the layout gives, and
    /// marked as a segment of this layout. `who` names the peer in errors.
    pub fn open(file: OwnedFd, local: usize, ring: usize, region: usize, who: &str) -> Result<Segment> {
        let len = segment_len(local, ring, region);
        let bad = |detail: String| Error::protocol(who, "segment", detail);
        crate::wire::descriptors::check_segment(file.as_fd()).map_err(|why| bad(format!("its segment is {why}")))?;
        let actual = nix::sys::stat::fstat(&file)
            .map_err(os_error(format!("inspecting the segment of {who}")))?
            .st_size;
        if actual != len as i64 {
            return Err(bad(format!("its segment has {actual} bytes, expected {len}")));
        }
        let segment = Segment::map(file, len, local, ring, region, who)?;
        let fields = [
            (OFF_MAGIC, MAGIC, "magic"),
            (OFF_RING_BYTES, ring as u64, "ring size"),
            (OFF_LOCAL, local as u64, "ranks on the node"),
            (OFF_REGION, region as u64, "region size"),
        ];
        for (offset, want, name) in fields {
            let got = segment.word64(offset).load(Ordering::Acquire);
            if got != want {
                return Err(bad(format!("its {name} is {got}, expected {want}")));
            }
        }
        Ok(segment)
    }

    fn map(file: OwnedFd, len: usize, local: usize, ring: usize, region: usize, who: &str) -> Result<Segment> {
        let size = std::num::NonZeroUsize::new(len).ok_or_else(|| Error::InvalidArgument("an empty segment".into()))?;
        // SAFETY: mapping a file we hold, shared, at a kernel-chosen address.
        let base = unsafe {
            nix::sys::mman::mmap(
                None,
                size,
                nix::sys::mman::ProtFlags::PROT_READ | nix::sys::mman::ProtFlags::PROT_WRITE,
                nix::sys::mman::MapFlags::MAP_SHARED,
                &file,
                0,
            )
        }
        .map_err(os_error(format!("mapping the segment of {who}")))?;
        Ok(Segment {
            file,
            base: base.cast(),
            len,
            local,
            ring,
            region,
        })
    }

    /// The descriptor, to pass to the launcher.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }

    fn word64(&self, offset: usize) -> &AtomicU64 {
        debug_assert!(offset + 8 <= HEADER && offset % 8 == 0);
        // SAFETY: inside the mapping (the header), aligned; atomics may be
        // written by other processes at the same time.
        unsafe { &*self.base.as_ptr().add(offset).cast::<AtomicU64>() }
    }

    fn word32(&self, offset: usize) -> &AtomicU32 {
        debug_assert!(offset + 4 <= HEADER && offset % 4 == 0);
        // SAFETY: as for `word64`.
        unsafe { &*self.base.as_ptr().add(offset).cast::<AtomicU32>() }
    }

    /// The owner's doorbell: peers ring it after writing to the owner or
    /// freeing room in a ring it writes to.
    pub fn doorbell(&self) -> &AtomicU32 {
        self.word32(OFF_DOORBELL)
    }

    /// The owner's state: [`CLOSED`] once it has finalized, then
    /// [`LOOKED`].
    pub fn state(&self) -> &AtomicU32 {
        self.word32(OFF_STATE)
    }

    /// How many times a peer of the owner changed its state: each peer adds
    /// one after it writes [`CLOSED`], and again after [`LOOKED`], so that
    /// the owner looks at its peers' states (a page each) only when one
    /// moved.
    pub fn state_changes(&self) -> &AtomicU32 {
        self.word32(OFF_STATE_CHANGES)
    }

    /// The core the owner polls on, plus one, while it polls for a message
    /// (0 otherwise): a peer polling on the same core yields it instead.
    pub fn core(&self) -> &AtomicU32 {
        self.word32(OFF_CORE)
    }

    /// The owner's process id, the address where the owner mapped this
    /// segment, and the segment's first bytes (its identity): what a peer
    /// must find at that address in the owner's memory to know that it can
    /// copy from there (see [`super::single_copy`]).
    pub fn identity(&self) -> (i32, u64, [u8; IDENTITY]) {
        let mut bytes = [0u8; IDENTITY];
        for (i, chunk) in bytes.chunks_mut(8).enumerate() {
            chunk.copy_from_slice(&self.word64(i * 8).load(Ordering::Acquire).to_le_bytes());
        }
        let pid = i32::try_from(self.word64(OFF_PID).load(Ordering::Relaxed)).unwrap_or(0);
        (pid, self.word64(OFF_ADDRESS).load(Ordering::Relaxed), bytes)
    }

    /// The ring written by the rank with local index `sender`.
    pub fn ring(&self, sender: usize) -> RingMemory {
        assert!(sender < self.local, "ring {sender} of {} on the node", self.local);
        let slots = slots_for(self.local);
        let offset = HEADER + sender * (ring_control(slots) + self.ring);
        debug_assert!(offset + ring_control(slots) + self.ring <= self.len);
        // SAFETY: the control block and the ring lie inside the mapping,
        // by the layout checked at creation.
        unsafe { RingMemory::new(self.base.as_ptr().add(offset), self.ring, slots) }
    }

    /// The region the node-wide collectives share (in the node leader's
    /// segment): its start and length.
    pub fn region(&self) -> Option<(*mut u8, usize)> {
        let start = rings_end(self.local, self.ring);
        if self.region == 0 {
            return None;
        }
        debug_assert!(start + self.region == self.len);
        // SAFETY: the region ends the mapping.
        Some((unsafe { self.base.as_ptr().add(start) }, self.region))
    }
}

impl RingMemory {
    fn reader_pulls_word(&self) -> &AtomicU64 {
        // SAFETY: a word of the control block's tail line, aligned, inside
        // a mapping the mesh keeps alive as long as its links.
        unsafe { &*self.control.add(OFF_READER_PULLS).cast::<AtomicU64>() }
    }

    /// Says (reader) whether the reader can copy from the writer's memory.
    pub(super) fn set_reader_pulls(&self, pulls: bool) {
        self.reader_pulls_word().store(u64::from(pulls), Ordering::Release);
    }

    /// True if the reader said it can copy from the writer's memory.
    pub(super) fn reader_pulls(&self) -> bool {
        self.reader_pulls_word().load(Ordering::Acquire) == 1
    }
}

impl Drop for Segment {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly what `map` mapped; nothing reaches into
        // it afterwards (the mesh drops its links with the segments).
        let _ = unsafe { nix::sys::mman::munmap(self.base.cast(), self.len) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rings_shrink_with_many_ranks_and_stay_in_budget() {
        assert_eq!(ring_bytes(2), 1 << 20);
        assert_eq!(ring_bytes(5), 1 << 20);
        assert_eq!(ring_bytes(8), 512 << 10);
        assert_eq!(ring_bytes(16), 128 << 10);
        assert_eq!(ring_bytes(32), 32 << 10);
        assert_eq!(ring_bytes(33), 16 << 10);
        assert_eq!(ring_bytes(1000), 16 << 10);
        for l in 1..200 {
            assert!(ring_bytes(l) * l * l <= NODE_RINGS_BUDGET || ring_bytes(l) == MIN_RING);
            // A ring's positions are masks (`RingMemory::offset`).
            assert!(ring_bytes(l).is_power_of_two(), "{l} ranks");
        }
    }

    #[test]
    fn a_peer_segment_is_checked_before_it_is_used() {
        let seg = Segment::create(3, 16 << 10, 4096, "rank 0").unwrap();
        let dup = || seg.fd().try_clone_to_owned().unwrap();
        let peer = Segment::open(dup(), 3, 16 << 10, 4096, "rank 0").unwrap();
        assert!(peer.region().is_some());
        for (local, ring, region, field) in [(4, 16 << 10, 4096, "segment"), (3, 32 << 10, 4096, "segment")] {
            match Segment::open(dup(), local, ring, region, "rank 0") {
                Err(Error::Protocol { field: f, peer, .. }) => assert_eq!((f, peer.as_str()), (field, "rank 0")),
                other => panic!("{other:?}"),
            }
        }
        // Sealed: nobody can shrink it under a peer.
        assert!(nix::unistd::ftruncate(seg.fd(), 0).is_err());
        // An unsealed file of the right size is refused.
        let (file, _) = std::os::unix::net::UnixStream::pair().unwrap();
        assert!(Segment::open(OwnedFd::from(file), 3, 16 << 10, 4096, "rank 0").is_err());
    }
}
