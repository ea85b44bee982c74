//! sslwrap: a TLS wrapper for plaintext TCP services, a drop-in replacement for the classic sslwrap 2.0.6. This file
//! only wires things up: read the command line, set up logging, build the TLS context (reading the key before any
//! privilege is dropped), and hand over to inetd or daemon mode. It must stay thin.

mod backend;
mod client;
mod daemon;
mod exec;
mod inetd;
mod log;
mod options;
mod plaintext_phase;
mod privs;
mod proxy_header;
mod reason;
mod relay;
mod session;
mod starttls;
mod sys;
mod tls;
mod tls_facts;

use options::{Command, Config, UsageError};

fn main() {
    sys::restore_default_child_signal();
    // Kept as the bytes given: file names and -exec arguments need not be UTF-8.
    let words: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    let parsed = options::parse(&words);
    sys::close_inherited_descriptors(&descriptors_to_keep(&parsed));
    log::init();
    let status = match parsed {
        Err(UsageError(messages)) => report_usage_error(&messages),
        Ok(Command::Help) => {
            print!("{}", options::usage());
            0
        }
        Ok(Command::Version) => {
            println!(
                "sslwrap {} (linked with {})",
                options::VERSION,
                tls::openssl_version()
            );
            0
        }
        Ok(Command::Run(config)) => run(&config),
    };
    std::process::exit(status);
}

/// The inherited descriptors sslwrap uses: the `-fd` plaintext side, and the sockets a service manager passes
/// (LISTEN_FDS, from fd 3 on, when LISTEN_PID is this process).
fn descriptors_to_keep(parsed: &Result<Command, UsageError>) -> Vec<i32> {
    let mut keep = Vec::new();
    if let Ok(Command::Run(config)) = parsed {
        if let options::Backend::Fd(fd) = config.backend {
            keep.push(fd);
        }
    }
    let for_us = std::env::var("LISTEN_PID").ok() == Some(std::process::id().to_string());
    let passed: i32 = std::env::var("LISTEN_FDS")
        .ok()
        .and_then(|count| count.parse().ok())
        .unwrap_or(0);
    if for_us {
        keep.extend((0..passed.clamp(0, 1024)).map(|index| 3 + index));
    }
    keep
}

fn report_usage_error(messages: &[String]) -> i32 {
    for message in messages {
        log_error!("{message}");
    }
    log::to_stderr(&options::usage());
    1
}

/// Loads everything that needs the original privileges, then serves.
fn run(config: &Config) -> i32 {
    log::set_verbosity(config.verbosity);
    let context = match tls::build_context(&config.tls, config.state) {
        Ok(context) => context,
        Err(reason) => {
            log_error!("{reason}");
            return 1;
        }
    };
    let identity = match privs::resolve(
        config.user.as_deref(),
        config.group.as_deref(),
        config.chroot.as_ref(),
    ) {
        Ok(identity) => identity,
        Err(reason) => {
            log_error!("{reason}");
            return 1;
        }
    };
    match &config.accept {
        Some(value) => match daemon::bind(value) {
            Ok(listener) => daemon::run(config, context, listener, identity),
            Err(reason) => {
                log_error!("{reason}");
                1
            }
        },
        None => inetd::run(config, &context, identity),
    }
}
