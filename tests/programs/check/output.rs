//! Output that would tear lines apart if the launcher did not forward whole
//! lines: every rank writes long lines in pieces, flushing in between; and
//! output that fills its pipe while another rank waits for the writer.

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

/// `blocked-output [stderr]`: rank 0 writes `BLOCKED_OUTPUT` bytes of `x`
/// lines to its stdout (or stderr), more than spmdrun holds for a reader
/// that does not read, then sends rank 1 a message, which rank 1 waits
/// for meanwhile.
pub fn blocked_output(stderr: bool) -> Result<(), spmd::Error> {
    let world = spmd::init()?;
    if world.rank() == 0 {
        let line = format!("{}\n", "x".repeat(1023));
        let mut out: Box<dyn Write> = if stderr {
            Box::new(std::io::stderr())
        } else {
            Box::new(std::io::stdout())
        };
        for _ in 0..BLOCKED_OUTPUT / line.len() {
            let _ = out.write_all(line.as_bytes());
        }
        let _ = out.flush();
        world.send(&7u32, 1)?;
    } else if world.rank() == 1 {
        let got: u32 = world.receive(0)?;
        assert_eq!(got, 7);
        println!("blocked-output: rank 1 got its message");
    }
    world.finalize()
}

/// What `blocked-output` writes: 64 MiB.
pub const BLOCKED_OUTPUT: usize = 64 << 20;
