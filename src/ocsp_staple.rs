//! `-ocsp FILE` and the `NAME.ocsp` files of `-certdir`: OCSP stapling from a response fetched by something else
//! (`openssl ocsp -respout`, a certbot hook). tls.rs reads the file and finds the certificate's issuer; this module
//! has OpenSSL judge the response against its certificate once per load (start-up, each SIGHUP reload in daemon
//! mode, each process in inetd mode) and installs the status callback that sends it to clients asking with
//! status_request: the context's one response, or in inetd mode with -certdir the one of the certificate chosen for
//! the connection. At handshake time only the clock is compared with the response's nextUpdate: nothing is parsed
//! per connection. It never fetches anything over the network, never decodes DER itself (OpenSSL does), and never
//! fails a handshake: a response that does not hold is not sent, and a warning says why.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use openssl::error::ErrorStack;
use openssl::ex_data::Index;
use openssl::hash::MessageDigest;
use openssl::ocsp::{OcspCertId, OcspCertStatus, OcspFlag, OcspResponse, OcspResponseStatus};
use openssl::ssl::{Ssl, SslContextBuilder, SslRef};
use openssl::stack::Stack;
use openssl::x509::store::X509StoreBuilder;
use openssl::x509::verify::X509VerifyFlags;
use openssl::x509::{X509, X509Ref};

use crate::reason::openssl_reason;
use crate::{log_debug, log_warning, sys};

/// How far a response's thisUpdate may lie in the future, for a responder whose clock runs ahead of ours: the
/// allowance `openssl ocsp` itself grants (its -validity_period default, MAX_VALIDITY_PERIOD).
const CLOCK_SKEW_SECONDS: u32 = 5 * 60;

/// The digests a responder may have used for the certificate ID: SHA-1 (what `openssl ocsp` and most responders
/// use, RFC 6960's example) first. OCSP_resp_find_status matches the digest as well as the hashes.
const CERT_ID_DIGESTS: [fn() -> MessageDigest; 3] = [
    MessageDigest::sha1,
    MessageDigest::sha256,
    MessageDigest::sha512,
];

/// A response that holds for its certificate: its bytes as read, sent as they are, and until when.
pub struct Staple {
    der: Vec<u8>,
    /// The response's nextUpdate; None when it has none (RFC 6960: newer information is always available).
    next_update: Option<SystemTime>,
}

/// What OpenSSL made of an -ocsp file that is an OCSP response.
pub enum Verdict {
    Staple(Staple),
    /// Why it is not stapled: expired, for another certificate, revoked, a bad signature …
    NotStapled(String),
}

/// Judges the DER bytes of an -ocsp file for `leaf`, issued by `issuer` (None when neither the -cert file nor
/// -CAfile holds it); `untrusted` are the other certificates that may complete the responder's chain. Err: the
/// file is no OCSP response at all (d2i_OCSP_RESPONSE refused it).
pub fn judge(
    der: &[u8],
    leaf: &X509Ref,
    issuer: Option<&X509Ref>,
    untrusted: &[X509],
) -> Result<Verdict, ErrorStack> {
    let response = OcspResponse::from_der(der)?;
    if response.status() != OcspResponseStatus::SUCCESSFUL {
        return Ok(Verdict::NotStapled(format!(
            "the responder did not answer with a status but with error {} ({})",
            response.status().as_raw(),
            response_status_name(response.status())
        )));
    }
    let Some(issuer) = issuer else {
        return Ok(Verdict::NotStapled(
            "the issuer of the certificate is neither in the -cert file nor in -CAfile, so the response cannot be \
             checked"
                .to_string(),
        ));
    };
    let basic = match response.basic() {
        Ok(basic) => basic,
        Err(e) => {
            return Ok(Verdict::NotStapled(format!(
                "it holds no basic OCSP response: {}",
                openssl_reason(&e)
            )));
        }
    };
    let ids: Result<Vec<OcspCertId>, ErrorStack> = CERT_ID_DIGESTS
        .iter()
        .map(|digest| OcspCertId::from_cert(digest(), leaf, issuer))
        .collect();
    let ids = match ids {
        Ok(ids) => ids,
        Err(e) => {
            return Ok(Verdict::NotStapled(format!(
                "the certificate's OCSP ID cannot be made: {}",
                openssl_reason(&e)
            )));
        }
    };
    let Some(status) = ids.iter().find_map(|id| basic.find_status(id)) else {
        return Ok(Verdict::NotStapled(format!(
            "it is for another certificate: it has no status for the certificate with serial {}",
            serial_text(leaf)
        )));
    };
    if let Err(e) = verify_signature(&basic, issuer, untrusted) {
        return Ok(Verdict::NotStapled(format!(
            "its signature does not verify against the issuer of the certificate ({}): {}",
            crate::tls_facts::one_line_name(issuer.subject_name()),
            openssl_reason(&e)
        )));
    }
    if status.status == OcspCertStatus::REVOKED {
        let since = status
            .revocation_time
            .map_or(String::new(), |time| format!(" since {time}"));
        return Ok(Verdict::NotStapled(format!(
            "it says the certificate is revoked{since}"
        )));
    }
    if status.status != OcspCertStatus::GOOD {
        return Ok(Verdict::NotStapled(
            "the responder does not know the certificate (status unknown)".to_string(),
        ));
    }
    let next_update = match status.next_update() {
        Some(time) => match sys::seconds_until(time) {
            Some(left) if left <= 0 => {
                return Ok(Verdict::NotStapled(format!(
                    "it expired on {time} (its nextUpdate)"
                )));
            }
            Some(left) => Some(SystemTime::now() + Duration::from_secs(left.unsigned_abs())),
            None => {
                return Ok(Verdict::NotStapled(format!(
                    "its nextUpdate {time} cannot be read"
                )));
            }
        },
        None => None,
    };
    if status.check_validity(CLOCK_SKEW_SECONDS, None).is_err() {
        drop(ErrorStack::get());
        return Ok(Verdict::NotStapled(format!(
            "it is not valid yet: its thisUpdate is {}",
            status.this_update
        )));
    }
    Ok(Verdict::Staple(Staple {
        der: der.to_vec(),
        next_update,
    }))
}

/// OCSP_basic_verify with the issuer as the one trust anchor (a partial chain is enough: the issuer may be an
/// intermediate): the response must be signed by the issuer itself or by a responder certificate the issuer
/// delegated OCSP signing to, found in the response or among `untrusted`.
fn verify_signature(
    basic: &openssl::ocsp::OcspBasicResponseRef,
    issuer: &X509Ref,
    untrusted: &[X509],
) -> Result<(), ErrorStack> {
    let mut store = X509StoreBuilder::new()?;
    store.add_cert(issuer.to_owned())?;
    store.set_flags(X509VerifyFlags::PARTIAL_CHAIN)?;
    let store = store.build();
    let mut certificates = Stack::new()?;
    for certificate in untrusted {
        certificates.push(certificate.clone())?;
    }
    basic.verify(&certificates, &store, OcspFlag::empty())
}

fn response_status_name(status: OcspResponseStatus) -> &'static str {
    match status {
        OcspResponseStatus::MALFORMED_REQUEST => "malformedRequest",
        OcspResponseStatus::INTERNAL_ERROR => "internalError",
        OcspResponseStatus::TRY_LATER => "tryLater",
        OcspResponseStatus::SIG_REQUIRED => "sigRequired",
        OcspResponseStatus::UNAUTHORIZED => "unauthorized",
        _ => "unknown",
    }
}

fn serial_text(certificate: &X509Ref) -> String {
    certificate
        .serial_number()
        .to_bn()
        .and_then(|serial| serial.to_hex_str().map(|hex| hex.to_string()))
        .unwrap_or_else(|_| "unreadable".to_string())
}

/// A staple to send, with what a warning about it names. Once its nextUpdate has passed nothing is sent, and the
/// first client that finds it so brings one warning. A daemon's handshakes happen in session processes forked from a
/// parent that never makes one, so the note that it was told lives in memory they all share.
pub struct StapleToSend {
    option: &'static str,
    file: PathBuf,
    staple: Staple,
    told_expired: sys::SharedFlag,
}

impl StapleToSend {
    pub fn new(option: &'static str, file: &Path, staple: Staple) -> Result<StapleToSend, String> {
        let told_expired = sys::SharedFlag::new().map_err(|e| {
            format!(
                "{option}: cannot map memory for {}: {}",
                file.display(),
                crate::reason::io_reason(&e)
            )
        })?;
        log_debug!("{option}: the response in {} is stapled", file.display());
        Ok(StapleToSend {
            option,
            file: file.to_path_buf(),
            staple,
            told_expired,
        })
    }

    /// What the status callback does for a client that sent status_request: true if the response was sent.
    fn send(&self, ssl: &mut SslRef) -> Result<bool, ErrorStack> {
        let fresh = self
            .staple
            .next_update
            .is_none_or(|next_update| SystemTime::now() < next_update);
        if !fresh {
            if !self.told_expired.set() {
                log_warning!(
                    "{}: the response in {} is not stapled: it expired (its nextUpdate has passed); fetch a new one \
                     and reload",
                    self.option,
                    self.file.display()
                );
            }
            return Ok(false);
        }
        ssl.set_ocsp_status(&self.staple.der)?;
        Ok(true)
    }
}

/// Installs the status callback (SSL_CTX_set_tlsext_status_cb), which OpenSSL calls for a client that sent
/// status_request, with the one response of the context's certificate.
pub fn staple_on_request(
    context: &mut SslContextBuilder,
    staple: StapleToSend,
) -> Result<(), String> {
    let option = staple.option;
    context
        .set_status_callback(move |ssl| staple.send(ssl))
        .map_err(|e| format!("{option}: {}", openssl_reason(&e)))
}

/// inetd mode with -certdir, where the certificate is chosen per connection and set on the connection itself: the
/// status callback sends the staple [`staple_this_connection`] gave the connection, if any.
pub fn staple_per_connection(context: &mut SslContextBuilder) -> Result<(), String> {
    let slot = connection_staple_slot().map_err(|e| format!("-certdir: {}", openssl_reason(&e)))?;
    context
        .set_status_callback(move |ssl| match ssl.ex_data(slot).cloned() {
            Some(staple) => staple.send(ssl),
            None => Ok(false),
        })
        .map_err(|e| format!("-certdir: {}", openssl_reason(&e)))
}

/// The staple for the certificate chosen for this connection (see [`staple_per_connection`]).
pub fn staple_this_connection(
    ssl: &mut SslRef,
    staple: Arc<StapleToSend>,
) -> Result<(), ErrorStack> {
    ssl.set_ex_data(connection_staple_slot()?, staple);
    Ok(())
}

fn connection_staple_slot() -> Result<Index<Ssl, Arc<StapleToSend>>, ErrorStack> {
    static SLOT: OnceLock<Result<Index<Ssl, Arc<StapleToSend>>, ErrorStack>> = OnceLock::new();
    SLOT.get_or_init(Ssl::new_ex_index).clone()
}
