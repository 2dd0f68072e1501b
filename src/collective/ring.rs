//! Ring allreduce for large plain-number vectors under a commutative
//! operator: a reduce-scatter and then an allgather around the ring of
//! ranks. Each rank moves about twice its data, instead of log2(n) times
//! with recursive doubling, and every chunk is combined by exactly one rank
//! and then copied, so every rank still gets the same bits.

use crate::communicator::Communicator;
use crate::envelope::Format;
use crate::error::{Error, Result};

use super::algorithm::{Step, tag};
use super::call::Call;

/// Vectors at least this large (in bytes) take the ring, given 3+ ranks.
pub(crate) const RING_THRESHOLD: usize = 64 << 10;

/// Combines a received chunk into this rank's chunk, in place.
pub(crate) type CombineChunk<'a> = dyn Fn(&mut [u8], &[u8]) + 'a;

impl Communicator {
    /// Receives the chunk `buf.len()` bytes long that `source` sends with
    /// `tag`, into `buf` (straight into it when it arrives after this call).
    fn receive_chunk(&self, call: &Call, source: usize, tag: u32, buf: &mut [u8], format: Format) -> Result<()> {
        let env = self.call_receive_into(call, source, tag, buf, format.element())?;
        let len = env.len();
        if env.format != format || len != buf.len() as u64 {
            return Err(Error::CollectiveMismatch {
                detail: format!(
                    "allreduce_into: rank {source} sent a part of {len} bytes where {} were expected \
                     (do all ranks pass slices of the same length and type?)",
                    buf.len()
                ),
            });
        }
        if env.landed.is_none() {
            buf.copy_from_slice(&env.payload);
        }
        Ok(())
    }

    /// Ring allreduce, in place, of `acc`: a vector of `element`-byte
    /// numbers of `format` that holds this rank's part on entry and the
    /// result on exit.
    pub(crate) fn ring_allreduce(
        &self,
        call: &Call,
        acc: &mut [u8],
        format: Format,
        element: usize,
        combine: &CombineChunk<'_>,
    ) -> Result<()> {
        let (n, r) = (self.size(), self.rank());
        let count = acc.len() / element.max(1);
        let chunk = |c: usize| {
            let part = crate::balance(count, n, c % n);
            part.start * element..part.end * element
        };
        let (right, left) = ((r + 1) % n, (r + n - 1) % n);
        // Chunk 0 is the largest (balance gives the first ones the extra).
        let mut incoming = crate::pool::take(chunk(0).len()).unwrap_or_default();
        // Reduce-scatter: after n-1 steps this rank holds chunk r+1 whole.
        for step in 0..n - 1 {
            let (out, into) = (chunk(r + n - step), chunk(r + 2 * n - step - 1));
            let t = tag(Step::Ring, step as u32);
            self.call_send_now(call, right, t, format, &acc[out])?;
            let len = into.len();
            self.receive_chunk(call, left, t, &mut incoming[..len], format)?;
            combine(&mut acc[into], &incoming[..len]);
        }
        crate::pool::give(incoming);
        // Allgather: pass the whole chunks around the ring.
        for step in 0..n - 1 {
            let (out, into) = (chunk(r + 1 + n - step), chunk(r + n - step));
            let t = tag(Step::Ring, 0x80_0000 | step as u32);
            self.call_send_now(call, right, t, format, &acc[out])?;
            self.receive_chunk(call, left, t, &mut acc[into], format)?;
        }
        Ok(())
    }
}
