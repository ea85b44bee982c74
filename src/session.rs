//! The life of one client connection, the same in inetd and daemon mode: the TLS handshake (bounded by the
//! handshake deadline) or, with -starttls, the protocol's plaintext phase and then the handshake, both after the
//! PROXY header with -accept_proxy (accept_proxy.rs); then the plaintext side (backend.rs) and the relay; and exactly
//! one log line for any failure. A normal end is logged only with -debug, and so is a connection that closes without
//! sending a byte (after its PROXY header, if any): that is a load balancer's health check, not a failure. As soon
//! as both sides are open the process confines itself with the seccomp filter (seccomp.rs) unless -noseccomp: a
//! classic session after its handshake (its backend is connected only then), a STARTTLS session before its plaintext
//! phase, so that phase and the handshake are confined too (unless the handshake reads files: -CApath, -certdir;
//! then right after it). It must never fall back to plaintext once STARTTLS was accepted, and never read a
//! byte of the relay unconfined when confinement was asked for.

use std::time::{Duration, Instant};

use openssl::ssl::{ErrorCode, SslContext, SslStream};

use crate::accept_proxy::{self, Refusal};
use crate::backend::{Backside, TlsState};
use crate::client::{ClientAddresses, ClientIo};
use crate::options::Config;
use crate::plaintext_phase::{self, PhaseEnd, PhaseLimits};
use crate::proxy_header::{Carried, ProxyVersion, ReceivedHeader};
use crate::reason::{openssl_reason, tls_reason};
use crate::relay::{self, Limits, RelayError, SessionFilter, Transfer};
use crate::seccomp::{self, SessionKind};
use crate::starttls::{AfterTls, StartTlsMode};
use crate::tls_facts::TlsFacts;
use crate::{log, log_debug, log_error, log_notice, sys, tls};

/// Exit status of a session process: 0 for a normal end, 1 for a failure (already logged).
pub type SessionStatus = i32;

/// Serves one client to the end. One deadline covers everything before TLS is up: the PROXY header, the plaintext
/// phase and the handshake.
pub fn serve(config: &Config, context: &SslContext, mut client: ClientIo) -> SessionStatus {
    let deadline = Instant::now() + config.handshake_timeout;
    let mut addresses = client.addresses();
    if let Some(accept) = &config.accept_proxy {
        addresses = match accept_proxy::receive(&mut client, &addresses, accept, deadline) {
            Ok((header, carried)) => {
                log_debug!("{}: {}", addresses.peer_text(), header_note(&header));
                carried
            }
            Err(refusal) => return report_refusal(config, &addresses, refusal),
        };
    }
    let peer = addresses.peer_text();
    match config.starttls {
        None => serve_tls_from_the_start(config, context, client, &addresses, &peer, deadline),
        Some(mode) => {
            serve_with_starttls(config, context, client, mode, &addresses, &peer, deadline)
        }
    }
}

/// What a received header said, for the -debug line.
fn header_note(header: &ReceivedHeader) -> String {
    let version = match header.version {
        ProxyVersion::V1 => "v1",
        ProxyVersion::V2 => "v2",
    };
    match header.carried {
        Carried::Client {
            source,
            destination,
        } => format!("PROXY {version} header: client {source}, to {destination}"),
        Carried::Local => {
            format!("PROXY {version} LOCAL header: the connection's own addresses apply")
        }
        Carried::Unknown => {
            format!(
                "PROXY {version} header without addresses: the connection's own addresses apply"
            )
        }
    }
}

/// One log line for a connection dropped before or at its PROXY header, naming the real peer; none above -debug
/// for a health check.
fn report_refusal(config: &Config, real: &ClientAddresses, refusal: Refusal) -> SessionStatus {
    let peer = real.peer_text();
    match refusal {
        Refusal::ClosedSilently => {
            log_debug!("{peer}: closed without sending a byte (a health check?)");
            return 0;
        }
        Refusal::NotAllowed => log_error!(
            "{peer}: refused: -accept_proxy_from does not allow this peer to send a PROXY header"
        ),
        Refusal::TimedOut => log_error!(
            "{peer}: no PROXY header within {} s; connection dropped",
            config.handshake_timeout.as_secs()
        ),
        Refusal::Invalid(reason) => {
            log_error!("{peer}: no valid PROXY header ({reason}); connection dropped")
        }
    }
    1
}

/// The classic sslwrap session: handshake first, then the plaintext side, then the relay.
fn serve_tls_from_the_start(
    config: &Config,
    context: &SslContext,
    client: ClientIo,
    addresses: &ClientAddresses,
    peer: &str,
    deadline: Instant,
) -> SessionStatus {
    let mut stream = match accept_tls(context, client, deadline, config.handshake_timeout) {
        Ok(stream) => stream,
        Err(failure) if failure.silent_close => {
            log_debug!("{peer}: closed without sending a byte (a health check?)");
            return 0;
        }
        Err(failure) => {
            log_error!("TLS handshake with {peer} failed: {}", failure.reason);
            return 1;
        }
    };
    let facts = TlsFacts::of(stream.ssl());
    log_debug!(
        "{peer}: {} {} established{}",
        facts.protocol,
        facts.cipher,
        alpn_note(&facts)
    );
    // Only the backend's own connect limit applies: the handshake is over.
    let mut backend = match Backside::open(config, addresses, TlsState::Established(&facts), None) {
        Ok(backend) => backend,
        Err(reason) => {
            log_error!("{peer}: {reason}");
            close_cleanly(&mut stream);
            return 1;
        }
    };
    if let Err(reason) = confine(config, &backend, peer) {
        log_error!("{peer}: {reason}");
        backend.finish();
        return 1;
    }
    let outcome = relay::relay_until_closed(&mut stream, &mut backend, None, relay_limits(config));
    backend.finish();
    report_end(peer, outcome)
}

/// `-starttls`: the backend first (its greeting), the protocol's plaintext phase, then TLS on the same connection.
fn serve_with_starttls(
    config: &Config,
    context: &SslContext,
    mut client: ClientIo,
    mode: StartTlsMode,
    addresses: &ClientAddresses,
    peer: &str,
    // One limit for everything before TLS (PROXY header, backend connection, greeting, plaintext phase, handshake),
    // so a client trickling bytes cannot keep the session, and its backend connection, open.
    deadline: Instant,
) -> SessionStatus {
    let tls = if mode.required {
        TlsState::RequiredLater
    } else {
        TlsState::NotYet
    };
    let mut backend = match Backside::open(config, addresses, tls, Some(deadline)) {
        Ok(backend) => backend,
        Err(reason) => {
            log_error!("{peer}: {reason}");
            return 1;
        }
    };
    let confined_after_handshake = handshake_reads_files(config);
    if !confined_after_handshake {
        if let Err(reason) = confine(config, &backend, peer) {
            log_error!("{peer}: {reason}");
            backend.finish();
            return 1;
        }
    }
    let limits = PhaseLimits {
        deadline,
        total: config.handshake_timeout,
        idle: config.idle_timeout,
    };
    let outcome = match plaintext_phase::run(&mut client, &mut backend, mode, peer, &limits) {
        PhaseEnd::Closed { failed } => {
            backend.finish();
            return i32::from(failed);
        }
        PhaseEnd::PlainRelay => {
            if confined_after_handshake {
                if let Err(reason) = confine(config, &backend, peer) {
                    log_error!("{peer}: {reason}");
                    backend.finish();
                    return 1;
                }
            }
            relay::relay_until_closed(&mut client, &mut backend, None, relay_limits(config))
        }
        PhaseEnd::BeginTls {
            backend_pending, ..
        } => {
            match upgrade(
                config,
                context,
                client,
                mode,
                &backend_pending,
                peer,
                deadline,
            )
            .and_then(|upgraded| {
                if confined_after_handshake {
                    confine(config, &backend, peer)
                        .map_err(|reason| format!("{peer}: {reason}"))?;
                }
                Ok(upgraded)
            }) {
                Ok((mut stream, mut filter)) => relay::relay_until_closed(
                    &mut stream,
                    &mut backend,
                    Some(&mut filter),
                    relay_limits(config),
                ),
                Err(reason) => {
                    log_error!("{reason}");
                    backend.finish();
                    return 1;
                }
            }
        }
    };
    backend.finish();
    report_end(peer, outcome)
}

/// The switch: the handshake on the raw connection (never a fallback to plaintext once STARTTLS was accepted), then
/// the backend bytes held back during the switch, filtered, inside TLS. The handshake gets what is left of the time
/// before TLS, not a limit of its own.
fn upgrade(
    config: &Config,
    context: &SslContext,
    client: ClientIo,
    mode: StartTlsMode,
    backend_pending: &[u8],
    peer: &str,
    deadline: Instant,
) -> Result<(SslStream<ClientIo>, AfterTls), String> {
    let mut stream =
        accept_tls(context, client, deadline, config.handshake_timeout).map_err(|failure| {
            format!(
                "TLS handshake with {peer} after STARTTLS failed: {}",
                failure.reason
            )
        })?;
    let facts = TlsFacts::of(stream.ssl());
    log_debug!(
        "{peer}: STARTTLS done, {} {} established{}",
        facts.protocol,
        facts.cipher,
        alpn_note(&facts)
    );
    let mut filter = AfterTls::new(mode.proto);
    let mut pending = Vec::new();
    filter.backend_to_client(backend_pending, &mut pending);
    plaintext_phase::write_all_within(&mut stream, &pending, deadline)
        .map_err(|reason| format!("{peer}: {reason}"))?;
    Ok((stream, filter))
}

/// Installs the seccomp filter for this session's kind of plaintext side, unless -noseccomp. From here on the
/// process can only use the descriptors it holds; the error names the way out.
fn confine(config: &Config, backend: &Backside, peer: &str) -> Result<(), String> {
    if !config.seccomp {
        return Ok(());
    }
    let kind = match backend {
        Backside::Program { .. } => SessionKind::Program,
        Backside::Tcp(_) | Backside::Descriptor(_) => SessionKind::Socket,
    };
    log::never_reconnect();
    let started = sys::monotonic_microseconds();
    seccomp::confine(kind).map_err(|error| {
        format!("cannot install the seccomp filter: {error}; -noseccomp runs sessions unconfined")
    })?;
    // What the confinement costs a session, for whoever weighs it against -noseccomp.
    log_debug!(
        "{peer}: confined by the seccomp filter in {} us",
        sys::monotonic_microseconds().saturating_sub(started)
    );
    Ok(())
}

/// Whether OpenSSL opens files during the handshake: -CApath certificates and CRLs are looked up when a client
/// certificate is checked, and -certdir in inetd mode opens the file of the name the client asks for.
fn handshake_reads_files(config: &Config) -> bool {
    config.tls.ca_path.is_some() || config.tls.certdir.is_some()
}

/// ", ALPN h2" for the session line when a protocol was agreed, else nothing.
fn alpn_note(facts: &TlsFacts) -> String {
    facts
        .alpn
        .as_ref()
        .map_or_else(String::new, |protocol| format!(", ALPN {protocol}"))
}

/// A session on which nothing moved for this long gives its relay buffers back: an idle session (a mail client in
/// IMAP IDLE, for hours) then holds no buffer memory, while one in flow never pays for taking them again.
const RELEASE_BUFFERS_AFTER: Duration = Duration::from_secs(1);

/// The relay's time limits from the command line.
fn relay_limits(config: &Config) -> Limits {
    Limits {
        idle: config.idle_timeout,
        close: config.close_timeout,
        release_buffers_after: RELEASE_BUFFERS_AFTER,
    }
}

/// Logs how the relay ended and turns it into the exit status.
pub fn report_end(peer: &str, outcome: Result<Transfer, RelayError>) -> SessionStatus {
    match outcome {
        Ok(transfer) => {
            log_debug!(
                "{peer}: closed, {} bytes from client, {} bytes to client",
                transfer.from_client,
                transfer.to_client
            );
            0
        }
        Err(error @ RelayError::ClientGone(_)) => {
            log_notice!("{peer}: session ended: {error}");
            1
        }
        Err(error @ RelayError::Closing { complete: true, .. }) => {
            log_notice!("{peer}: session ended: {error}");
            0
        }
        Err(error) => {
            log_error!("{peer}: session ended: {error}");
            1
        }
    }
}

/// Sends close_notify so the client sees an orderly end, then gives up quietly (the client may be gone).
pub fn close_cleanly(stream: &mut SslStream<ClientIo>) {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        match stream.shutdown() {
            Ok(_) => return,
            Err(error) if error.code() == ErrorCode::WANT_WRITE => {
                if !sys::wait_until(stream.get_ref().write_fd(), sys::POLLOUT, deadline)
                    .unwrap_or(false)
                {
                    return;
                }
            }
            Err(_) => return,
        }
    }
}

/// Why a handshake did not complete.
pub struct HandshakeFailure {
    pub reason: String,
    /// The client closed or reset the connection before sending a byte of it: a load balancer's health check.
    pub silent_close: bool,
}

impl From<String> for HandshakeFailure {
    fn from(reason: String) -> HandshakeFailure {
        HandshakeFailure {
            reason,
            silent_close: false,
        }
    }
}

/// Runs the server side of the handshake on a non-blocking client, waiting with poll until the deadline.
pub fn accept_tls(
    context: &SslContext,
    client: ClientIo,
    deadline: Instant,
    limit: Duration,
) -> Result<SslStream<ClientIo>, HandshakeFailure> {
    let received_before = client.received();
    let ssl = tls::new_session(context).map_err(|e| openssl_reason(&e))?;
    let mut stream = SslStream::new(ssl, client).map_err(|e| openssl_reason(&e))?;
    loop {
        let error = match stream.accept() {
            Ok(()) => return Ok(stream),
            Err(error) => error,
        };
        let (fd, events) = match error.code() {
            ErrorCode::WANT_READ => (stream.get_ref().read_fd(), sys::POLLIN),
            ErrorCode::WANT_WRITE => (stream.get_ref().write_fd(), sys::POLLOUT),
            // Without a byte from the client OpenSSL has nothing to fail on but the connection's end.
            _ => {
                return Err(HandshakeFailure {
                    reason: handshake_failure_reason(&stream, &error),
                    silent_close: stream.get_ref().received() == received_before,
                });
            }
        };
        match sys::wait_until(fd, events, deadline) {
            Ok(true) => {}
            Ok(false) => return Err(format!("not completed within {} s", limit.as_secs()).into()),
            Err(e) => return Err(format!("poll failed: {e}").into()),
        }
    }
}

fn handshake_failure_reason(stream: &SslStream<ClientIo>, error: &openssl::ssl::Error) -> String {
    if error.code() == ErrorCode::SYSCALL
        && error.io_error().is_none()
        && error.ssl_error().is_none()
    {
        return "client closed the connection during the handshake".to_string();
    }
    let reason = tls_reason(error);
    if let Some(refusal) = tls::refused_alpn_offer(stream.ssl()) {
        return format!("{reason} ({refusal})");
    }
    let verify = stream.ssl().verify_result();
    if verify != openssl::x509::X509VerifyResult::OK {
        return match tls::refused_client_certificate(stream.ssl()) {
            Some(certificate) => format!(
                "{reason} (client certificate: {}; {certificate})",
                verify.error_string()
            ),
            None => format!("{reason} (client certificate: {})", verify.error_string()),
        };
    }
    reason
}
