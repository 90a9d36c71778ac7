//! `pipe`'s entry point: parse arguments, run, turn errors into exit codes (2: bad input,
//! 1: a failed run or command). Everything else lives in the library.

use clap::Parser;

fn main() {
    // Like other Unix tools, end quietly when the reader of stdout goes away (`pipe show | head`):
    // Rust ignores SIGPIPE by default, which turns it into a panic in println!.
    // SAFETY: setting a signal disposition at start-up, before any other thread exists.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = pipe::Cli::parse();
    let filter = match cli.verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(filter)),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let json = cli.wants_json();
    let code = match pipe::run(cli) {
        Ok(code) => code,
        Err(e) => {
            // A closed pipe (e.g. `pipe show | head`) is not an error.
            if e.chain().any(|c| {
                c.downcast_ref::<std::io::Error>()
                    .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
            }) {
                0
            } else {
                eprintln!("error: {e:#}");
                if json {
                    // A script reading stdout still gets one document, with the same exit code.
                    println!("{}", pipe::error_json(&e));
                }
                if pipe::is_input_error(&e) { 2 } else { 1 }
            }
        }
    };
    std::process::exit(code);
}
