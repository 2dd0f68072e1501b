//! Output that would tear lines apart if the launcher did not forward whole
//! lines: every rank writes long lines in pieces, flushing in between.

use std::io::Write;

pub const LINES: usize = 500;

pub fn chatter() -> Result<(), spmd::Error> {
    let world = spmd::init()?;
    let me = world.rank();
    let body = format!("{me}").repeat(300);
    let mut out = std::io::stdout();
    for i in 0..LINES {
        // Half a line, a flush, a pause, the rest: a naive forwarder would
        // interleave another rank's output in the middle.
        let _ = write!(out, "rank {me} line {i} {}", &body[..150]);
        let _ = out.flush();
        if i % 50 == 0 {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        let _ = writeln!(out, "{} end", &body[150..]);
    }
    // A last line without a newline is still delivered as a line.
    let _ = write!(out, "rank {me} done");
    let _ = out.flush();
    world.finalize()
}
