//! Builds the OpenSSL server context from the command line: protocol range, ciphers, certificate chain and key (or
//! the `-nocert` ephemeral certificate and anonymous suites), client verification, the CA list and the ALPN choice
//! (`-alpn`). Nothing else in sslwrap configures OpenSSL. Every failure is a message naming the file or option and
//! the reason. The TLS policy is set here: the server's cipher order, no renegotiation, and forward-secret AEAD
//! suites only for TLS 1.2; protocol versions and TLS 1.3 suites follow the system OpenSSL's defaults. It must never
//! change what an explicit option asks for (`-cipher`, `-nocert`, the legacy protocol options); asking for something
//! older is logged as a warning.

use std::path::Path;
use std::sync::{Arc, OnceLock};

use openssl::asn1::Asn1Time;
use openssl::bn::{BigNum, MsbOption};
use openssl::dh::Dh;
use openssl::ec::{EcGroup, EcKey};
use openssl::error::ErrorStack;
use openssl::ex_data::Index;
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::{PKey, Private};
use openssl::rsa::Rsa;
use openssl::ssl::{
    AlpnError, Ssl, SslContext, SslContextBuilder, SslFiletype, SslMethod, SslMode, SslOptions,
    SslRef, SslSessionCacheMode, SslVerifyMode, SslVersion, select_next_proto,
};
use openssl::stack::Stack;
use openssl::x509::store::{X509Lookup, X509StoreBuilder};
use openssl::x509::verify::X509VerifyFlags;
use openssl::x509::{
    X509, X509Crl, X509CrlRef, X509Name, X509NameBuilder, X509Ref, X509StoreContext,
    X509StoreContextRef, X509VerifyResult,
};

use crate::ocsp_staple;
use crate::options::{CrlCheck, Protocol, TlsOptions};
use crate::pass_phrase::{self, PassSource};
use crate::reason::{io_reason, openssl_reason};
use crate::regular_file::{self, Refusal};
use crate::ticket_keys::{KEY_FILE_LENGTHS, TicketKey, TicketKeys};
use crate::{log_debug, log_warning, sys};

/// The cipher list used with `-nocert` unless `-cipher` says otherwise: the usual suites first, anonymous ones last so
/// that only a client offering nothing else gets one. aNULL suites exist only at security level 0.
const NOCERT_CIPHERS: &str = "ALL:!eNULL:+aNULL:@SECLEVEL=0";

/// The TLS 1.2 cipher list used unless the command line asks for something else (`-cipher`, `-nocert`, or protocol
/// options that leave no TLS 1.2): forward-secret key exchange (ECDHE, DHE) with an AEAD cipher (AES-GCM,
/// ChaCha20-Poly1305) only, the set and order of Mozilla's "intermediate" configuration: ECDHE before DHE, and
/// AES-128-GCM first, as safe as AES-256 and faster. No CBC suite (Lucky13 and its kin), no static RSA key exchange, nothing a scanner grades "average". TLS 1.3
/// suites are not set here: OpenSSL's defaults are all AEAD and forward-secret already.
const POLICY_CIPHERS: &str = "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:\
                                  ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:\
                                  ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305:\
                                  DHE-RSA-AES128-GCM-SHA256:DHE-RSA-AES256-GCM-SHA384:DHE-RSA-CHACHA20-POLY1305";

/// The protocol versions sslwrap can ask OpenSSL for, oldest first.
const ALL_TLS: [Protocol; 4] = [
    Protocol::Tls1,
    Protocol::Tls1_1,
    Protocol::Tls1_2,
    Protocol::Tls1_3,
];

/// The linked OpenSSL, for messages.
pub fn openssl_version() -> &'static str {
    openssl::version::version()
}

/// Who uses a context, which decides who could ever redeem the session tickets it issues.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContextUse {
    /// inetd mode: this process serves one connection and exits.
    OneConnection,
    /// Daemon mode: the parent builds it once and every forked session process inherits it.
    Daemon,
}

/// An OCSP response file to staple for a context's certificate, and what a broken one means.
#[derive(Debug, Clone, Copy)]
pub struct OcspFile<'a> {
    pub path: &'a Path,
    /// The option it comes from, which starts every message about it: `-ocsp`, or `-certdir` for a response beside
    /// a certificate of DIR.
    pub option: &'static str,
    /// -ocsp: a file that cannot be read or is no OCSP response stops the start. A -certdir response file does not:
    /// its certificate is served without a staple and a warning names the file, as for a response that does not hold.
    pub required: bool,
}

/// Builds the server context. Called once at start-up (and on SIGHUP in daemon mode).
pub fn build_context(
    options: &TlsOptions,
    log_states: bool,
    usage: ContextUse,
) -> Result<SslContext, String> {
    let ocsp = options.ocsp.as_deref().map(|path| OcspFile {
        path,
        option: "-ocsp",
        required: true,
    });
    build_context_stapling(options, ocsp, log_states, usage)
}

/// As [`build_context`], with `ocsp` instead of the -ocsp file: certdir.rs gives each certificate of DIR the
/// response beside it.
pub fn build_context_stapling(
    options: &TlsOptions,
    ocsp: Option<OcspFile>,
    log_states: bool,
    usage: ContextUse,
) -> Result<SslContext, String> {
    let mut context = SslContextBuilder::new(SslMethod::tls_server())
        .map_err(|e| openssl_failure("OpenSSL", &e))?;
    // Partial writes and moving buffers let the relay retry with whatever is pending; released buffers keep an idle
    // connection small.
    context.set_mode(
        SslMode::ENABLE_PARTIAL_WRITE
            | SslMode::ACCEPT_MOVING_WRITE_BUFFER
            | SslMode::RELEASE_BUFFERS,
    );
    // The server's cipher order decides (SSL_OP_CIPHER_SERVER_PREFERENCE), so a client offering a weaker suite first
    // still gets the strongest one both sides have. A client's renegotiation request is answered with the
    // no_renegotiation alert (SSL_OP_NO_RENEGOTIATION): it would only let a client make the server redo handshakes.
    context.set_options(
        SslOptions::NO_COMPRESSION
            | SslOptions::IGNORE_UNEXPECTED_EOF
            | SslOptions::CIPHER_SERVER_PREFERENCE
            | SslOptions::NO_RENEGOTIATION,
    );
    // Whole socket reads instead of a header read and a body read per record; the relay drains OpenSSL's buffer
    // before it ever polls the socket, so nothing read ahead is left waiting.
    context.set_read_ahead(true);
    if options.bugs {
        context.set_options(SslOptions::ALL);
    }
    // Forked children cannot share a server-side session cache; stateless tickets resume across all of them. The
    // session id context is the same in every sslwrap process with the same client verification, so that a ticket
    // sealed by one opens in another.
    context.set_session_cache_mode(SslSessionCacheMode::OFF);
    // Made with the context, so that forked session processes inherit the slot instead of each making it.
    refused_certificate_slot();
    context
        .set_session_id_context(&session_id_context(options))
        .map_err(|e| openssl_failure("session id context", &e))?;
    set_session_tickets(&mut context, options, usage)?;
    let protocols = set_protocols(&mut context, options)?;
    set_ciphers(&mut context, options, protocols)?;
    set_dh(&mut context, options)?;
    let mut ca_file = CaFile::new(options.ca_file.as_deref());
    match (options.certdir.as_deref(), usage) {
        // One connection: its one certificate is set on it, the -cert one or the one its name chooses.
        (Some(dir), ContextUse::OneConnection) => {
            let default = DefaultCertificate::for_options(options, ocsp, &mut ca_file)?;
            ocsp_staple::staple_per_connection(&mut context)?;
            crate::certdir::choose_for_the_connection(&mut context, dir, options, default)?;
        }
        (certdir, _) => {
            if options.nocert {
                use_ephemeral_certificate(&mut context)?;
            } else {
                let served = use_certificate_files(&mut context, options)?;
                if let Some(ocsp) = ocsp {
                    set_ocsp_staple(&mut context, &mut ca_file, &served, ocsp)?;
                }
            }
            if let Some(dir) = certdir {
                crate::certdir::choose_by_server_name(&mut context, dir, options, log_states)?;
            }
        }
    }
    if options.nocert {
        log_debug!("-nocert: using an ephemeral self-signed certificate and anonymous suites");
    }
    set_client_verification(&mut context, options, &mut ca_file)?;
    set_alpn(&mut context, &options.alpn)?;
    if log_states {
        sys::report_handshake_states(&mut context, log_handshake_state);
    }
    Ok(context.build())
}

/// One full handshake of each protocol version inside this process, before the context is built and any client is
/// served (see main.rs for why before the context): OpenSSL fetches
/// and caches its algorithm implementations on first use, and forked children inherit what the parent has already
/// cached instead of each building (and writing) it anew: measured with `make bench`, 285 instead of 325 KiB of PSS
/// per idle connection.
///
/// The handshakes use a stand-in context with a throw-away ECDSA certificate, never the configured one: the
/// configured key's own state (RSA blinding values, made on first use) would otherwise be made in the parent and be
/// the same in every child, and a context a default client cannot talk to (with -Verify, say) would refuse it.
pub fn warm_up() {
    let stand_in = SslContextBuilder::new(SslMethod::tls_server())
        .map_err(|e| openssl_reason(&e))
        .and_then(|mut builder| {
            use_ephemeral_certificate(&mut builder)?;
            Ok(builder.build())
        });
    match stand_in.and_then(|stand_in| handshake_both_versions(&stand_in)) {
        Ok(()) => log_debug!("warm-up: handshakes done with a stand-in ECDSA key"),
        Err(reason) => log_debug!("warm-up handshake failed: {reason}"),
    }
    // A failed warm-up leaves its errors queued; no client's failure report may show them.
    drop(ErrorStack::get());
}

fn handshake_both_versions(context: &SslContext) -> Result<(), String> {
    handshake_in_process(context, SslVersion::TLS1_3)?;
    handshake_in_process(context, SslVersion::TLS1_2)
}

fn handshake_in_process(context: &SslContext, version: SslVersion) -> Result<(), String> {
    use openssl::ssl::{HandshakeError, MidHandshakeSslStream, Ssl, SslStream};
    use std::os::unix::net::UnixStream;
    type Step = Result<SslStream<UnixStream>, HandshakeError<UnixStream>>;
    fn advance(step: Step) -> Result<Option<MidHandshakeSslStream<UnixStream>>, String> {
        match step {
            Ok(_) => Ok(None),
            Err(HandshakeError::WouldBlock(middle)) => Ok(Some(middle)),
            Err(other) => Err(other.to_string()),
        }
    }
    let (server_end, client_end) = UnixStream::pair().map_err(|e| e.to_string())?;
    for end in [&server_end, &client_end] {
        end.set_nonblocking(true).map_err(|e| e.to_string())?;
    }
    let mut client_context =
        SslContextBuilder::new(SslMethod::tls_client()).map_err(|e| openssl_reason(&e))?;
    client_context
        .set_max_proto_version(Some(version))
        .map_err(|e| openssl_reason(&e))?;
    let client = Ssl::new(&client_context.build()).map_err(|e| openssl_reason(&e))?;
    let server = Ssl::new(context).map_err(|e| openssl_reason(&e))?;
    let mut client_side = advance(client.connect(client_end))?;
    let mut server_side = advance(server.accept(server_end))?;
    // A handshake takes at most a few flights each way; the bound only guards against a library surprise.
    for _ in 0..16 {
        if client_side.is_none() && server_side.is_none() {
            return Ok(());
        }
        if let Some(middle) = client_side.take() {
            client_side = advance(middle.handshake())?;
        }
        if let Some(middle) = server_side.take() {
            server_side = advance(middle.handshake())?;
        }
    }
    Err("no end after 16 rounds".to_string())
}

fn log_handshake_state(what: &str, detail: &str) {
    crate::log_notice!("TLS {what}: {detail}");
}

fn openssl_failure(what: &str, errors: &ErrorStack) -> String {
    format!("{what}: {}", openssl_reason(errors))
}

fn protocol_flag(protocol: Protocol) -> &'static str {
    match protocol {
        Protocol::Ssl2 => "-ssl2",
        Protocol::Ssl3 => "-ssl3",
        Protocol::Tls1 => "-tls1",
        Protocol::Tls1_1 => "-tls1_1",
        Protocol::Tls1_2 => "-tls1_2",
        Protocol::Tls1_3 => "-tls1_3",
    }
}

fn ssl_version(protocol: Protocol) -> Option<SslVersion> {
    match protocol {
        Protocol::Ssl2 => None,
        Protocol::Ssl3 => Some(SslVersion::SSL3),
        Protocol::Tls1 => Some(SslVersion::TLS1),
        Protocol::Tls1_1 => Some(SslVersion::TLS1_1),
        Protocol::Tls1_2 => Some(SslVersion::TLS1_2),
        Protocol::Tls1_3 => Some(SslVersion::TLS1_3),
    }
}

/// Refuses what the linked library cannot do, with its version in the message.
fn check_protocol_exists(protocol: Protocol) -> Result<(), String> {
    match protocol {
        Protocol::Ssl2 => Err(format!(
            "-ssl2: SSLv2 is not supported by {} (it was removed in OpenSSL 1.1.0); use the default protocols",
            openssl_version()
        )),
        Protocol::Ssl3 if cfg!(sslwrap_no_ssl3) => Err(format!(
            "-ssl3: SSLv3 is not available: {} was built without it",
            openssl_version()
        )),
        _ => Ok(()),
    }
}

/// What the protocol options leave, for the choice of the TLS 1.2 cipher list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ProtocolsLeft {
    /// TLS 1.2 is allowed (older versions too, but unusable at the security level OpenSSL has by default, since their
    /// handshakes sign with MD5/SHA-1): the policy cipher list applies.
    WithTls1_2,
    /// TLS 1.2 is not allowed (`-tls1_3`, `-no_tls1_2`, or only legacy versions): OpenSSL's default list stays, as
    /// before. TLS 1.3 never uses it, the legacy versions have no suite in the policy list, and OpenSSL refuses every
    /// handshake ("no ciphers available") when the lowest version allowed has no suite in the list.
    WithoutTls1_2,
}

/// Sets the protocol range and says what it leaves. Versions older than TLS 1.2 need security level 0 in OpenSSL 3
/// (their handshakes use MD5/SHA-1), so asking for them lowers the level and says so.
fn set_protocols(
    context: &mut SslContextBuilder,
    options: &TlsOptions,
) -> Result<ProtocolsLeft, String> {
    let choice = &options.protocols;
    let mut disable = SslOptions::empty();
    for protocol in &choice.disabled {
        disable |= match protocol {
            Protocol::Ssl2 => SslOptions::empty(),
            Protocol::Ssl3 => SslOptions::NO_SSLV3,
            Protocol::Tls1 => SslOptions::NO_TLSV1,
            Protocol::Tls1_1 => SslOptions::NO_TLSV1_1,
            Protocol::Tls1_2 => SslOptions::NO_TLSV1_2,
            Protocol::Tls1_3 => SslOptions::NO_TLSV1_3,
        };
    }
    context.set_options(disable);
    let allowed: Vec<Protocol> = match choice.only {
        Some(protocol) => {
            check_protocol_exists(protocol)?;
            let version = ssl_version(protocol);
            context
                .set_min_proto_version(version)
                .map_err(|e| openssl_failure(protocol_flag(protocol), &e))?;
            context
                .set_max_proto_version(version)
                .map_err(|e| openssl_failure(protocol_flag(protocol), &e))?;
            vec![protocol]
        }
        None => ALL_TLS.to_vec(),
    };
    let remaining: Vec<Protocol> = allowed
        .into_iter()
        .filter(|p| !choice.disabled.contains(p))
        .collect();
    if remaining.is_empty() {
        return Err(
            "no protocol version is left: the -no_* options disable every version allowed"
                .to_string(),
        );
    }
    let only_legacy = remaining
        .iter()
        .all(|p| matches!(p, Protocol::Ssl3 | Protocol::Tls1 | Protocol::Tls1_1));
    if only_legacy {
        context.set_security_level(0);
        let names: Vec<&str> = remaining.iter().map(|p| protocol_flag(*p)).collect();
        log_warning!(
            "only legacy protocols are allowed ({}): security level lowered to 0; these protocols are insecure",
            names.join(" ")
        );
    }
    if remaining.contains(&Protocol::Tls1_2) {
        Ok(ProtocolsLeft::WithTls1_2)
    } else {
        Ok(ProtocolsLeft::WithoutTls1_2)
    }
}

/// The TLS 1.2 (and older) cipher list: `-cipher` as given; with `-nocert` the list with anonymous suites; without
/// TLS 1.2 OpenSSL's default; otherwise [`POLICY_CIPHERS`]. TLS 1.3 suites only change with -ciphersuites.
fn set_ciphers(
    context: &mut SslContextBuilder,
    options: &TlsOptions,
    protocols: ProtocolsLeft,
) -> Result<(), String> {
    let list = match (&options.cipher, options.nocert, protocols) {
        (Some(list), _, _) => Some(list.as_str()),
        (None, true, _) => Some(NOCERT_CIPHERS),
        (None, false, ProtocolsLeft::WithoutTls1_2) => None,
        (None, false, ProtocolsLeft::WithTls1_2) => Some(POLICY_CIPHERS),
    };
    if let Some(list) = list {
        context.set_cipher_list(list).map_err(|e| {
            format!(
                "-cipher '{list}': OpenSSL accepts none of these ciphers ({})",
                openssl_reason(&e)
            )
        })?;
        if options.cipher.is_some() && list.contains("@SECLEVEL=0") {
            log_warning!(
                "-cipher '{list}' lowers the security level to 0: weak ciphers and keys are accepted"
            );
        }
    }
    if let Some(suites) = &options.ciphersuites {
        context.set_ciphersuites(suites).map_err(|e| {
            format!(
                "-ciphersuites '{suites}': OpenSSL accepts none of these suites ({})",
                openssl_reason(&e)
            )
        })?;
    }
    Ok(())
}

fn set_dh(context: &mut SslContextBuilder, options: &TlsOptions) -> Result<(), String> {
    let Some(path) = &options.dhparam else {
        sys::enable_automatic_dh(context);
        return Ok(());
    };
    let pem = read_file("-dhparam", path)?.bytes;
    let dh = Dh::params_from_pem(&pem).map_err(|e| {
        format!(
            "-dhparam: no DH parameters in {}: {}",
            path.display(),
            openssl_reason(&e)
        )
    })?;
    context.set_tmp_dh(&dh).map_err(|e| {
        format!(
            "-dhparam: cannot use the DH parameters in {}: {}",
            path.display(),
            openssl_reason(&e)
        )
    })
}

/// Session tickets. With -ticketkey the tickets are sealed with the first key file and opened with any of them, so
/// every process given the same files (inetd-mode processes, a restarted daemon, other hosts) resumes the sessions of
/// the others. Without it OpenSSL seals with a random key of this context: a daemon's session processes inherit it
/// from the parent, but in inetd mode no other process could ever open a ticket, so none is sent (no TLS 1.2 ticket
/// extension, no TLS 1.3 NewSessionTicket).
fn set_session_tickets(
    context: &mut SslContextBuilder,
    options: &TlsOptions,
    usage: ContextUse,
) -> Result<(), String> {
    let mut keys = Vec::new();
    for path in &options.ticket_keys {
        keys.push(read_ticket_key(path)?);
    }
    match TicketKeys::new(keys) {
        Some(keys) => {
            sys::seal_tickets_with(context, keys).map_err(|e| openssl_failure("-ticketkey", &e))?;
            log_debug!(
                "session tickets sealed with the key in {}",
                options.ticket_keys[0].display()
            );
        }
        None if usage == ContextUse::OneConnection => {
            context.set_options(SslOptions::NO_TICKET);
            context
                .set_num_tickets(0)
                .map_err(|e| openssl_failure("session tickets", &e))?;
        }
        None => {}
    }
    Ok(())
}

/// One -ticketkey file: exactly 48 or 80 bytes, as nginx's ssl_session_ticket_key wants them.
fn read_ticket_key(path: &Path) -> Result<TicketKey, String> {
    let file = read_file("-ticketkey", path)?;
    let mode = file.mode;
    let key = TicketKey::from_file_bytes(file.bytes).map_err(|length| {
        format!(
            "-ticketkey: {} is {length} bytes long; a session ticket key file holds exactly {} or {} random bytes \
             (make one with: openssl rand 80 > FILE)",
            path.display(),
            KEY_FILE_LENGTHS[0],
            KEY_FILE_LENGTHS[1]
        )
    })?;
    warn_if_readable_by_others("-ticketkey", "session ticket key file", path, mode);
    Ok(key)
}

/// The largest certificate, key, DH parameter or CA file read: 4 MiB, some twenty times the system CA bundle
/// (about 220 KB). A wrong path (a device, a log) fails at once instead of filling memory, also on a SIGHUP reload.
const MAX_FILE_BYTES: usize = 4 << 20;

/// A file as read: its bytes and its permission bits, both from the one descriptor opened.
struct FileContents {
    bytes: sys::Secret,
    mode: u32,
}

/// Reads a regular file of at most MAX_FILE_BYTES, following symbolic links. The file is opened without blocking,
/// so that a FIFO is refused like any other file that is not regular instead of waiting for a writer forever.
fn read_file(option: &str, path: &Path) -> Result<FileContents, String> {
    use std::os::unix::fs::PermissionsExt;
    let cannot_read = |error: std::io::Error| {
        format!(
            "{option}: cannot read {}: {}",
            path.display(),
            io_reason(&error)
        )
    };
    let (file, metadata) = regular_file::open(path).map_err(|refusal| match refusal {
        Refusal::Unreadable(error) => cannot_read(error),
        Refusal::NotRegular => format!("{option}: {} is not a regular file", path.display()),
    })?;
    let length = usize::try_from(metadata.len())
        .ok()
        .filter(|&length| length <= MAX_FILE_BYTES)
        .ok_or_else(|| {
            format!(
                "{option}: {} is larger than {} MiB",
                path.display(),
                MAX_FILE_BYTES >> 20
            )
        })?;
    // At most the size fstat reported: a file still growing cannot push the read past the limit.
    let bytes = sys::Secret::read_at_most(&file, length).map_err(cannot_read)?;
    Ok(FileContents {
        bytes,
        mode: metadata.permissions().mode(),
    })
}

/// Every certificate of a PEM file, in order (PEM_bytes_read_bio_secmem, then d2i_X509 as PEM_read_bio_X509 does).
/// The secure-heap reader matters when the file also holds the key: the key block, skipped here, is then decoded
/// into memory OpenSSL clears on freeing, where PEM_read_bio_X509 would leave a plain copy of it in the freed heap.
fn read_certificates(pem: &[u8]) -> Result<Vec<X509>, ErrorStack> {
    let mut reader = sys::SecurePemReader::new(pem)?;
    let mut certificates = Vec::new();
    while let Some(block) = reader.next_block(c"CERTIFICATE")? {
        certificates.push(X509::from_der(&block)?);
    }
    Ok(certificates)
}

/// The certificate sent to clients, the chain sent after it and its private key, as read from the -cert (and -key)
/// file, known to belong together.
pub struct ServedCertificate {
    leaf: X509,
    chain: Vec<X509>,
    key: PKey<Private>,
}

/// Loads the certificate chain and the private key onto the context (see [`read_certificate_files`]).
fn use_certificate_files(
    context: &mut SslContextBuilder,
    options: &TlsOptions,
) -> Result<ServedCertificate, String> {
    let served = read_certificate_files(options)?;
    let cert_path = options.cert.as_path();
    let cannot_use = |what: &str, e: &ErrorStack| {
        format!(
            "-cert: cannot use the {what} in {}: {}",
            cert_path.display(),
            openssl_reason(e)
        )
    };
    context
        .set_certificate(&served.leaf)
        .map_err(|e| cannot_use("certificate", &e))?;
    for intermediate in served.chain.iter().cloned() {
        context
            .add_extra_chain_cert(intermediate)
            .map_err(|e| cannot_use("chain", &e))?;
    }
    context
        .set_private_key(&served.key)
        .map_err(|e| cannot_use("private key", &e))?;
    Ok(served)
}

/// Reads the certificate chain and the private key, checks they belong together, and warns when the key file can be
/// read by others. An encrypted key needs `-pass`: an inetd-started process has nobody to ask for a pass phrase.
fn read_certificate_files(options: &TlsOptions) -> Result<ServedCertificate, String> {
    CertificateFiles::read(options)?.decode(options)
}

/// The -cert file and, if it is another file, the -key file, as read (not yet decoded).
pub struct CertificateFiles {
    cert_file: FileContents,
    separate_key_file: Option<FileContents>,
}

impl CertificateFiles {
    fn read(options: &TlsOptions) -> Result<CertificateFiles, String> {
        let cert_path = options.cert.as_path();
        let cert_file = read_file("-cert", cert_path)?;
        let separate_key_file = match options.key.as_deref() {
            Some(key_path) if key_path != cert_path => Some(read_file("-key", key_path)?),
            _ => None,
        };
        Ok(CertificateFiles {
            cert_file,
            separate_key_file,
        })
    }

    fn key_file(&self) -> &FileContents {
        self.separate_key_file.as_ref().unwrap_or(&self.cert_file)
    }

    fn decode(&self, options: &TlsOptions) -> Result<ServedCertificate, String> {
        decode_certificate_files(options, &self.cert_file, self.key_file())
    }
}

fn decode_certificate_files(
    options: &TlsOptions,
    cert_file: &FileContents,
    key_file: &FileContents,
) -> Result<ServedCertificate, String> {
    let cert_path = options.cert.as_path();
    let chain = read_certificates(&cert_file.bytes).map_err(|e| {
        format!(
            "-cert: {} is not a PEM certificate: {}",
            cert_path.display(),
            openssl_reason(&e)
        )
    })?;
    let mut chain = chain.into_iter();
    let Some(leaf) = chain.next() else {
        return Err(format!(
            "-cert: no certificate found in {}",
            cert_path.display()
        ));
    };
    let chain: Vec<X509> = chain.collect();
    warn_if_issuer_missing(cert_path, &leaf, &chain);
    // Without -key (or with -key naming the same file) the certificate file holds the key: it is read only once.
    let (key_option, key_path) = match options.key.as_deref() {
        Some(key_path) => ("-key", key_path),
        None => ("-cert", cert_path),
    };
    let key = load_private_key(key_option, key_path, &key_file.bytes, options.pass.as_ref())?;
    // What SSL_CTX_use_PrivateKey and SSL_use_PrivateKey check (X509_check_private_key).
    let matches = leaf.public_key().is_ok_and(|public| public.public_eq(&key));
    if !matches {
        return Err(format!(
            "{key_option}: the private key in {} does not match the certificate in {}",
            key_path.display(),
            cert_path.display()
        ));
    }
    warn_if_readable_by_others(key_option, "private key file", key_path, key_file.mode);
    Ok(ServedCertificate { leaf, chain, key })
}

/// inetd mode with -certdir: a certificate, its key and its staple, served on the one connection that asked for its
/// name (SSL_use_certificate and its kin on the SSL object) instead of on a context of its own, which would cost
/// the process a second SSL_CTX (measured with `make bench`: what made -certdir dearer than -cert alone).
pub struct ConnectionCertificate {
    served: ServedCertificate,
    staple: Option<Arc<ocsp_staple::StapleToSend>>,
}

/// inetd mode with -certdir: what a client gets when DIR has nothing for its name, the -cert certificate (or the
/// -nocert one). Its files are read at start-up, before privileges are dropped, like every key file; but they are
/// decoded only for a client that gets them, so that a client DIR has a file for costs the process one certificate
/// and key to decode, not two (`make bench`, 1,000 names: the -certdir connection cost 1.10x the -cert alone when
/// both were decoded). An encrypted key, whose pass phrase is used once at start-up, and a certificate with an -ocsp
/// response, which is judged at start-up, are decoded at once.
pub enum DefaultCertificate {
    Decoded(ConnectionCertificate),
    Read {
        files: CertificateFiles,
        options: Box<TlsOptions>,
    },
}

impl DefaultCertificate {
    fn for_options(
        options: &TlsOptions,
        ocsp: Option<OcspFile>,
        ca_file: &mut CaFile,
    ) -> Result<DefaultCertificate, String> {
        if options.nocert {
            return ConnectionCertificate::ephemeral().map(DefaultCertificate::Decoded);
        }
        let files = CertificateFiles::read(options)?;
        if ocsp.is_some() || is_encrypted_pem(&files.key_file().bytes) {
            return ConnectionCertificate::decode(&files, options, ocsp, ca_file)
                .map(DefaultCertificate::Decoded);
        }
        let options = Box::new(TlsOptions {
            // The key is not encrypted: no pass phrase is kept for it.
            pass: None,
            ..options.clone()
        });
        Ok(DefaultCertificate::Read { files, options })
    }

    /// Serves it on `ssl`; an error (its files do not decode, or OpenSSL refuses them) names the file.
    pub fn serve_on(&self, ssl: &mut SslRef) -> Result<(), String> {
        let decoded;
        let certificate = match self {
            DefaultCertificate::Decoded(certificate) => certificate,
            DefaultCertificate::Read { files, options } => {
                decoded =
                    ConnectionCertificate::decode(files, options, None, &mut CaFile::new(None))?;
                &decoded
            }
        };
        certificate
            .serve_on(ssl)
            .map_err(|e| format!("-cert: cannot use the certificate: {}", openssl_reason(&e)))
    }
}

impl ConnectionCertificate {
    /// Reads the files of `options.cert` (and `options.key`) and judges the response in `ocsp`, as for a context.
    pub fn load(
        options: &TlsOptions,
        ocsp: Option<OcspFile>,
    ) -> Result<ConnectionCertificate, String> {
        let files = CertificateFiles::read(options)?;
        Self::decode(
            &files,
            options,
            ocsp,
            &mut CaFile::new(options.ca_file.as_deref()),
        )
    }

    /// Decodes files already read, and judges the response in `ocsp` against their certificate.
    fn decode(
        files: &CertificateFiles,
        options: &TlsOptions,
        ocsp: Option<OcspFile>,
        ca_file: &mut CaFile,
    ) -> Result<ConnectionCertificate, String> {
        let served = files.decode(options)?;
        let staple = match ocsp {
            Some(ocsp) => judge_staple(ca_file, &served, ocsp)?.map(Arc::new),
            None => None,
        };
        Ok(ConnectionCertificate { served, staple })
    }

    fn ephemeral() -> Result<ConnectionCertificate, String> {
        let (leaf, key) =
            ephemeral_certificate().map_err(|e| openssl_failure("-nocert certificate", &e))?;
        let served = ServedCertificate {
            leaf,
            chain: Vec::new(),
            key,
        };
        Ok(ConnectionCertificate {
            served,
            staple: None,
        })
    }

    pub fn leaf(&self) -> &X509Ref {
        &self.served.leaf
    }

    /// Serves this certificate on `ssl`, whose context has none. Nothing is set when the leaf itself is refused
    /// (the security level's "ee key too small"), so that the caller can still serve another.
    pub fn serve_on(&self, ssl: &mut SslRef) -> Result<(), ErrorStack> {
        ssl.set_certificate(&self.served.leaf)?;
        ssl.set_private_key(&self.served.key)?;
        for intermediate in self.served.chain.iter().cloned() {
            ssl.add_chain_cert(intermediate)?;
        }
        if let Some(staple) = &self.staple {
            ocsp_staple::staple_this_connection(ssl, Arc::clone(staple))?;
        }
        Ok(())
    }
}

/// `-ocsp FILE` (or a -certdir response file): the DER OCSP response to staple for the certificate, judged by
/// ocsp_staple.rs against the issuer found in the certificate file's chain, else in -CAfile. A -ocsp file that is no
/// OCSP response is an error; a response that does not hold for the certificate (expired, another certificate's,
/// revoked, badly signed) is a warning and is not stapled, so that a stale file left by a failed refresh never stops
/// the service.
fn set_ocsp_staple(
    context: &mut SslContextBuilder,
    ca_file: &mut CaFile,
    served: &ServedCertificate,
    ocsp: OcspFile,
) -> Result<(), String> {
    match judge_staple(ca_file, served, ocsp)? {
        Some(staple) => ocsp_staple::staple_on_request(context, staple),
        None => Ok(()),
    }
}

/// The response of an -ocsp or -certdir file to staple for `served`, if it holds (see [`set_ocsp_staple`]).
fn judge_staple(
    ca_file: &mut CaFile,
    served: &ServedCertificate,
    ocsp: OcspFile,
) -> Result<Option<ocsp_staple::StapleToSend>, String> {
    let OcspFile {
        path: file,
        option,
        required,
    } = ocsp;
    let not_usable = |message: String| match required {
        true => Err(message),
        false => {
            log_warning!("{message}; its certificate is served without a stapled response");
            Ok(None)
        }
    };
    let der = match read_file(option, file) {
        Ok(contents) => contents.bytes,
        Err(message) => return not_usable(message),
    };
    let mut candidates = served.chain.clone();
    candidates.extend_from_slice(ca_file.certificates()?);
    let issuer = candidates
        .iter()
        .find(|candidate| is_issued_by(&served.leaf, candidate));
    let verdict = match ocsp_staple::judge(&der, &served.leaf, issuer.map(|c| &**c), &candidates) {
        Ok(verdict) => verdict,
        Err(e) => {
            return not_usable(format!(
                "{option}: {} is not a DER OCSP response (as openssl ocsp -respout writes): {}",
                file.display(),
                openssl_reason(&e)
            ));
        }
    };
    match verdict {
        ocsp_staple::Verdict::Staple(staple) => {
            ocsp_staple::StapleToSend::new(option, file, staple).map(Some)
        }
        ocsp_staple::Verdict::NotStapled(why) => {
            log_warning!(
                "{option}: the response in {} is not stapled: {why}",
                file.display()
            );
            Ok(None)
        }
    }
}

/// Warns when the certificate is sent without the certificate that issued it: a client that has only the root CA
/// (every client, with a public CA's intermediate) then cannot build the chain. No warning for a self-signed
/// certificate, nor for one whose issuer is in the system trust store: clients have that issuer too, and sending a
/// root would change nothing (a client trusts only the roots it has; RFC 8446 lets a server leave the root out).
fn warn_if_issuer_missing(cert_path: &Path, leaf: &X509Ref, rest_of_chain: &[X509]) {
    let self_signed = matches!(
        leaf.subject_name().try_cmp(leaf.issuer_name()),
        Ok(std::cmp::Ordering::Equal)
    ) && leaf
        .public_key()
        .and_then(|key| leaf.verify(&key))
        .unwrap_or(false);
    if self_signed
        || rest_of_chain
            .iter()
            .any(|candidate| is_issued_by(leaf, candidate))
        || issuer_is_in_system_store(leaf)
    {
        return;
    }
    log_warning!(
        "-cert: the certificate in {} is sent without the certificate of its issuer ({}): clients that do not have \
         that issuer will fail with 'unable to verify the first certificate'; put the intermediate certificates after \
         the certificate in the -cert file (with certbot: fullchain.pem, not cert.pem)",
        cert_path.display(),
        crate::tls_facts::one_line_name(leaf.issuer_name())
    );
}

/// Whether `issuer` issued `subject`: its name, key identifier and key usage fit (X509_check_issued) and its key
/// verifies the signature.
fn is_issued_by(subject: &X509Ref, issuer: &X509Ref) -> bool {
    issuer.issued(subject) == X509VerifyResult::OK
        && issuer
            .public_key()
            .and_then(|key| subject.verify(&key))
            .unwrap_or(false)
}

/// Whether OpenSSL's chain building finds the certificate's issuer in the system trust store (the default paths,
/// SSL_CERT_FILE and SSL_CERT_DIR as for every OpenSSL program). Only the chain built counts, not whether it verifies:
/// an expired certificate is no incomplete chain. Loads the store only for a certificate whose file lacks its issuer.
fn issuer_is_in_system_store(certificate: &X509Ref) -> bool {
    let chain_length = || -> Result<usize, ErrorStack> {
        let mut store = X509StoreBuilder::new()?;
        store.set_default_paths()?;
        let store = store.build();
        let untrusted = Stack::new()?;
        let mut context = X509StoreContext::new()?;
        context.init(&store, certificate, &untrusted, |context| {
            context.verify_cert()?;
            Ok(context.chain().map_or(0, |chain| chain.len()))
        })
    };
    let found = chain_length().is_ok_and(|length| length > 1);
    // A failed look-up leaves its errors queued; no client's failure report may show them.
    drop(ErrorStack::get());
    found
}

/// The curves whose keys take the short path below: the ones TLS servers use.
const USUAL_CURVES: [Nid; 3] = [Nid::X9_62_PRIME256V1, Nid::SECP384R1, Nid::SECP521R1];

/// The private key of a PEM file. RSA keys, and EC keys on the usual curves, in PKCS#8, PKCS#1 or SEC1 form go
/// through OpenSSL's own decoders for exactly that structure; any other key, or one those decoders refuse, goes to
/// OpenSSL's generic decoder (PEM_read_bio_PrivateKey), which reads every type it knows and words the error.
///
/// The short path exists because in OpenSSL 3.0 the generic decoder (and with it d2i_AutoPrivateKey and
/// EVP_PKCS82PKEY) first builds its table of every decoder; see sys.rs. The copies of the key it leaves, as read in
/// OpenSSL 3.0's source:
/// - PEM framing and base64 decoding (PEM_bytes_read_bio_secmem): secure-heap buffers, cleared when freed, for the
///   key block and for every block skipped before it; but the base64 context (EVP_ENCODE_CTX) is freed without
///   clearing and keeps up to the last 64 base64 characters of each block, about its last 48 bytes of DER;
/// - PKCS#8 (d2i_PKCS8_PRIV_KEY_INFO): its copy of the inner key is cleansed when the structure is freed;
/// - RSA (d2i_RSAPrivateKey): the private numbers go straight from the DER into secure BIGNUMs, cleared when freed;
/// - EC (d2i_ECPrivateKey): the private scalar is copied into an ASN.1 OCTET STRING that is freed without clearing.
///
/// Keys of other types take the generic decoder, whose plain PEM reader promises nothing; so do encrypted keys, which
/// only it decrypts (see decrypt_private_key).
fn load_private_key(
    option: &str,
    path: &Path,
    pem: &[u8],
    pass: Option<&PassSource>,
) -> Result<PKey<Private>, String> {
    if is_encrypted_pem(pem) {
        return decrypt_private_key(option, path, pem, pass);
    }
    if let Some(source) = pass {
        log_debug!(
            "-pass {source}: the private key in {} is not encrypted; no pass phrase is used",
            path.display()
        );
    }
    if !pem
        .windows(b"PRIVATE KEY-----".len())
        .any(|window| window == b"PRIVATE KEY-----")
    {
        let hint = if option == "-cert" {
            " (use -key FILE if it is in another file)"
        } else {
            ""
        };
        return Err(format!(
            "{option}: no private key found in {}{hint}",
            path.display()
        ));
    }
    match decode_usual_key(pem) {
        Some(key) => {
            log_debug!("key in {} read directly", path.display());
            Ok(key)
        }
        // An empty pass phrase callback: OpenSSL must never prompt on the terminal.
        None => PKey::private_key_from_pem_callback(pem, |_| Ok(0)).map_err(|e| {
            format!(
                "{option}: cannot read the private key in {}: {}",
                path.display(),
                openssl_reason(&e)
            )
        }),
    }
}

/// An encrypted private key, decrypted by OpenSSL with the pass phrase from `-pass`, which is overwritten right after.
fn decrypt_private_key(
    option: &str,
    path: &Path,
    pem: &[u8],
    pass: Option<&PassSource>,
) -> Result<PKey<Private>, String> {
    let Some(source) = pass else {
        return Err(format!(
            "{option}: the private key in {} is encrypted with a pass phrase; give it with -pass SOURCE (file:PATH, \
             env:VAR, fd:N or stdin, see sslwrap(8)), or store the key unencrypted (openssl pkey -in FILE -out \
             NEWFILE)",
            path.display()
        ));
    };
    let pass_phrase = pass_phrase::obtain(source).map_err(|reason| {
        format!(
            "{option}: cannot decrypt the private key in {}: {reason}",
            path.display()
        )
    })?;
    let key = sys::decrypt_private_key(pem, &pass_phrase).map_err(|e| {
        // OpenSSL tries its decoders, then its legacy reader: each failure repeats the same reason.
        let reason = e.errors().first().and_then(|error| error.reason());
        format!(
            "{option}: cannot decrypt the private key in {} with the pass phrase from -pass {source} (is it the \
             right one?): {}",
            path.display(),
            reason.map_or_else(|| openssl_reason(&e), str::to_string)
        )
    })?;
    log_debug!(
        "-pass {source}: the private key in {} is decrypted",
        path.display()
    );
    Ok(key)
}

/// The first private key block, if it is an RSA or usual-curve EC key that OpenSSL's structure-specific decoders
/// accept; None leaves the file to the generic decoder.
fn decode_usual_key(pem: &[u8]) -> Option<PKey<Private>> {
    let mut reader = sys::SecurePemReader::new(pem).ok()?;
    let block = reader.next_block(c"ANY PRIVATE KEY").ok()??;
    match block.label() {
        b"RSA PRIVATE KEY" => PKey::from_rsa(Rsa::private_key_from_der(&block).ok()?).ok(),
        b"EC PRIVATE KEY" => usual_ec_key(EcKey::private_key_from_der(&block).ok()?),
        b"PRIVATE KEY" => {
            let info = sys::Pkcs8PrivateKeyInfo::from_der(&block).ok()?;
            match info.algorithm() {
                Nid::RSAENCRYPTION => {
                    PKey::from_rsa(Rsa::private_key_from_der(info.private_key()).ok()?).ok()
                }
                Nid::X9_62_ID_ECPUBLICKEY => {
                    let curve = info.named_curve()?;
                    USUAL_CURVES.contains(&curve).then_some(())?;
                    usual_ec_key(sys::ec_private_key_on_curve(curve, info.private_key()).ok()?)
                }
                _ => None,
            }
        }
        _ => None,
    }
}

/// The EC key, if it lies on one of the usual curves (a SEC1 structure may name its own).
fn usual_ec_key(key: EcKey<Private>) -> Option<PKey<Private>> {
    let curve = key.group().curve_name()?;
    USUAL_CURVES.contains(&curve).then_some(())?;
    PKey::from_ec_key(key).ok()
}

fn is_encrypted_pem(pem: &[u8]) -> bool {
    let contains = |needle: &[u8]| pem.windows(needle.len()).any(|window| window == needle);
    contains(b"-----BEGIN ENCRYPTED PRIVATE KEY-----") || contains(b"Proc-Type: 4,ENCRYPTED")
}

fn warn_if_readable_by_others(option: &str, what: &str, path: &Path, mode: u32) {
    let mode = mode & 0o777;
    if mode & 0o077 != 0 {
        log_warning!(
            "{option}: {what} {} is readable by group or others (mode {mode:o}): chmod 600 it",
            path.display()
        );
    }
}

/// `-nocert`: a throw-away P-256 key and self-signed certificate made at start-up, so that clients which refuse
/// anonymous suites (every TLS 1.3 client) still get an encrypted session; the anonymous suites stay for old clients.
fn use_ephemeral_certificate(context: &mut SslContextBuilder) -> Result<(), String> {
    let (certificate, key) =
        ephemeral_certificate().map_err(|e| openssl_failure("-nocert certificate", &e))?;
    context
        .set_certificate(&certificate)
        .map_err(|e| openssl_failure("-nocert certificate", &e))?;
    context
        .set_private_key(&key)
        .map_err(|e| openssl_failure("-nocert key", &e))?;
    Ok(())
}

fn ephemeral_certificate() -> Result<(X509, PKey<Private>), ErrorStack> {
    let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1)?;
    let key = PKey::from_ec_key(EcKey::generate(&group)?)?;
    let mut name = X509NameBuilder::new()?;
    name.append_entry_by_nid(Nid::COMMONNAME, "sslwrap -nocert")?;
    let name = name.build();
    let mut serial = BigNum::new()?;
    serial.rand(64, MsbOption::MAYBE_ZERO, false)?;
    let mut builder = X509::builder()?;
    builder.set_version(2)?;
    let serial = serial.to_asn1_integer()?;
    builder.set_serial_number(&serial)?;
    builder.set_subject_name(&name)?;
    builder.set_issuer_name(&name)?;
    builder.set_pubkey(&key)?;
    let not_before = Asn1Time::days_from_now(0)?;
    let not_after = Asn1Time::days_from_now(365)?;
    builder.set_not_before(&not_before)?;
    builder.set_not_after(&not_after)?;
    builder.sign(&key, MessageDigest::sha256())?;
    Ok((builder.build(), key))
}

/// What a resumed session must have been verified under: OpenSSL resumes a session only in the context it was made
/// in, and a resumed client shows no certificate again. With -ticketkey shared between configurations, a session of
/// one without -Verify (or with another CA) must not resume in one that requires a certificate from this CA, so the
/// context names the client verification settings, as nginx's ssl_session_id_context does.
fn session_id_context(options: &TlsOptions) -> [u8; 32] {
    let settings = format!(
        "sslwrap verify={:?} CAfile={:?} CApath={:?} CRLfile={:?} crl_check={:?}",
        options.verify, options.ca_file, options.ca_path, options.crl_file, options.crl_check
    );
    openssl::sha::sha256(settings.as_bytes())
}

/// `-verify N` asks for a client certificate and checks any that is sent; `-Verify N` also refuses clients without
/// one. Trust comes from -CAfile/-CApath, else the system store; the CAfile's names are sent as the acceptable list.
fn set_client_verification(
    context: &mut SslContextBuilder,
    options: &TlsOptions,
    ca_file: &mut CaFile,
) -> Result<(), String> {
    let Some((depth, required)) = options.verify else {
        return Ok(());
    };
    let mut mode = SslVerifyMode::PEER;
    if required {
        mode |= SslVerifyMode::FAIL_IF_NO_PEER_CERT;
    }
    context.set_verify_callback(mode, note_refused_certificate);
    context.set_verify_depth(depth);
    if let Some(file) = ca_file.path {
        trust_ca_file(context, file, ca_file.certificates()?)?;
    }
    if let Some(dir) = &options.ca_path {
        if !dir.is_dir() {
            return Err(format!("-CApath: {} is not a directory", dir.display()));
        }
        // The openssl crate passes the directory as text; a lossy name would make OpenSSL search another directory.
        let Some(dir_name) = dir.to_str() else {
            return Err(format!(
                "-CApath: {} is not valid UTF-8; use a directory whose name is",
                dir.display()
            ));
        };
        let lookup = context
            .cert_store_mut()
            .add_lookup(X509Lookup::hash_dir())
            .map_err(|e| openssl_failure("-CApath", &e))?;
        lookup.add_dir(dir_name, SslFiletype::PEM).map_err(|e| {
            format!(
                "-CApath: cannot use {}: {}",
                dir.display(),
                openssl_reason(&e)
            )
        })?;
    }
    if options.ca_file.is_none() && options.ca_path.is_none() {
        context
            .set_default_verify_paths()
            .map_err(|e| openssl_failure("system CA store", &e))?;
    }
    set_crl_checking(context, options)
}

/// The slot of an SSL object where the verify callback notes the client certificate it refused: OpenSSL keeps a
/// client's certificate only once it is verified, so the failure's log line could not name it otherwise.
fn refused_certificate_slot() -> Option<Index<Ssl, OnceLock<String>>> {
    static SLOT: OnceLock<Option<Index<Ssl, OnceLock<String>>>> = OnceLock::new();
    *SLOT.get_or_init(|| Ssl::new_ex_index().ok())
}

/// A new SSL object for one client, with the slot for the refused certificate's name.
pub fn new_session(context: &SslContext) -> Result<Ssl, ErrorStack> {
    let mut ssl = Ssl::new(context)?;
    if let Some(slot) = refused_certificate_slot() {
        ssl.set_ex_data(slot, OnceLock::new());
    }
    Ok(ssl)
}

/// The certificate the verify callback refused in this session, as "subject NAME" for the client's own certificate
/// or "NAME at depth N of its chain" for an issuer's.
pub fn refused_client_certificate(ssl: &SslRef) -> Option<&str> {
    let note = ssl.ex_data(refused_certificate_slot()?)?;
    note.get().map(String::as_str)
}

/// The verify callback: OpenSSL's verdict stands; the first certificate it refuses is noted in the session's slot.
fn note_refused_certificate(verified: bool, store: &mut X509StoreContextRef) -> bool {
    if verified {
        return true;
    }
    let note = X509StoreContext::ssl_idx()
        .ok()
        .and_then(|ssl_index| store.ex_data(ssl_index))
        .zip(refused_certificate_slot())
        .and_then(|(ssl, slot)| ssl.ex_data(slot));
    if let (Some(note), Some(certificate)) = (note, store.current_cert()) {
        let name = crate::tls_facts::one_line_name(certificate.subject_name());
        // Only the first refusal is kept: OpenSSL stops at it, and a later call would only repeat it.
        let _ = note.set(match store.error_depth() {
            0 => format!("subject {name}"),
            depth => format!("{name} at depth {depth} of its chain"),
        });
    }
    false
}

/// `-crl_check`, `-crl_check_all` and `-CRLfile` (which implies -crl_check): OpenSSL refuses a revoked client
/// certificate, and also any certificate checked whose CA has no CRL here ("unable to get certificate CRL"). The CRLs
/// come from -CRLfile and, as in s_server, from the hashed HASH.rN files of -CApath. Without any of either every
/// client certificate would be refused, so that is a start-up error.
fn set_crl_checking(context: &mut SslContextBuilder, options: &TlsOptions) -> Result<(), String> {
    let Some(check) = options.crl_check else {
        return Ok(());
    };
    let (option, flags) = match check {
        CrlCheck::Leaf => ("-crl_check", X509VerifyFlags::CRL_CHECK),
        CrlCheck::WholeChain => (
            "-crl_check_all",
            X509VerifyFlags::CRL_CHECK | X509VerifyFlags::CRL_CHECK_ALL,
        ),
    };
    match &options.crl_file {
        Some(file) => {
            for crl in read_crl_file(file)? {
                sys::add_crl_to_store(context.cert_store_mut(), &crl).map_err(|e| {
                    format!(
                        "-CRLfile: cannot use the CRLs in {}: {}",
                        file.display(),
                        openssl_reason(&e)
                    )
                })?;
            }
        }
        None => require_hashed_crls(option, options.ca_path.as_deref())?,
    }
    context
        .verify_param_mut()
        .set_flags(flags)
        .map_err(|e| openssl_failure(option, &e))
}

/// Every CRL of a PEM file (each `X509 CRL` block, decoded by d2i_X509_CRL), warning about each one past its
/// nextUpdate.
fn read_crl_file(file: &Path) -> Result<Vec<X509Crl>, String> {
    let pem = read_file("-CRLfile", file)?.bytes;
    let not_pem = |e: ErrorStack| {
        format!(
            "-CRLfile: cannot read the CRLs in {}: {}",
            file.display(),
            openssl_reason(&e)
        )
    };
    let mut reader = sys::SecurePemReader::new(&pem).map_err(not_pem)?;
    let mut crls = Vec::new();
    while let Some(block) = reader.next_block(c"X509 CRL").map_err(not_pem)? {
        crls.push(X509Crl::from_der(&block).map_err(not_pem)?);
    }
    if crls.is_empty() {
        return Err(format!(
            "-CRLfile: no CRL found in {} (PEM blocks \"BEGIN X509 CRL\" expected; a DER file converts with \
             openssl crl -inform DER -in FILE -out FILE.pem)",
            file.display()
        ));
    }
    for crl in &crls {
        warn_if_crl_expired(file, crl);
    }
    Ok(crls)
}

/// A CRL past its nextUpdate makes OpenSSL refuse every certificate of its CA ("CRL has expired") until a newer one
/// is installed. A warning, not an error: sslwrap goes on serving the clients the CRL does not concern.
fn warn_if_crl_expired(file: &Path, crl: &X509CrlRef) {
    let (Some(next_update), Ok(now)) = (crl.next_update(), Asn1Time::days_from_now(0)) else {
        return;
    };
    if next_update < now {
        log_warning!(
            "-CRLfile: the CRL of {} in {} expired on {next_update} (its nextUpdate): every client certificate \
             of that CA is refused with 'CRL has expired' until a newer CRL is installed",
            crate::tls_facts::one_line_name(crl.issuer_name()),
            file.display()
        );
    }
}

/// Without -CRLfile, -CApath must hold at least one hashed CRL (HASH.r0, as `openssl rehash` names them).
fn require_hashed_crls(option: &str, ca_path: Option<&Path>) -> Result<(), String> {
    let is_hashed_crl = |name: &str| {
        name.split_once(".r").is_some_and(|(hash, number)| {
            hash.len() == 8
                && hash.bytes().all(|byte| byte.is_ascii_hexdigit())
                && !number.is_empty()
                && number.bytes().all(|byte| byte.is_ascii_digit())
        })
    };
    let found = ca_path.is_some_and(|dir| {
        std::fs::read_dir(dir).is_ok_and(|entries| {
            entries
                .flatten()
                .any(|entry| entry.file_name().to_str().is_some_and(is_hashed_crl))
        })
    });
    if found {
        return Ok(());
    }
    let where_looked = match ca_path {
        Some(dir) => format!("-CApath {} holds no hashed CRL (HASH.r0)", dir.display()),
        None => "there is no -CApath".to_string(),
    };
    Err(format!(
        "{option}: no CRL to check client certificates against: -CRLfile is not given and {where_looked}; every \
         client certificate would be refused with 'unable to get certificate CRL' (give -CRLfile FILE, or put the \
         CRLs in the -CApath directory and run openssl rehash on it)"
    ))
}

/// Where a connection keeps what its client offered with ALPN when none of it is in -alpn, for the failure line.
static REFUSED_ALPN_OFFER: OnceLock<Index<Ssl, String>> = OnceLock::new();

/// At most this many of a refused client's protocol names are quoted in the log line.
const QUOTED_OFFER_NAMES: usize = 8;

/// `-alpn`: the callback that chooses the application protocol, set once on the context (so in daemon mode every
/// session process inherits it). A client that offers ALPN gets the first name of -alpn that it offers too:
/// SSL_select_next_proto walks its first list, the server's, and takes the first name found in the second. A
/// client offering none of them gets the fatal no_application_protocol alert (RFC 7301, section 3.2: OpenSSL sends
/// it for SSL_TLSEXT_ERR_ALERT_FATAL). A client that sends no ALPN extension never reaches the callback and goes on
/// without ALPN, as with a server that does not know it.
fn set_alpn(context: &mut SslContextBuilder, names: &[String]) -> Result<(), String> {
    if names.is_empty() {
        return Ok(());
    }
    let refused_index = match REFUSED_ALPN_OFFER.get() {
        Some(index) => *index,
        None => {
            let index = Ssl::new_ex_index().map_err(|e| openssl_failure("-alpn", &e))?;
            *REFUSED_ALPN_OFFER.get_or_init(|| index)
        }
    };
    let ours = alpn_wire_form(names);
    let allowed = names.join(",");
    context.set_alpn_select_callback(move |ssl, offered| {
        match select_next_proto(&ours, offered) {
            // The callback must answer with bytes of the client's list, which outlives it; the chosen name is in
            // both lists, so the same name is taken from the client's.
            Some(chosen) => alpn_names(offered)
                .find(|name| *name == chosen)
                .ok_or(AlpnError::ALERT_FATAL),
            None => {
                let offer = describe_alpn_offer(offered);
                ssl.set_ex_data(
                    refused_index,
                    format!("the client offers ALPN {offer}, none of -alpn {allowed}"),
                );
                Err(AlpnError::ALERT_FATAL)
            }
        }
    });
    Ok(())
}

/// Why the handshake refused the client for ALPN, if it did: its offer and -alpn's list.
pub fn refused_alpn_offer(ssl: &SslRef) -> Option<&str> {
    let index = REFUSED_ALPN_OFFER.get()?;
    ssl.ex_data(*index).map(String::as_str)
}

/// ALPN's wire form (RFC 7301, section 3.1): each name after a byte giving its length. options.rs has checked that
/// every name is 1 to 255 bytes long.
fn alpn_wire_form(names: &[String]) -> Vec<u8> {
    let mut wire = Vec::new();
    for name in names {
        wire.push(name.len() as u8);
        wire.extend_from_slice(name.as_bytes());
    }
    wire
}

/// The names of a list in ALPN's wire form; a length running past the end (which OpenSSL has refused before any
/// callback sees the list) ends it.
fn alpn_names(mut wire: &[u8]) -> impl Iterator<Item = &[u8]> {
    std::iter::from_fn(move || {
        let (&length, rest) = wire.split_first()?;
        let (name, after) = rest.split_at_checked(usize::from(length))?;
        wire = after;
        Some(name)
    })
}

/// A client's offer for a log line: its first names, quoted with any byte that is not printable escaped, so that
/// what the client sent cannot pose as another part of the line.
fn describe_alpn_offer(offered: &[u8]) -> String {
    let names: Vec<String> = alpn_names(offered)
        .map(|name| format!("{:?}", String::from_utf8_lossy(name)))
        .collect();
    let quoted = names.len().min(QUOTED_OFFER_NAMES);
    let mut text = names[..quoted].join(" ");
    if names.len() > quoted {
        text.push_str(&format!(" and {} more", names.len() - quoted));
    }
    text
}

/// The certificates of -CAfile, read at most once per context built, when the first part that needs them (the OCSP
/// check looking for an issuer, client verification) asks.
struct CaFile<'a> {
    path: Option<&'a Path>,
    certificates: Option<Vec<X509>>,
}

impl<'a> CaFile<'a> {
    fn new(path: Option<&'a Path>) -> CaFile<'a> {
        CaFile {
            path,
            certificates: None,
        }
    }

    /// The file's certificates (none without -CAfile); an error names the file.
    fn certificates(&mut self) -> Result<&[X509], String> {
        let Some(path) = self.path else {
            return Ok(&[]);
        };
        if self.certificates.is_none() {
            let pem = read_file("-CAfile", path)?.bytes;
            let certificates = read_certificates(&pem).map_err(|e| ca_file_failure(path, &e))?;
            self.certificates = Some(certificates);
        }
        Ok(self.certificates.as_deref().unwrap_or_default())
    }
}

fn ca_file_failure(file: &Path, error: &ErrorStack) -> String {
    format!(
        "-CAfile: cannot use the certificates in {}: {}",
        file.display(),
        openssl_reason(error)
    )
}

/// -CAfile: its certificates become trust anchors, and their subject names, each once and in file order, the list
/// of acceptable CAs sent to clients (what SSL_CTX_load_verify_locations and SSL_load_client_CA_file would make of
/// it, but from bytes read with read_file's checks; CRLs and TRUSTED CERTIFICATE blocks in the file are not used).
fn trust_ca_file(
    context: &mut SslContextBuilder,
    file: &Path,
    certificates: &[X509],
) -> Result<(), String> {
    let failure = |e: ErrorStack| ca_file_failure(file, &e);
    if certificates.is_empty() {
        return Err(format!(
            "-CAfile: no certificate found in {}",
            file.display()
        ));
    }
    let mut names = Stack::<X509Name>::new().map_err(failure)?;
    for certificate in certificates {
        let name = certificate.subject_name();
        let listed = names
            .iter()
            .any(|known| matches!(known.try_cmp(name), Ok(std::cmp::Ordering::Equal)));
        if !listed {
            names
                .push(name.to_owned().map_err(failure)?)
                .map_err(failure)?;
        }
        context
            .cert_store_mut()
            .add_cert(certificate.clone())
            .map_err(failure)?;
    }
    context.set_client_ca_list(names);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encrypted_keys_are_recognised_in_both_pem_styles() {
        assert!(is_encrypted_pem(
            b"-----BEGIN ENCRYPTED PRIVATE KEY-----\nMII"
        ));
        assert!(is_encrypted_pem(
            b"-----BEGIN RSA PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\n"
        ));
        assert!(!is_encrypted_pem(b"-----BEGIN PRIVATE KEY-----\nMII"));
    }

    #[test]
    fn ssl2_is_refused_naming_the_openssl_version() {
        let error = check_protocol_exists(Protocol::Ssl2).unwrap_err();
        assert!(
            error.starts_with("-ssl2: SSLv2 is not supported by OpenSSL"),
            "{error}"
        );
    }

    #[test]
    fn nocert_context_builds_without_files() {
        let options = TlsOptions {
            nocert: true,
            ..TlsOptions::default()
        };
        assert!(build_context(&options, false, ContextUse::Daemon).is_ok());
    }

    #[test]
    fn an_unknown_cipher_list_is_an_error_naming_it() {
        let options = TlsOptions {
            nocert: true,
            cipher: Some("NO-SUCH-CIPHER".into()),
            ..TlsOptions::default()
        };
        let error = build_context(&options, false, ContextUse::Daemon).unwrap_err();
        assert!(error.starts_with("-cipher 'NO-SUCH-CIPHER'"), "{error}");
    }

    #[test]
    fn alpn_names_go_on_the_wire_after_their_lengths_and_read_back() {
        let wire = alpn_wire_form(&["h2".to_string(), "http/1.1".to_string()]);
        assert_eq!(wire, b"\x02h2\x08http/1.1");
        let names: Vec<&[u8]> = alpn_names(&wire).collect();
        assert_eq!(names, [&b"h2"[..], &b"http/1.1"[..]]);
        // A length running past the end ends the list.
        assert_eq!(alpn_names(b"\x02h2\x09http/1.1").count(), 1);
    }

    #[test]
    fn a_refused_offer_is_quoted_escaped_and_cut_after_a_few_names() {
        assert_eq!(
            describe_alpn_offer(b"\x02h2\x04a\nb\"\x02\xff\xfe"),
            "\"h2\" \"a\\nb\\\"\" \"\u{fffd}\u{fffd}\""
        );
        let many: Vec<u8> = (0..10u8).flat_map(|n| [1, b'0' + n]).collect();
        assert_eq!(
            describe_alpn_offer(&many),
            r#""0" "1" "2" "3" "4" "5" "6" "7" and 2 more"#
        );
    }

    #[test]
    fn disabling_everything_is_an_error() {
        let mut options = TlsOptions {
            nocert: true,
            ..TlsOptions::default()
        };
        options.protocols.only = Some(Protocol::Tls1_3);
        options.protocols.disabled = vec![Protocol::Tls1_3];
        assert!(
            build_context(&options, false, ContextUse::Daemon)
                .unwrap_err()
                .contains("no protocol version is left")
        );
    }
}
