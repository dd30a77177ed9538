//! `sync-cli`: the 0k-sync device tool. Thin over `sync-client`: parse the
//! command line, run the command, print the result; exit 0 on success, 1 on
//! a runtime error, 2 on a usage error.

mod cli;
mod commands;
mod output;

use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args = cli::Args::parse();
    init_logging(args.verbose, args.quiet);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let json = args.json;
    match runtime.block_on(commands::run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            output::print_error(&err, json);
            ExitCode::from(1)
        }
    }
}

/// Log lines on stderr: by default only this tool's and its library's
/// warnings (a person sees the command's own messages, never a library's
/// log line); `-v` adds info and the libraries' warnings, `-vv` debug;
/// `SYNC_LOG` (an env-filter) overrides.
fn init_logging(verbose: u8, quiet: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SYNC_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(log_filter(verbose, quiet)));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

/// The env-filter for `-q` / no flag / `-v` / `-vv`.
fn log_filter(verbose: u8, quiet: bool) -> &'static str {
    match (quiet, verbose) {
        (true, _) => "off,sync_cli=error,sync_client=error",
        (false, 0) => "off,sync_cli=warn,sync_client=warn",
        (false, 1) => "info,iroh=warn,noq=warn",
        _ => "debug",
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    /// What a subscriber with the filter of (`verbose`, `quiet`) prints for
    /// an iroh error, an iroh warning and a sync_client warning.
    fn printed(verbose: u8, quiet: bool) -> String {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&buf);
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(super::log_filter(
                verbose, quiet,
            )))
            .with_writer(move || Writer(Arc::clone(&sink)))
            .with_ansi(false)
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            tracing::error!(target: "iroh::socket", "Endpoint dropped without calling close");
            tracing::warn!(target: "noq::connection", "a library warning");
            tracing::warn!(target: "sync_client::client", "our own warning");
        });
        String::from_utf8(buf.lock().unwrap().clone()).unwrap()
    }

    struct Writer(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Writer {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn library_log_lines_need_verbose() {
        let default = printed(0, false);
        assert!(!default.contains("Endpoint dropped"), "{default}");
        assert!(!default.contains("library warning"), "{default}");
        assert!(default.contains("our own warning"), "{default}");
        let quiet = printed(0, true);
        assert!(quiet.is_empty(), "{quiet}");
        let verbose = printed(1, false);
        assert!(verbose.contains("Endpoint dropped"), "{verbose}");
        assert!(verbose.contains("library warning"), "{verbose}");
    }
}
