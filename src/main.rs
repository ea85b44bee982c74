//! sslwrap: a TLS wrapper for plaintext TCP services, a drop-in replacement for the classic sslwrap 2.0.6. This file
//! only wires things up: read the command line, set up logging, build the TLS context (reading the key before any
//! privilege is dropped), and hand over to inetd or daemon mode. It must stay thin.

use std::os::unix::ffi::OsStringExt;

use sslwrap::options::{self, Command, Config, UsageError};
use sslwrap::service_manager::Handover;
use sslwrap::{daemon, inetd, log, pass_phrase, privs, seccomp, sys, tls};
use sslwrap::{log_error, log_warning};

fn main() {
    sys::restore_default_child_signal();
    let handover = Handover::take_from_environment();
    // Kept as the bytes given: file names and -exec arguments need not be UTF-8.
    let words: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    let parsed = options::parse(&words);
    // A -pass pass:TEXT is in these copies of the command line too; the parsed options hold what is needed.
    for word in words {
        drop(sys::Secret::from(word.into_vec()));
    }
    sys::close_inherited_descriptors(&descriptors_to_keep(&parsed, &handover));
    log::init();
    let status = match parsed {
        Err(error) => report_usage_error(&error),
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
        Ok(Command::Run(mut config)) => run(&mut config, &handover),
    };
    std::process::exit(status);
}

/// The inherited descriptors sslwrap uses: the `-fd` plaintext side, the `-pass fd:N` pass phrase (closed once
/// read), and the sockets a service manager passed.
fn descriptors_to_keep(parsed: &Result<Command, UsageError>, handover: &Handover) -> Vec<i32> {
    let mut keep = handover.passed_fds.clone();
    if let Ok(Command::Run(config)) = parsed {
        if let options::Backend::Fd(fd) = config.backend {
            keep.push(fd);
        }
        if let Some(pass_phrase::PassSource::Descriptor(fd)) = config.tls.pass {
            keep.push(fd);
        }
    }
    keep
}

/// The errors (logged, as 2.0.6 did), then on stderr the synopsis and where the rest is: a 50-line usage text would
/// scroll the error off the screen.
fn report_usage_error(error: &UsageError) -> i32 {
    for message in &error.messages {
        log_error!("{message}");
    }
    let mut text = String::new();
    if let Some(option) = error.suggestion {
        text.push_str(&format!("did you mean -{option}?\n"));
    }
    text.push_str(&format!(
        "{}\nsslwrap -help lists every option\n",
        options::SYNOPSIS
    ));
    log::to_stderr(&text);
    1
}

/// Loads everything that needs the original privileges, then serves: in daemon mode on `-accept` or on the
/// listening sockets a service manager passed (socket activation), otherwise in inetd mode on fds 0 and 1.
fn run(config: &mut Config, handover: &Handover) -> i32 {
    log::set_verbosity(config.verbosity);
    if config.seccomp {
        if !seccomp::supported_architecture() {
            // The legacy lines must keep working on every architecture sslwrap builds on; the filter's numbers are
            // written and tested for x86_64 and aarch64 only.
            log_warning!(
                "no seccomp filter for this architecture: sessions run unconfined (-noseccomp says so on purpose)"
            );
            config.seccomp = false;
        } else if let Err(reason) = seccomp::check_available() {
            log_error!("{reason}");
            return 1;
        }
    }
    let passed = match handover.listeners() {
        Ok(passed) => passed,
        Err(reason) => {
            log_error!("{reason}");
            return 1;
        }
    };
    let inetd_mode = config.accept.is_none() && passed.is_empty();
    if let Some(pass_phrase::PassSource::Descriptor(fd)) = config.tls.pass {
        if handover.passed_fds.contains(&fd) {
            log_error!(
                "-pass fd:{fd}: descriptor {fd} is a socket the service manager passed, not a pass phrase"
            );
            return 1;
        }
    }
    if let Some(source) = &mut config.tls.pass {
        if let Err(reason) = pass_phrase::read_at_start_up(source, inetd_mode) {
            log_error!("{reason}");
            return 1;
        }
    }
    let usage = if inetd_mode {
        tls::ContextUse::OneConnection
    } else {
        tls::ContextUse::Daemon
    };
    // Daemon mode warms OpenSSL up before it builds the context its session processes inherit: the warm-up's
    // freed temporaries are then filled by the context's own long-lived objects, instead of staying holes in pages
    // of the parent's heap where every session process's first allocations would land and copy the page (measured
    // with `make bench`: 302 instead of 262 KiB of PSS per idle connection when it came after).
    if !inetd_mode {
        tls::warm_up();
    }
    let context = tls::build_context(&config.tls, config.state, usage);
    pass_phrase::forget_start_up();
    // Only the pass phrase was taken out of the command line; from here on it is read only.
    let config: &Config = config;
    let context = match context {
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
    let listeners = match &config.accept {
        Some(value) => {
            if !passed.is_empty() {
                log_warning!(
                    "-accept is given, so the {} listening sockets the service manager passed are closed; leave \
                     -accept out to serve on them",
                    passed.len()
                );
            }
            match daemon::bind(value) {
                Ok(listener) => vec![listener],
                Err(reason) => {
                    log_error!("{reason}");
                    return 1;
                }
            }
        }
        None if !passed.is_empty() => passed,
        None if config.pidfile.is_some() => {
            log_error!(
                "-pidfile is for daemon mode (-accept, or the listening sockets of socket activation); in inetd \
                 mode each connection is a process of its own, which inetd tracks"
            );
            return 1;
        }
        None => return inetd::run(config, &context, identity),
    };
    let notifier = handover.notifier();
    daemon::run(config, context, listeners, identity, notifier)
}
