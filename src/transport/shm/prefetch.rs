//! Asking the processor for a cache line before using it. A line a peer
//! last read has to be taken back from the peer's core before this one
//! writes it (about a tenth of a microsecond here), and a store waiting
//! for that holds up every store after it. Asked for a few messages ahead,
//! the line is here by the time it is written: a window of 8-byte sends
//! went from about 140 to about 85 ns per send on this project's 2-core
//! VM. A receiver that has fallen behind its sender asks for lines ahead
//! to read in the same way (see the fastboxes' `drain`).

/// Asks for the cache line holding `ptr` in a state that lets this core
/// write it; only a hint (nothing happens where the processor cannot, nor
/// under Miri, which runs no assembly).
#[inline]
pub(super) fn for_write(ptr: *const u8) {
    #[cfg(all(target_arch = "x86_64", not(miri)))]
    if has_prefetchw() {
        // SAFETY: PREFETCHW is a hint: it never faults, reads or writes
        // nothing, and the processor has it (checked above).
        unsafe { std::arch::asm!("prefetchw [{}]", in(reg) ptr, options(nostack, preserves_flags, readonly)) };
    }
    #[cfg(not(all(target_arch = "x86_64", not(miri))))]
    let _ = ptr;
}

/// Asks for the cache line holding `ptr` for reading (every x86_64
/// processor has PREFETCHT0); only a hint, as [`for_write`].
#[inline]
pub(super) fn for_read(ptr: *const u8) {
    #[cfg(all(target_arch = "x86_64", not(miri)))]
    // SAFETY: PREFETCHT0 is a hint: it never faults, reads or writes
    // nothing.
    unsafe {
        std::arch::asm!("prefetcht0 [{}]", in(reg) ptr, options(nostack, preserves_flags, readonly))
    };
    #[cfg(not(all(target_arch = "x86_64", not(miri))))]
    let _ = ptr;
}

/// True if the processor has PREFETCHW (CPUID 8000_0001h, ECX bit 8),
/// asked once.
#[cfg(all(target_arch = "x86_64", not(miri)))]
#[inline]
fn has_prefetchw() -> bool {
    use std::sync::atomic::{AtomicU8, Ordering};
    const UNKNOWN: u8 = 0;
    const YES: u8 = 1;
    static KNOWN: AtomicU8 = AtomicU8::new(UNKNOWN);
    match KNOWN.load(Ordering::Relaxed) {
        UNKNOWN => {
            // CPUID leaf 8000_0001h exists if the highest extended leaf
            // (leaf 8000_0000h's EAX) reaches it. (`__cpuid` is an unsafe
            // fn in older Rust, such as the crate's minimum, 1.85.)
            #[allow(unused_unsafe)]
            // SAFETY: CPUID exists on every x86_64 processor.
            let (highest, features) = unsafe {
                (
                    std::arch::x86_64::__cpuid(0x8000_0000).eax,
                    std::arch::x86_64::__cpuid(0x8000_0001).ecx,
                )
            };
            let has = highest >= 0x8000_0001 && features & (1 << 8) != 0;
            KNOWN.store(if has { YES } else { 2 }, Ordering::Relaxed);
            has
        }
        known => known == YES,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_prefetch_changes_nothing() {
        let mut line = [7u8; 64];
        super::for_write(line.as_ptr());
        super::for_read(line.as_ptr());
        line[0] = 8;
        assert_eq!(line[..2], [8, 7]);
    }
}
