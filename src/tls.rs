//! Builds the OpenSSL server context from the command line: protocol range, ciphers, certificate chain and key (or
//! the `-nocert` ephemeral certificate and anonymous suites), client verification and the CA list. Nothing else in
//! sslwrap configures OpenSSL. Every failure is a message naming the file or option and the reason; the system
//! OpenSSL defaults rule unless the command line asks for something older, which is then logged as a warning.

use std::path::Path;

use openssl::asn1::Asn1Time;
use openssl::bn::{BigNum, BigNumContext, MsbOption};
use openssl::dh::Dh;
use openssl::ec::{EcGroup, EcKey, EcPoint};
use openssl::error::ErrorStack;
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::{PKey, Private};
use openssl::rsa::Rsa;
use openssl::ssl::{
    SslContext, SslContextBuilder, SslFiletype, SslMethod, SslMode, SslOptions,
    SslSessionCacheMode, SslVerifyMode, SslVersion,
};
use openssl::x509::store::X509Lookup;
use openssl::x509::{X509, X509Name, X509NameBuilder};

use crate::der::{self, Pkcs8Key};
use crate::options::{Protocol, TlsOptions};
use crate::reason::{io_reason, openssl_reason};
use crate::{log_debug, log_warning, sys};

/// The cipher list used with `-nocert` unless `-cipher` says otherwise: the usual suites first, anonymous ones last so
/// that only a client offering nothing else gets one. aNULL suites exist only at security level 0.
const NOCERT_CIPHERS: &str = "ALL:!eNULL:+aNULL:@SECLEVEL=0";

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

/// Builds the server context. Called once at start-up (and on SIGHUP in daemon mode).
pub fn build_context(options: &TlsOptions, log_states: bool) -> Result<SslContext, String> {
    let mut context = SslContextBuilder::new(SslMethod::tls_server())
        .map_err(|e| openssl_failure("OpenSSL", &e))?;
    // Partial writes and moving buffers let the relay retry with whatever is pending; released buffers keep an idle
    // connection small.
    context.set_mode(
        SslMode::ENABLE_PARTIAL_WRITE
            | SslMode::ACCEPT_MOVING_WRITE_BUFFER
            | SslMode::RELEASE_BUFFERS,
    );
    context.set_options(SslOptions::NO_COMPRESSION | SslOptions::IGNORE_UNEXPECTED_EOF);
    // Whole socket reads instead of a header read and a body read per record; the relay drains OpenSSL's buffer
    // before it ever polls the socket, so nothing read ahead is left waiting.
    context.set_read_ahead(true);
    if options.bugs {
        context.set_options(SslOptions::ALL);
    }
    // Forked children cannot share a server-side session cache; stateless tickets, keyed once here in the parent,
    // resume across all of them.
    context.set_session_cache_mode(SslSessionCacheMode::OFF);
    context
        .set_session_id_context(b"sslwrap")
        .map_err(|e| openssl_failure("session id context", &e))?;
    set_protocols(&mut context, options)?;
    set_ciphers(&mut context, options)?;
    set_dh(&mut context, options)?;
    if options.nocert {
        use_ephemeral_certificate(&mut context)?;
        log_debug!("-nocert: using an ephemeral self-signed certificate and anonymous suites");
    } else {
        use_certificate_files(&mut context, options)?;
    }
    set_client_verification(&mut context, options)?;
    if log_states {
        sys::report_handshake_states(&mut context, log_handshake_state);
    }
    Ok(context.build())
}

/// One full handshake of each protocol version inside this process, before any client is served: OpenSSL fetches
/// and caches its algorithm implementations on first use, and forked children inherit what the parent has already
/// cached instead of each building (and writing) it anew (measured: 8 % fewer instructions and ~30 KiB fewer copied
/// pages per child).
///
/// An RSA key is never used here: its blinding values are made on first use and would then be the same in every
/// child. Such a context (and one a default client cannot talk to, e.g. with -Verify) warms up through a stand-in
/// context with an ephemeral ECDSA certificate, which still caches everything but the RSA signature itself.
pub fn warm_up(context: &SslContext) {
    use openssl::pkey::Id;
    // Only key types without per-key secret state are used here: RSA and RSA-PSS (blinding) and anything unknown
    // go through the stand-in.
    let stateless_key = context
        .private_key()
        .is_some_and(|key| matches!(key.id(), Id::EC | Id::ED25519 | Id::ED448));
    if stateless_key && handshake_both_versions(context).is_ok() {
        log_debug!("warm-up: handshakes done with the configured key");
        return;
    }
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
    // A refused warm-up (with -Verify, say) leaves its errors queued; no client's failure report may show them.
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

/// Sets the protocol range. Versions older than TLS 1.2 need security level 0 in OpenSSL 3 (their handshakes use
/// MD5/SHA-1), so asking for them lowers the level and says so.
fn set_protocols(context: &mut SslContextBuilder, options: &TlsOptions) -> Result<(), String> {
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
    Ok(())
}

fn set_ciphers(context: &mut SslContextBuilder, options: &TlsOptions) -> Result<(), String> {
    let list = match (&options.cipher, options.nocert) {
        (Some(list), _) => Some(list.as_str()),
        (None, true) => Some(NOCERT_CIPHERS),
        (None, false) => None,
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
    let pem = read_file("-dhparam", path)?;
    let dh = Dh::params_from_pem(&pem).map_err(|e| {
        format!(
            "cannot read DH parameters from {}: {}",
            path.display(),
            openssl_reason(&e)
        )
    })?;
    context.set_tmp_dh(&dh).map_err(|e| {
        format!(
            "DH parameters in {}: {}",
            path.display(),
            openssl_reason(&e)
        )
    })
}

fn read_file(option: &str, path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| {
        format!(
            "{option}: cannot read {}: {}",
            path.display(),
            io_reason(&e)
        )
    })
}

/// Loads the certificate chain and the private key, checks they belong together, and warns when the key file can be
/// read by others. The key must be unencrypted: an inetd-started process has nobody to ask for a pass phrase.
fn use_certificate_files(
    context: &mut SslContextBuilder,
    options: &TlsOptions,
) -> Result<(), String> {
    let cert_path = &options.cert;
    let key_path = options.key.as_deref().unwrap_or(cert_path);
    // Without -key the certificate file holds the private key too.
    let cert_pem = sys::Secret::new(read_file("-cert", cert_path)?);
    let chain = X509::stack_from_pem(&cert_pem).map_err(|e| {
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
    context
        .set_certificate(&leaf)
        .map_err(|e| format!("-cert {}: {}", cert_path.display(), openssl_reason(&e)))?;
    for intermediate in chain {
        context.add_extra_chain_cert(intermediate).map_err(|e| {
            format!(
                "-cert {}: chain: {}",
                cert_path.display(),
                openssl_reason(&e)
            )
        })?;
    }
    let key = load_private_key(key_path)?;
    let mismatch = || {
        format!(
            "the private key in {} does not match the certificate in {}",
            key_path.display(),
            cert_path.display()
        )
    };
    context.set_private_key(&key).map_err(|_| mismatch())?;
    context.check_private_key().map_err(|_| mismatch())?;
    warn_if_key_readable_by_others(key_path);
    Ok(())
}

fn load_private_key(path: &Path) -> Result<PKey<Private>, String> {
    let pem = sys::Secret::new(read_file("key", path)?);
    if is_encrypted_pem(&pem) {
        return Err(format!(
            "the private key in {} is encrypted with a pass phrase; sslwrap needs an unencrypted key \
             (openssl pkey -in FILE -out NEWFILE)",
            path.display()
        ));
    }
    if !pem
        .windows(b"PRIVATE KEY-----".len())
        .any(|window| window == b"PRIVATE KEY-----")
    {
        return Err(format!(
            "no private key found in {} (use -key FILE if it is in another file)",
            path.display()
        ));
    }
    match decode_key_directly(&pem) {
        Some(key) => {
            log_debug!("key in {} read directly", path.display());
            Ok(key)
        }
        // An empty pass phrase callback: OpenSSL must never prompt on the terminal.
        None => PKey::private_key_from_pem_callback(&pem, |_| Ok(0)).map_err(|e| {
            format!(
                "cannot read the private key in {}: {}",
                path.display(),
                openssl_reason(&e)
            )
        }),
    }
}

/// The usual unencrypted RSA and EC key files (PKCS#8, PKCS#1, SEC1) decoded through OpenSSL's direct RSA and EC
/// constructors (see der.rs for why); None leaves the file to the generic decoder.
fn decode_key_directly(pem: &[u8]) -> Option<PKey<Private>> {
    let text = std::str::from_utf8(pem).ok()?;
    let (label, body) = private_key_block(text)?;
    // Sized once: a growing vector would leave freed partial copies of the key behind.
    let mut base64 = Vec::with_capacity(body.len());
    base64.extend(body.bytes().filter(|byte| !byte.is_ascii_whitespace()));
    let base64 = sys::Secret::new(base64);
    let der =
        sys::Secret::new(openssl::base64::decode_block(std::str::from_utf8(&base64).ok()?).ok()?);
    match label {
        "RSA PRIVATE KEY" => rsa_key(&der),
        "EC PRIVATE KEY" => PKey::from_ec_key(EcKey::private_key_from_der(&der).ok()?).ok(),
        "PRIVATE KEY" => match der::unwrap_pkcs8(&der)? {
            Pkcs8Key::Rsa(pkcs1) => rsa_key(pkcs1),
            Pkcs8Key::Ec { curve, sec1 } => ec_key(curve, sec1),
        },
        _ => None,
    }
}

/// The label and base64 body of the first `-----BEGIN ... PRIVATE KEY-----` block without PEM headers.
fn private_key_block(text: &str) -> Option<(&str, &str)> {
    let mut rest = text;
    while let Some(start) = rest.find("-----BEGIN ") {
        let after = &rest[start + "-----BEGIN ".len()..];
        let (label, body) = after.split_once("-----")?;
        if label.ends_with("PRIVATE KEY") {
            let (body, _) = body.split_once(&format!("-----END {label}-----"))?;
            return (!body.contains(':')).then_some((label, body));
        }
        rest = body;
    }
    None
}

fn rsa_key(pkcs1: &[u8]) -> Option<PKey<Private>> {
    PKey::from_rsa(Rsa::private_key_from_der(pkcs1).ok()?).ok()
}

/// A SEC1 key on the curve its PKCS#8 wrapping names.
fn ec_key(curve: &[u8], sec1: &[u8]) -> Option<PKey<Private>> {
    let nid = match curve {
        der::P256 => Nid::X9_62_PRIME256V1,
        der::P384 => Nid::SECP384R1,
        der::P521 => Nid::SECP521R1,
        _ => return None,
    };
    let group = EcGroup::from_curve_name(nid).ok()?;
    let (scalar, point) = der::sec1_parts(sec1, curve)?;
    let mut private = BigNum::from_slice(scalar).ok()?;
    let key = ec_key_from_scalar(&group, &private, point);
    // BN_free does not zero; the parent's freed heap is inherited by every child.
    private.clear();
    key
}

fn ec_key_from_scalar(
    group: &EcGroup,
    private: &BigNum,
    point: Option<&[u8]>,
) -> Option<PKey<Private>> {
    let mut context = BigNumContext::new().ok()?;
    let public = match point {
        Some(encoded) => EcPoint::from_bytes(group, encoded, &mut context).ok()?,
        None => {
            let mut public = EcPoint::new(group).ok()?;
            public.mul_generator2(group, private, &mut context).ok()?;
            public
        }
    };
    PKey::from_ec_key(EcKey::from_private_components(group, private, &public).ok()?).ok()
}

fn is_encrypted_pem(pem: &[u8]) -> bool {
    let contains = |needle: &[u8]| pem.windows(needle.len()).any(|window| window == needle);
    contains(b"-----BEGIN ENCRYPTED PRIVATE KEY-----") || contains(b"Proc-Type: 4,ENCRYPTED")
}

fn warn_if_key_readable_by_others(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = std::fs::metadata(path) {
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            log_warning!(
                "private key file {} is readable by group or others (mode {mode:o}): chmod 600 it",
                path.display()
            );
        }
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

/// `-verify N` asks for a client certificate and checks any that is sent; `-Verify N` also refuses clients without
/// one. Trust comes from -CAfile/-CApath, else the system store; the CAfile's names are sent as the acceptable list.
fn set_client_verification(
    context: &mut SslContextBuilder,
    options: &TlsOptions,
) -> Result<(), String> {
    let Some((depth, required)) = options.verify else {
        return Ok(());
    };
    let mut mode = SslVerifyMode::PEER;
    if required {
        mode |= SslVerifyMode::FAIL_IF_NO_PEER_CERT;
    }
    context.set_verify(mode);
    context.set_verify_depth(depth);
    if let Some(file) = &options.ca_file {
        std::fs::metadata(file)
            .map_err(|e| format!("-CAfile: cannot read {}: {}", file.display(), io_reason(&e)))?;
        context
            .set_ca_file(file)
            .map_err(|e| format!("-CAfile {}: {}", file.display(), openssl_reason(&e)))?;
        let names = X509Name::load_client_ca_file(file)
            .map_err(|e| format!("-CAfile {}: {}", file.display(), openssl_reason(&e)))?;
        context.set_client_ca_list(names);
    }
    if let Some(dir) = &options.ca_path {
        if !dir.is_dir() {
            return Err(format!("-CApath: {} is not a directory", dir.display()));
        }
        let lookup = context
            .cert_store_mut()
            .add_lookup(X509Lookup::hash_dir())
            .map_err(|e| openssl_failure("-CApath", &e))?;
        lookup
            .add_dir(&dir.to_string_lossy(), SslFiletype::PEM)
            .map_err(|e| format!("-CApath {}: {}", dir.display(), openssl_reason(&e)))?;
    }
    if options.ca_file.is_none() && options.ca_path.is_none() {
        context
            .set_default_verify_paths()
            .map_err(|e| openssl_failure("system CA store", &e))?;
    }
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
        assert!(build_context(&options, false).is_ok());
    }

    #[test]
    fn an_unknown_cipher_list_is_an_error_naming_it() {
        let options = TlsOptions {
            nocert: true,
            cipher: Some("NO-SUCH-CIPHER".into()),
            ..TlsOptions::default()
        };
        let error = build_context(&options, false).unwrap_err();
        assert!(error.starts_with("-cipher 'NO-SUCH-CIPHER'"), "{error}");
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
            build_context(&options, false)
                .unwrap_err()
                .contains("no protocol version is left")
        );
    }
}
