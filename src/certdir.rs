//! `-certdir DIR`: several host names on one port. The server name a client asks for (SNI) picks a certificate
//! from DIR by file name: `DIR/NAME.pem` serves NAME, `DIR/_.DOMAIN.pem` serves every name one label below DOMAIN
//! (`*.DOMAIN`); the key is in the same file or beside it in `NAME.key`, and the OCSP response to staple for it, if
//! any, beside it in `NAME.ocsp`. Each name gets a whole context built by tls.rs from the same options with only the
//! certificate and its response changed, so that protocols, ciphers, verification, tickets (the same -ticketkey
//! keys, which the ticket callback finds on the switched context), ALPN and CRLs are the ones of the default context.
//! A daemon loads every file once, at start-up and on SIGHUP; an inetd-started process opens only the files its
//! client's name selects, so its cost does not grow with DIR. This file must never parse a certificate, key or OCSP
//! response itself (OpenSSL does), and never fail a handshake: a name it cannot serve gets the -cert certificate.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use openssl::ssl::{NameType, SniError, SslContext, SslContextBuilder};
use openssl::x509::X509Ref;

use crate::options::TlsOptions;
use crate::reason::io_reason;
use crate::tls::{self, ContextUse};
use crate::tls_facts::is_host_name;
use crate::{log_debug, log_warning};

/// A certificate file's name ends with this; the name before it is the host name it serves.
const CERTIFICATE_SUFFIX: &str = ".pem";
/// A key file beside a certificate file: the same host name with this extension.
const KEY_EXTENSION: &str = "key";
/// An OCSP response file beside a certificate file (DER, as `openssl ocsp -respout` writes it): the same host name
/// with this extension.
const OCSP_EXTENSION: &str = "ocsp";
/// A file name starting with this serves the wildcard `*.` of the rest (a `*` is awkward in a shell).
const WILDCARD_FILE_PREFIX: &str = "_.";

/// Where the certificate for a client's name comes from.
enum NamedCertificates {
    /// Daemon mode: every usable file of DIR, loaded at start-up (or reload), by the name it serves.
    Loaded(HashMap<String, SslContext>),
    /// inetd mode: the file is opened when a client asks for its name, with what building its context needs.
    OnDemand {
        dir: PathBuf,
        options: Box<TlsOptions>,
        log_states: bool,
    },
}

/// Makes the default context switch to DIR's certificate for a client's name (SSL_CTX_set_tlsext_servername_callback,
/// then SSL_set_SSL_CTX). Fails only when DIR itself cannot be read.
pub fn choose_by_server_name(
    context: &mut SslContextBuilder,
    dir: &Path,
    options: &TlsOptions,
    log_states: bool,
    usage: ContextUse,
) -> Result<(), String> {
    let entries = std::fs::read_dir(dir)
        .map_err(|e| format!("-certdir: cannot read {}: {}", dir.display(), io_reason(&e)))?;
    let certificates = match usage {
        ContextUse::Daemon => {
            NamedCertificates::Loaded(load_all(dir, entries, options, log_states))
        }
        ContextUse::OneConnection => NamedCertificates::OnDemand {
            dir: dir.to_path_buf(),
            options: Box::new(options.clone()),
            log_states,
        },
    };
    context.set_servername_callback(move |ssl, _alert| {
        let Some(name) = ssl
            .servername(NameType::HOST_NAME)
            .filter(|name| is_host_name(name))
            .map(str::to_ascii_lowercase)
        else {
            return Ok(());
        };
        if let Some(chosen) = certificates.for_name(&name) {
            if let Err(e) = ssl.set_ssl_context(&chosen) {
                log_warning!(
                    "-certdir: cannot switch to the certificate for {name}: {}",
                    crate::reason::openssl_reason(&e)
                );
            }
        }
        Ok::<(), SniError>(())
    });
    Ok(())
}

impl NamedCertificates {
    /// The context for a client's (lower-case, valid) host name: its own file, else (also when its own file cannot
    /// be used) the wildcard one label up.
    fn for_name(&self, name: &str) -> Option<SslContext> {
        let mut candidates = std::iter::once(name.to_string()).chain(wildcard_above(name));
        match self {
            NamedCertificates::Loaded(by_name) => {
                candidates.find_map(|served| by_name.get(&served).cloned())
            }
            NamedCertificates::OnDemand {
                dir,
                options,
                log_states,
            } => candidates
                .filter(|served| dir.join(file_name_for(served)).exists())
                .find_map(|served| {
                    load_or_warn(
                        dir,
                        &served,
                        options,
                        *log_states,
                        ContextUse::OneConnection,
                    )
                }),
        }
    }
}

/// `*.example.org` for `mail.example.org`: a wildcard stands for exactly one label (RFC 6125, section 6.4.3).
pub fn wildcard_above(name: &str) -> Option<String> {
    let (_, parent) = name.split_once('.')?;
    parent.contains('.').then(|| format!("*.{parent}"))
}

/// The certificate file that serves `served`: `NAME.pem`, or `_.DOMAIN.pem` for `*.DOMAIN`.
pub fn file_name_for(served: &str) -> String {
    match served.strip_prefix("*.") {
        Some(domain) => format!("{WILDCARD_FILE_PREFIX}{domain}{CERTIFICATE_SUFFIX}"),
        None => format!("{served}{CERTIFICATE_SUFFIX}"),
    }
}

/// The name a certificate file serves (lower case), or None for a file the naming rule does not cover.
pub fn served_by(file_name: &str) -> Option<String> {
    let stem = file_name.strip_suffix(CERTIFICATE_SUFFIX)?;
    let (prefix, host) = match stem.strip_prefix(WILDCARD_FILE_PREFIX) {
        Some(domain) => ("*.", domain),
        None => ("", stem),
    };
    is_host_name(host).then(|| format!("{prefix}{}", host.to_ascii_lowercase()))
}

/// Daemon mode: every `.pem` file of DIR, each by the name its file serves; a file that cannot be used is skipped
/// with a warning naming it.
fn load_all(
    dir: &Path,
    entries: std::fs::ReadDir,
    options: &TlsOptions,
    log_states: bool,
) -> HashMap<String, SslContext> {
    let mut by_name = HashMap::new();
    for entry in entries.flatten() {
        let file_name = entry.file_name();
        let Some(file_name) = file_name.to_str() else {
            continue;
        };
        if !file_name.ends_with(CERTIFICATE_SUFFIX) {
            continue;
        }
        let Some(served) = served_by(file_name) else {
            log_warning!(
                "-certdir: {} skipped: its name is not HOST.pem nor _.DOMAIN.pem",
                dir.join(file_name).display()
            );
            continue;
        };
        if let Some(context) = load_or_warn(dir, &served, options, log_states, ContextUse::Daemon) {
            by_name.insert(served, context);
        }
    }
    log_debug!(
        "-certdir {}: certificates for {} names",
        dir.display(),
        by_name.len()
    );
    by_name
}

/// The context for one name's file, or None after a warning naming the file and the reason.
fn load_or_warn(
    dir: &Path,
    served: &str,
    options: &TlsOptions,
    log_states: bool,
    usage: ContextUse,
) -> Option<SslContext> {
    let certificate = dir.join(file_name_for(served));
    match load(&certificate, served, options, log_states, usage) {
        Ok(context) => {
            log_debug!("-certdir: {} serves {served}", certificate.display());
            Some(context)
        }
        Err(reason) => {
            log_warning!(
                "-certdir: {} skipped: {}",
                certificate.display(),
                reason.strip_prefix("-cert: ").unwrap_or(&reason)
            );
            None
        }
    }
}

/// Builds the context of one certificate file with the default context's options and the OCSP response beside it,
/// if there is one, and checks that the certificate is made out for the name its file serves.
fn load(
    certificate: &Path,
    served: &str,
    options: &TlsOptions,
    log_states: bool,
    usage: ContextUse,
) -> Result<SslContext, String> {
    let key = certificate.with_extension(KEY_EXTENSION);
    let response = certificate.with_extension(OCSP_EXTENSION);
    let options = TlsOptions {
        cert: certificate.to_path_buf(),
        key: key.exists().then_some(key),
        // -pass is for the -key file; its source may be spent already (fd:, stdin) or forgotten (inetd mode).
        pass: None,
        // -ocsp is a response for the -cert certificate only.
        ocsp: None,
        nocert: false,
        certdir: None,
        ..options.clone()
    };
    let ocsp = response.exists().then_some(tls::OcspFile {
        path: &response,
        option: "-certdir",
        required: false,
    });
    let context = tls::build_context_stapling(&options, ocsp, log_states, usage)?;
    let Some(leaf) = context.certificate() else {
        return Err("no certificate in it".to_string());
    };
    let names = dns_names(leaf);
    if !names.iter().any(|name| name.eq_ignore_ascii_case(served)) {
        let found = match names.is_empty() {
            true => "no DNS name".to_string(),
            false => names.join(", "),
        };
        return Err(format!(
            "its file name says {served}, but its certificate's subjectAltName has {found}"
        ));
    }
    Ok(context)
}

/// The DNS names of a certificate's subjectAltName, as OpenSSL decodes them.
fn dns_names(certificate: &X509Ref) -> Vec<String> {
    certificate
        .subject_alt_names()
        .map(|names| {
            names
                .iter()
                .filter_map(|name| name.dnsname().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_serve_a_host_or_a_wildcard_and_back() {
        assert_eq!(
            served_by("Mail.Example.org.pem").as_deref(),
            Some("mail.example.org")
        );
        assert_eq!(
            served_by("_.example.org.pem").as_deref(),
            Some("*.example.org")
        );
        assert_eq!(served_by("mail.example.org.key"), None);
        assert_eq!(served_by("bad name.pem"), None);
        assert_eq!(served_by("_..pem"), None);
        assert_eq!(file_name_for("mail.example.org"), "mail.example.org.pem");
        assert_eq!(file_name_for("*.example.org"), "_.example.org.pem");
    }

    #[test]
    fn a_wildcard_covers_one_label_below_a_domain_of_two_labels_or_more() {
        assert_eq!(
            wildcard_above("a.example.org").as_deref(),
            Some("*.example.org")
        );
        assert_eq!(
            wildcard_above("b.a.example.org").as_deref(),
            Some("*.a.example.org")
        );
        assert_eq!(wildcard_above("example.org"), None);
        assert_eq!(wildcard_above("localhost"), None);
    }
}
