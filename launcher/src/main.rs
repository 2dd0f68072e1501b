//! `spmdrun`: starts the ranks of an spmd job and ends them together.

mod cli;
mod control_server;
mod hostfile;
mod job;
mod output;
mod signals;
mod spawn;

fn main() {
    // Before any thread starts, so that every thread inherits the mask and
    // only the signal thread sees SIGINT/SIGTERM/SIGHUP.
    if let Err(e) = signals::block() {
        eprintln!("spmdrun: {e}");
        std::process::exit(1);
    }
    let options = match cli::parse(std::env::args_os().collect()) {
        cli::Parsed::Job(o) => o,
        cli::Parsed::Exit { text, code } => {
            if code == 0 {
                print!("{text}");
            } else {
                eprintln!("{text}");
            }
            std::process::exit(code);
        }
    };
    match job::run(options) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("spmdrun: {e}");
            std::process::exit(1);
        }
    }
}
