//! `spmdrun`: starts the ranks of an spmd job and ends them together.

use spmdrun::{agent, cli, job, signals};

fn main() {
    // Before any thread starts, so that every thread inherits the mask and
    // the signals are only read from their descriptor.
    let signals = match signals::open() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("spmdrun: {e}");
            std::process::exit(1);
        }
    };
    // On another host, spmdrun runs as the agent of its ranks.
    if std::env::args_os().nth(1).is_some_and(|a| a == "--agent") && std::env::args_os().len() == 2 {
        std::process::exit(agent::serve(signals));
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
    match job::run(*options, signals) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("spmdrun: {e}");
            std::process::exit(1);
        }
    }
}
