//! `-certdir DIR`: several host names on one port. The server name a client asks for (SNI) picks a certificate
//! from DIR by file name: `DIR/NAME.pem` serves NAME, `DIR/_.DOMAIN.pem` serves every name one label below DOMAIN
//! (`*.DOMAIN`); the key is in the same file or beside it in `NAME.key`, and the OCSP response to staple for it, if
//! any, beside it in `NAME.ocsp`. Everything but the certificate, its key and its staple is the default context's
//! (protocols, ciphers, verification, tickets, ALPN, CRLs). A daemon loads every file once, at start-up and on
//! SIGHUP, each into a context of its own built by tls.rs from the same options, and switches a connection to it; an
//! inetd-started process opens only the files its client's name selects and sets that one certificate on the
//! connection itself, so its cost does not grow with DIR. This file must never parse a certificate, key or OCSP
//! response itself (OpenSSL does), and never fail a handshake over a file of DIR: a name it cannot serve gets the
//! -cert certificate.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use openssl::ssl::{NameType, SniError, SslContext, SslContextBuilder, SslRef};
use openssl::x509::X509Ref;

use crate::options::TlsOptions;
use crate::reason::{io_reason, openssl_reason};
use crate::tls::{self, ConnectionCertificate, ContextUse, DefaultCertificate};
use crate::tls_facts::is_host_name;
use crate::{log_debug, log_error, log_warning};

/// A certificate file's name ends with this; the name before it is the host name it serves.
const CERTIFICATE_SUFFIX: &str = ".pem";
/// A key file beside a certificate file: the same host name with this extension.
const KEY_EXTENSION: &str = "key";
/// An OCSP response file beside a certificate file (DER, as `openssl ocsp -respout` writes it): the same host name
/// with this extension.
const OCSP_EXTENSION: &str = "ocsp";
/// A file name starting with this serves the wildcard `*.` of the rest (a `*` is awkward in a shell).
const WILDCARD_FILE_PREFIX: &str = "_.";

/// Daemon mode: makes the default context switch to DIR's certificate for a client's name
/// (SSL_CTX_set_tlsext_servername_callback, then SSL_set_SSL_CTX); every usable file of DIR is loaded now, into a
/// context of its own, by the name it serves. Fails only when DIR itself cannot be read.
pub fn choose_by_server_name(
    context: &mut SslContextBuilder,
    dir: &Path,
    options: &TlsOptions,
    log_states: bool,
) -> Result<(), String> {
    let entries = read_dir(dir)?;
    let by_name = load_all(dir, entries, options, log_states);
    context.set_servername_callback(move |ssl, _alert| {
        let chosen = asked_name(ssl)
            .and_then(|name| candidates(&name).find_map(|served| by_name.get(&served).cloned()));
        if let Some(chosen) = chosen {
            if let Err(e) = ssl.set_ssl_context(&chosen) {
                log_warning!(
                    "-certdir: cannot switch to the certificate for {}: {}",
                    asked_name(ssl).unwrap_or_default(),
                    openssl_reason(&e)
                );
            }
        }
        Ok::<(), SniError>(())
    });
    Ok(())
}

/// inetd mode: the context has no certificate; for the one connection of this process the servername callback sets
/// the certificate on the connection itself: the file DIR has for the client's name, read then (so that the cost of
/// a connection does not grow with DIR), or `default` (the -cert one, read at start-up like every key, decoded only
/// when it is needed). Fails only when DIR itself cannot be read.
pub fn choose_for_the_connection(
    context: &mut SslContextBuilder,
    dir: &Path,
    options: &TlsOptions,
    default: DefaultCertificate,
) -> Result<(), String> {
    read_dir(dir)?;
    let dir = dir.to_path_buf();
    let options = options.clone();
    context.set_servername_callback(move |ssl, alert| {
        let chosen = asked_name(ssl).and_then(|name| {
            candidates(&name)
                .filter(|served| dir.join(file_name_for(served)).exists())
                .find_map(|served| load_one_or_warn(&dir, &served, &options))
        });
        if let Some((file, certificate)) = &chosen {
            match certificate.serve_on(ssl) {
                Ok(()) => return Ok(()),
                Err(e) => log_warning!(
                    "-certdir: {} skipped: {}",
                    file.display(),
                    openssl_reason(&e)
                ),
            }
        }
        default.serve_on(ssl).map_err(|reason| {
            log_error!("{reason}");
            *alert = openssl::ssl::SslAlert::INTERNAL_ERROR;
            SniError::ALERT_FATAL
        })
    });
    Ok(())
}

fn read_dir(dir: &Path) -> Result<std::fs::ReadDir, String> {
    std::fs::read_dir(dir)
        .map_err(|e| format!("-certdir: cannot read {}: {}", dir.display(), io_reason(&e)))
}

/// The (lower-case, valid) host name the client asked for, if any.
fn asked_name(ssl: &SslRef) -> Option<String> {
    ssl.servername(NameType::HOST_NAME)
        .filter(|name| is_host_name(name))
        .map(str::to_ascii_lowercase)
}

/// The names whose file may serve a client's name: its own, then the wildcard one label up (also when its own file
/// cannot be used).
fn candidates(name: &str) -> impl Iterator<Item = String> {
    std::iter::once(name.to_string()).chain(wildcard_above(name))
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
        let certificate = dir.join(file_name_for(&served));
        let files = NamedFiles::beside(&certificate, options);
        let loaded = tls::build_context_stapling(
            &files.options,
            files.ocsp(),
            log_states,
            ContextUse::Daemon,
        )
        .and_then(|context| {
            let leaf = context
                .certificate()
                .ok_or_else(|| "no certificate in it".to_string())?;
            check_made_out_for(leaf, &served)?;
            Ok(context)
        });
        if let Some(context) = kept_or_warned(&certificate, &served, loaded) {
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

/// inetd mode: the certificate of the one file that serves `served`, or None after a warning naming the file.
fn load_one_or_warn(
    dir: &Path,
    served: &str,
    options: &TlsOptions,
) -> Option<(PathBuf, ConnectionCertificate)> {
    let certificate = dir.join(file_name_for(served));
    let files = NamedFiles::beside(&certificate, options);
    let loaded = ConnectionCertificate::load(&files.options, files.ocsp()).and_then(|loaded| {
        check_made_out_for(loaded.leaf(), served)?;
        Ok(loaded)
    });
    kept_or_warned(&certificate, served, loaded).map(|loaded| (certificate, loaded))
}

fn kept_or_warned<T>(certificate: &Path, served: &str, loaded: Result<T, String>) -> Option<T> {
    match loaded {
        Ok(loaded) => {
            log_debug!("-certdir: {} serves {served}", certificate.display());
            Some(loaded)
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

/// A certificate file of DIR with what is beside it: the default context's options with only the certificate and
/// key changed, and the OCSP response file, if there is one.
struct NamedFiles {
    options: TlsOptions,
    response: Option<PathBuf>,
}

impl NamedFiles {
    fn beside(certificate: &Path, options: &TlsOptions) -> NamedFiles {
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
        NamedFiles {
            options,
            response: response.exists().then_some(response),
        }
    }

    fn ocsp(&self) -> Option<tls::OcspFile<'_>> {
        self.response.as_deref().map(|path| tls::OcspFile {
            path,
            option: "-certdir",
            required: false,
        })
    }
}

/// The certificate must be made out for the name its file serves, as clients check it.
fn check_made_out_for(leaf: &X509Ref, served: &str) -> Result<(), String> {
    let names = dns_names(leaf);
    if names.iter().any(|name| name.eq_ignore_ascii_case(served)) {
        return Ok(());
    }
    let found = match names.is_empty() {
        true => "no DNS name".to_string(),
        false => names.join(", "),
    };
    Err(format!(
        "its file name says {served}, but its certificate's subjectAltName has {found}"
    ))
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
