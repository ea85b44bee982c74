//! The PROXY protocol (HAProxy's v1 text line or v2 binary block), both ways: builds the header sslwrap sends to a
//! TCP backend before any other byte (`-proxy`), so the backend learns the real client address and, with v2, the
//! facts of the client's TLS session; and parses the header a load balancer sends sslwrap (`-accept_proxy`, read
//! from the socket by accept_proxy.rs).
//!
//! Pure: addresses and TLS facts in, bytes out, and bytes in, addresses out. It must never do I/O, never panic,
//! never produce a header larger than receivers accept, never cut a value short (an optional TLV that
//! does not fit is left out whole: a truncated name could be somebody else's name), never
//! pass on a client certificate CN that was not verified, and never ask for a byte beyond the end of the header it
//! is reading (the TLS handshake or the STARTTLS dialogue follows it on the same connection).
//!
//! Decisions, each explained where it is implemented:
//! - IPv4-mapped IPv6 addresses, as a dual-stack `[::]` listener reports IPv4 clients, are sent
//!   as the IPv4 addresses they stand for (TCP4, AF_INET).
//! - Ends that still differ in family are both sent as IPv6, the IPv4 end IPv4-mapped; never
//!   `UNKNOWN`, which would make the backend use the wrapper's own address.
//! - v1 writes IPv6 in hex groups with RFC 5952 `::` compression, never with a dotted IPv4 tail.
//! - IPv6 scope ids and flow labels have no field in either format and are dropped.
//! - v1 carries no TLS facts; v2 always carries PP2_TYPE_SSL when TLS facts are given, and PP2_TYPE_ALPN when the
//!   handshake agreed on an application protocol.
//! - Each text TLV has a longest value it is sent with (the longest that value can rightly be), so the v2 header
//!   is always within 536 bytes without any choosing between facts.
//! - No PP2_TYPE_CRC32C: the hop to the backend is a TCP connection whose own checksum covers
//!   it, and a receiver with a faulty CRC check would refuse every connection.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::ops::Range;
use std::str::FromStr;

use crate::tls_facts::TlsFacts;

/// Which PROXY protocol format to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyVersion {
    /// Human-readable line: addresses and ports only.
    V1,
    /// Binary block: addresses, ports and the TLS TLVs.
    V2,
}

impl FromStr for ProxyVersion {
    type Err = String;

    fn from_str(word: &str) -> Result<Self, Self::Err> {
        match word {
            "v1" => Ok(Self::V1),
            "v2" => Ok(Self::V2),
            other => Err(format!(
                "unknown PROXY protocol version '{other}' (expected v1 or v2)"
            )),
        }
    }
}

/// The PROXY protocol header announcing a client connection.
///
/// `source` is the client as seen by the wrapper, `destination` the address the client
/// connected to. `tls` is used by v2 only.
pub fn proxy_header(
    version: ProxyVersion,
    source: SocketAddr,
    destination: SocketAddr,
    tls: Option<&TlsFacts>,
) -> Vec<u8> {
    let endpoints = Endpoints::of(source, destination);
    match version {
        ProxyVersion::V1 => v1_line(&endpoints).into_bytes(),
        ProxyVersion::V2 => v2_header(&endpoints, tls),
    }
}

/// Both ends of the connection in the one address family the header can state.
enum AddressPair {
    V4 {
        source: Ipv4Addr,
        destination: Ipv4Addr,
    },
    V6 {
        source: Ipv6Addr,
        destination: Ipv6Addr,
    },
}

struct Endpoints {
    addresses: AddressPair,
    source_port: u16,
    destination_port: u16,
}

impl Endpoints {
    fn of(source: SocketAddr, destination: SocketAddr) -> Self {
        Self {
            addresses: common_family(source.ip(), destination.ip()),
            source_port: source.port(),
            destination_port: destination.port(),
        }
    }
}

/// Unmapping first means an IPv4 client of a dual-stack listener is announced as the IPv4
/// client it is, which is what the backend's IPv4 access rules expect. A real IPv4/IPv6 mix
/// is then stated as IPv6, the only family holding both ends.
fn common_family(source: IpAddr, destination: IpAddr) -> AddressPair {
    match (source.to_canonical(), destination.to_canonical()) {
        (IpAddr::V4(source), IpAddr::V4(destination)) => AddressPair::V4 {
            source,
            destination,
        },
        (source, destination) => AddressPair::V6 {
            source: as_ipv6(source),
            destination: as_ipv6(destination),
        },
    }
}

fn as_ipv6(address: IpAddr) -> Ipv6Addr {
    match address {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    }
}

/// "PROXY TCP4|TCP6 source destination sport dport\r\n": at most 104 bytes (two full
/// IPv6 addresses), inside the 107 a receiver must accept.
fn v1_line(endpoints: &Endpoints) -> String {
    let (protocol, source, destination) = match endpoints.addresses {
        AddressPair::V4 {
            source,
            destination,
        } => ("TCP4", source.to_string(), destination.to_string()),
        AddressPair::V6 {
            source,
            destination,
        } => ("TCP6", ipv6_hex_text(source), ipv6_hex_text(destination)),
    };
    format!(
        "PROXY {protocol} {source} {destination} {} {}\r\n",
        endpoints.source_port, endpoints.destination_port
    )
}

/// RFC 5952 text in hex groups only. `Ipv6Addr`'s own Display writes IPv4-mapped addresses
/// with a dotted tail (`::ffff:192.0.2.1`), which the v1 grammar does not allow.
fn ipv6_hex_text(address: Ipv6Addr) -> String {
    let groups = address.segments();
    let hex = |groups: &[u16]| {
        groups
            .iter()
            .map(|group| format!("{group:x}"))
            .collect::<Vec<_>>()
            .join(":")
    };
    match longest_zero_run(&groups) {
        Some(run) => format!("{}::{}", hex(&groups[..run.start]), hex(&groups[run.end..])),
        None => hex(&groups),
    }
}

/// The first longest run of at least two zero groups: the one RFC 5952 shortens to `::`.
fn longest_zero_run(groups: &[u16]) -> Option<Range<usize>> {
    let mut longest: Option<Range<usize>> = None;
    let mut start = 0;
    while start < groups.len() {
        if groups[start] != 0 {
            start += 1;
            continue;
        }
        let end = (start..groups.len())
            .find(|&index| groups[index] != 0)
            .unwrap_or(groups.len());
        if end - start >= 2 && longest.as_ref().is_none_or(|run| end - start > run.len()) {
            longest = Some(start..end);
        }
        start = end;
    }
    longest
}

const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// High nibble: protocol version 2; low nibble: command PROXY (relayed on behalf of a client).
const V2_VERSION_AND_PROXY_COMMAND: u8 = 0x21;
/// High nibble: address family; low nibble: transport (1 = stream).
const V2_TCP_OVER_IPV4: u8 = 0x11;
const V2_TCP_OVER_IPV6: u8 = 0x21;
/// Signature, version/command, family/transport and the u16 length.
const V2_FIXED_PART_LEN: usize = 16;
const PP2_TYPE_ALPN: u8 = 0x01;
const PP2_TYPE_AUTHORITY: u8 = 0x02;
const PP2_TYPE_SSL: u8 = 0x20;
const PP2_SUBTYPE_SSL_VERSION: u8 = 0x21;
const PP2_SUBTYPE_SSL_CN: u8 = 0x22;
const PP2_SUBTYPE_SSL_CIPHER: u8 = 0x23;
const PP2_CLIENT_SSL: u8 = 0x01;
const PP2_CLIENT_CERT_CONN: u8 = 0x02;
const PP2_CLIENT_CERT_SESS: u8 = 0x04;
/// The longest value of each text TLV, chosen so that every header fits the smallest TCP segment every host must
/// accept (576 - 40 = 536 bytes), as the spec designs both formats to, and arrives in the one read receivers such as
/// Dovecot do. "TLSv1.3" and cipher names such as "ECDHE-ECDSA-CHACHA20-POLY1305" are far
/// shorter; X.509 bounds a common name at 64 characters (ub-common-name) and DNS a host name at 253 bytes. ALPN
/// allows 255-byte names, but the registered ones are at most a dozen bytes ("http/1.1", "h2", "imap",
/// "acme-tls/1"), and 64 is what is left. With these bounds the largest header is
/// 16 + 36 (IPv6) + 8 + (3 + 16) + (3 + 64) + (3 + 64) + (3 + 253) + (3 + 64) = 536 bytes.
const MAX_VERSION_LEN: usize = 16;
const MAX_CN_LEN: usize = 64;
const MAX_CIPHER_LEN: usize = 64;
const MAX_AUTHORITY_LEN: usize = 253;
const MAX_ALPN_LEN: usize = 64;

fn v2_header(endpoints: &Endpoints, tls: Option<&TlsFacts>) -> Vec<u8> {
    let (family_and_transport, address_block) = v2_address_block(endpoints);
    let tlvs = tls.map_or_else(Vec::new, tls_tlvs);
    let mut header = Vec::with_capacity(V2_FIXED_PART_LEN + address_block.len() + tlvs.len());
    header.extend_from_slice(&V2_SIGNATURE);
    header.push(V2_VERSION_AND_PROXY_COMMAND);
    header.push(family_and_transport);
    header.extend_from_slice(&length_field(address_block.len() + tlvs.len()));
    header.extend_from_slice(&address_block);
    header.extend_from_slice(&tlvs);
    header
}

/// Source address, destination address, source port, destination port, all big-endian.
fn v2_address_block(endpoints: &Endpoints) -> (u8, Vec<u8>) {
    let (family_and_transport, mut block) = match endpoints.addresses {
        AddressPair::V4 {
            source,
            destination,
        } => (
            V2_TCP_OVER_IPV4,
            [source.octets(), destination.octets()].concat(),
        ),
        AddressPair::V6 {
            source,
            destination,
        } => (
            V2_TCP_OVER_IPV6,
            [source.octets(), destination.octets()].concat(),
        ),
    };
    block.extend_from_slice(&endpoints.source_port.to_be_bytes());
    block.extend_from_slice(&endpoints.destination_port.to_be_bytes());
    (family_and_transport, block)
}

/// Every length written is bounded by the TLV bounds (at most 536 bytes in all), so it always fits the u16 field.
fn length_field(len: usize) -> [u8; 2] {
    u16::try_from(len)
        .expect("lengths are bounded by the MAX_*_LEN bounds")
        .to_be_bytes()
}

/// A type-length-value entry, at the top level or inside PP2_TYPE_SSL.
struct Tlv {
    kind: u8,
    value: Vec<u8>,
}

impl Tlv {
    fn encode_into(&self, out: &mut Vec<u8>) {
        out.push(self.kind);
        out.extend_from_slice(&length_field(self.value.len()));
        out.extend_from_slice(&self.value);
    }
}

/// PP2_TYPE_ALPN (the application protocol), PP2_TYPE_AUTHORITY (the server name) and PP2_TYPE_SSL with its flags,
/// verify result and sub-TLVs, in type order.
fn tls_tlvs(facts: &TlsFacts) -> Vec<u8> {
    let verified_cn = facts
        .verified_client
        .as_ref()
        .filter(|_| client_cert_verified(facts))
        .and_then(|names| names.common_name.as_deref());
    let sub_tlvs = [
        text_tlv(PP2_SUBTYPE_SSL_VERSION, &facts.protocol, MAX_VERSION_LEN),
        verified_cn.and_then(|cn| text_tlv(PP2_SUBTYPE_SSL_CN, cn, MAX_CN_LEN)),
        text_tlv(PP2_SUBTYPE_SSL_CIPHER, &facts.cipher, MAX_CIPHER_LEN),
    ];
    let mut ssl_value = vec![client_flags(facts)];
    ssl_value.extend_from_slice(&verify_result(facts).to_be_bytes());
    for tlv in sub_tlvs.iter().flatten() {
        tlv.encode_into(&mut ssl_value);
    }
    let alpn = facts
        .alpn
        .as_deref()
        .and_then(|protocol| text_tlv(PP2_TYPE_ALPN, protocol, MAX_ALPN_LEN));
    let authority = facts
        .server_name
        .as_deref()
        .and_then(|name| text_tlv(PP2_TYPE_AUTHORITY, name, MAX_AUTHORITY_LEN));
    let ssl = Tlv {
        kind: PP2_TYPE_SSL,
        value: ssl_value,
    };
    let mut out = Vec::new();
    for tlv in alpn.iter().chain(authority.iter()).chain([&ssl]) {
        tlv.encode_into(&mut out);
    }
    out
}

/// A text TLV, or none: empty text says nothing; text holding a NUL would be cut short by receivers that copy it as
/// a C string (Dovecot does, for the CN), so they would read a different, shorter name; and text longer than its
/// bound is left out whole rather than cut (a cut name could be somebody else's).
fn text_tlv(kind: u8, text: &str, longest: usize) -> Option<Tlv> {
    let sendable = !text.is_empty() && !text.contains('\0') && text.len() <= longest;
    sendable.then(|| Tlv {
        kind,
        value: text.as_bytes().to_vec(),
    })
}

/// A certificate shown on this connection was also shown in its TLS session, hence both flags; a resumed session's
/// certificate was shown on an earlier connection only.
fn client_flags(facts: &TlsFacts) -> u8 {
    match (facts.client_cert_presented, facts.resumed) {
        (false, _) => PP2_CLIENT_SSL,
        (true, false) => PP2_CLIENT_SSL | PP2_CLIENT_CERT_CONN | PP2_CLIENT_CERT_SESS,
        (true, true) => PP2_CLIENT_SSL | PP2_CLIENT_CERT_SESS,
    }
}

/// The spec's rule: 0 only for a presented and verified certificate. (HAProxy sends 0 when no
/// certificate was presented at all; a receiver trusting 0 alone would be misled by that.)
fn verify_result(facts: &TlsFacts) -> u32 {
    if client_cert_verified(facts) { 0 } else { 1 }
}

fn client_cert_verified(facts: &TlsFacts) -> bool {
    facts.client_cert_presented && facts.verified_client.is_some()
}

/// What a received header says about the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Carried {
    /// The PROXY command over TCP: the client and the address it connected to.
    Client {
        source: SocketAddr,
        destination: SocketAddr,
    },
    /// v2 LOCAL: the sender's own connection (HAProxy's health checks); the connection's real addresses apply.
    Local,
    /// v1 UNKNOWN, or v2 with a family no socket address states (AF_UNSPEC, AF_UNIX): the real addresses apply, as
    /// the specification tells receivers.
    Unknown,
}

/// A complete, valid header at the start of the received bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReceivedHeader {
    pub version: ProxyVersion,
    pub carried: Carried,
    /// How many bytes the header takes; the connection's own bytes start right after it.
    pub length: usize,
}

/// What the bytes received so far are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    /// The start of a header, or too little to tell: read until this many bytes are held in all, and no more, since
    /// no valid header ends before that.
    NeedAtLeast(usize),
    Header(ReceivedHeader),
    /// Not a header, or a malformed one; the reason names what is wrong.
    Invalid(String),
}

/// The longest v1 line, CRLF included: the specification's bound for receivers.
pub const V1_MAX_LEN: usize = 107;
/// The longest v2 header accepted, fixed part included. The format allows 16 + 65535 bytes, but what real senders
/// put there is small: the addresses (at most 216 bytes, for AF_UNIX) and a few TLVs (HAProxy's unique id is at
/// most 128 bytes, a server name at most 255, its SSL TLV a few dozen; cloud balancers add one short id). Even a
/// sender using all of them stays well under 2 KiB, and one page is a bound a session can hold without thought.
pub const MAX_RECEIVED_V2_LEN: usize = 4096;
/// The shortest header of either format: "PROXY UNKNOWN\r\n" (15 bytes; a v2 header has at least 16).
const MIN_HEADER_LEN: usize = 15;
const V1_PREFIX: &[u8] = b"PROXY ";
const V2_COMMAND_LOCAL: u8 = 0x0;
const V2_COMMAND_PROXY: u8 = 0x1;
const V2_FAMILY_UNSPEC: u8 = 0x0;
const V2_FAMILY_INET: u8 = 0x1;
const V2_FAMILY_INET6: u8 = 0x2;
const V2_FAMILY_UNIX: u8 = 0x3;
const V2_TRANSPORT_STREAM: u8 = 0x1;

/// Reads a PROXY header at the start of `bytes` (which may hold more: only the header's own bytes are looked at).
pub fn parse_header(bytes: &[u8]) -> Parsed {
    let start = &bytes[..bytes.len().min(V2_SIGNATURE.len())];
    if V1_PREFIX.starts_with(&start[..start.len().min(V1_PREFIX.len())]) {
        parse_v1(bytes)
    } else if V2_SIGNATURE.starts_with(start) {
        parse_v2(bytes)
    } else if bytes.first() == Some(&0x16) {
        Parsed::Invalid("no PROXY header: the connection starts with a TLS handshake".to_string())
    } else {
        Parsed::Invalid("no PROXY header: the connection starts with other bytes".to_string())
    }
}

fn parse_v1(bytes: &[u8]) -> Parsed {
    if bytes.len() < MIN_HEADER_LEN {
        return Parsed::NeedAtLeast(MIN_HEADER_LEN);
    }
    let window = &bytes[..bytes.len().min(V1_MAX_LEN)];
    let Some(newline) = window.iter().position(|&byte| byte == b'\n') else {
        return if window.len() == V1_MAX_LEN {
            Parsed::Invalid(format!("PROXY v1 line longer than {V1_MAX_LEN} bytes"))
        } else {
            Parsed::NeedAtLeast(window.len() + 1)
        };
    };
    let line = &window[..=newline];
    let Some(text) = line
        .strip_suffix(b"\r\n")
        .and_then(|text| text.strip_prefix(V1_PREFIX))
    else {
        return Parsed::Invalid("PROXY v1 line does not end in CRLF".to_string());
    };
    match v1_fields(text) {
        Ok(carried) => Parsed::Header(ReceivedHeader {
            version: ProxyVersion::V1,
            carried,
            length: line.len(),
        }),
        Err(reason) => Parsed::Invalid(format!("PROXY v1 line: {reason}")),
    }
}

/// "TCP4|TCP6 source destination sport dport", or "UNKNOWN" followed by anything.
fn v1_fields(text: &[u8]) -> Result<Carried, String> {
    let text = std::str::from_utf8(text).map_err(|_| "not ASCII text".to_string())?;
    if text == "UNKNOWN" || text.starts_with("UNKNOWN ") {
        return Ok(Carried::Unknown);
    }
    let fields: Vec<&str> = text.split(' ').collect();
    let [protocol, source, destination, source_port, destination_port] = fields[..] else {
        return Err(format!("expected 5 fields, got {}", fields.len()));
    };
    let (source, destination): (IpAddr, IpAddr) = match protocol {
        "TCP4" => (
            v1_address::<Ipv4Addr>(source)?.into(),
            v1_address::<Ipv4Addr>(destination)?.into(),
        ),
        "TCP6" => (
            v1_address::<Ipv6Addr>(source)?.into(),
            v1_address::<Ipv6Addr>(destination)?.into(),
        ),
        other => return Err(format!("unknown protocol '{other}'")),
    };
    Ok(Carried::Client {
        source: SocketAddr::new(source, v1_port(source_port)?),
        destination: SocketAddr::new(destination, v1_port(destination_port)?),
    })
}

fn v1_address<A: FromStr>(text: &str) -> Result<A, String> {
    text.parse()
        .map_err(|_| format!("bad address '{}'", text.escape_debug()))
}

/// Decimal digits only: `u16`'s own parser would take "+443".
fn v1_port(text: &str) -> Result<u16, String> {
    let bad = || format!("bad port '{}'", text.escape_debug());
    if text.is_empty() || text.len() > 5 || !text.bytes().all(|byte| byte.is_ascii_digit()) {
        return Err(bad());
    }
    text.parse().map_err(|_| bad())
}

fn parse_v2(bytes: &[u8]) -> Parsed {
    if bytes.len() < V2_FIXED_PART_LEN {
        return Parsed::NeedAtLeast(V2_FIXED_PART_LEN);
    }
    let (version, command) = (bytes[12] >> 4, bytes[12] & 0x0F);
    if version != 2 {
        return Parsed::Invalid(format!("PROXY v2 header with version {version}"));
    }
    let length = V2_FIXED_PART_LEN + usize::from(u16::from_be_bytes([bytes[14], bytes[15]]));
    if length > MAX_RECEIVED_V2_LEN {
        return Parsed::Invalid(format!(
            "PROXY v2 header of {length} bytes, more than the {MAX_RECEIVED_V2_LEN} accepted"
        ));
    }
    if bytes.len() < length {
        return Parsed::NeedAtLeast(length);
    }
    let carried = match command {
        // The specification: a LOCAL header's addresses are to be ignored, whatever they hold.
        V2_COMMAND_LOCAL => Ok(Carried::Local),
        V2_COMMAND_PROXY => v2_addresses(bytes[13], &bytes[V2_FIXED_PART_LEN..length]),
        other => Err(format!("unknown command {other:#x}")),
    };
    match carried {
        Ok(carried) => Parsed::Header(ReceivedHeader {
            version: ProxyVersion::V2,
            carried,
            length,
        }),
        Err(reason) => Parsed::Invalid(format!("PROXY v2 header: {reason}")),
    }
}

/// The address block of a PROXY command, then its TLVs, which are checked to fit and otherwise skipped.
fn v2_addresses(family_and_transport: u8, block: &[u8]) -> Result<Carried, String> {
    let (family, transport) = (family_and_transport >> 4, family_and_transport & 0x0F);
    let address_len = match family {
        V2_FAMILY_UNSPEC | V2_FAMILY_UNIX => return Ok(Carried::Unknown),
        V2_FAMILY_INET => 12,
        V2_FAMILY_INET6 => 36,
        other => return Err(format!("unknown address family {other:#x}")),
    };
    if transport != V2_TRANSPORT_STREAM {
        return Err(format!("transport {transport:#x} is not TCP"));
    }
    if block.len() < address_len {
        return Err(format!(
            "{} address bytes, {address_len} needed",
            block.len()
        ));
    }
    check_tlvs(&block[address_len..])?;
    let half = (address_len - 4) / 2;
    let ports = &block[address_len - 4..address_len];
    let ip = |bytes: &[u8]| -> IpAddr {
        match <[u8; 4]>::try_from(bytes) {
            Ok(v4) => Ipv4Addr::from(v4).into(),
            Err(_) => {
                let mut v6 = [0u8; 16];
                v6.copy_from_slice(bytes);
                Ipv6Addr::from(v6).into()
            }
        }
    };
    Ok(Carried::Client {
        source: SocketAddr::new(ip(&block[..half]), u16::from_be_bytes([ports[0], ports[1]])),
        destination: SocketAddr::new(
            ip(&block[half..2 * half]),
            u16::from_be_bytes([ports[2], ports[3]]),
        ),
    })
}

/// Every TLV must fit in the header: one that runs past its end shows a sender that cannot be trusted to have
/// written the rest right.
fn check_tlvs(mut tlvs: &[u8]) -> Result<(), String> {
    while !tlvs.is_empty() {
        if tlvs.len() < 3 {
            return Err("truncated TLV".to_string());
        }
        let value_len = usize::from(u16::from_be_bytes([tlvs[1], tlvs[2]]));
        if tlvs.len() < 3 + value_len {
            return Err(format!("TLV {:#04x} runs past the header", tlvs[0]));
        }
        tlvs = &tlvs[3 + value_len..];
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddrV6;

    fn addr(text: &str) -> SocketAddr {
        text.parse().expect("test address")
    }

    fn v1(source: &str, destination: &str) -> String {
        let header = proxy_header(ProxyVersion::V1, addr(source), addr(destination), None);
        String::from_utf8(header).expect("v1 is text")
    }

    fn v2(source: &str, destination: &str, tls: Option<&TlsFacts>) -> Vec<u8> {
        proxy_header(ProxyVersion::V2, addr(source), addr(destination), tls)
    }

    use crate::tls_facts::ClientNames;

    /// The smallest TCP segment every host must accept (576 - 40 bytes): every header must fit.
    const MAX_V2_HEADER_LEN: usize = 536;

    fn tls13() -> TlsFacts {
        TlsFacts {
            protocol: "TLSv1.3".to_string(),
            cipher: "TLS_AES_128_GCM_SHA256".to_string(),
            ..TlsFacts::default()
        }
    }

    fn verified_client(cn: &str) -> TlsFacts {
        TlsFacts {
            client_cert_presented: true,
            verified_client: Some(ClientNames {
                subject: format!("/CN={cn}"),
                issuer: "/CN=Test CA".to_string(),
                common_name: Some(cn.to_string()),
            }),
            ..tls13()
        }
    }

    /// A v2 header read back by an independent walker, to prove the structure.
    #[derive(Debug)]
    struct ParsedV2 {
        family_and_transport: u8,
        address_block: Vec<u8>,
        tlvs: Vec<(u8, Vec<u8>)>,
    }

    #[derive(Debug)]
    struct ParsedSsl {
        client: u8,
        verify: u32,
        sub_tlvs: Vec<(u8, Vec<u8>)>,
    }

    fn parse_v2(header: &[u8]) -> ParsedV2 {
        assert_eq!(header[..12], V2_SIGNATURE, "signature");
        assert_eq!(header[12], 0x21, "version 2, command PROXY");
        let length = usize::from(u16::from_be_bytes([header[14], header[15]]));
        assert_eq!(
            header.len(),
            16 + length,
            "length field covers the rest exactly"
        );
        let address_len = match header[13] {
            0x11 => 12,
            0x21 => 36,
            other => panic!("unexpected family/transport {other:#04x}"),
        };
        ParsedV2 {
            family_and_transport: header[13],
            address_block: header[16..16 + address_len].to_vec(),
            tlvs: walk_tlvs(&header[16 + address_len..]),
        }
    }

    fn walk_tlvs(mut bytes: &[u8]) -> Vec<(u8, Vec<u8>)> {
        let mut tlvs = Vec::new();
        while !bytes.is_empty() {
            assert!(bytes.len() >= 3, "truncated TLV head");
            let length = usize::from(u16::from_be_bytes([bytes[1], bytes[2]]));
            assert!(
                bytes.len() >= 3 + length,
                "TLV value runs past its container"
            );
            tlvs.push((bytes[0], bytes[3..3 + length].to_vec()));
            bytes = &bytes[3 + length..];
        }
        tlvs
    }

    fn parse_ssl(parsed: &ParsedV2) -> ParsedSsl {
        let ssl: Vec<_> = parsed
            .tlvs
            .iter()
            .filter(|(kind, _)| *kind == 0x20)
            .collect();
        assert_eq!(ssl.len(), 1, "exactly one PP2_TYPE_SSL");
        let value = &ssl[0].1;
        ParsedSsl {
            client: value[0],
            verify: u32::from_be_bytes([value[1], value[2], value[3], value[4]]),
            sub_tlvs: walk_tlvs(&value[5..]),
        }
    }

    fn find(tlvs: &[(u8, Vec<u8>)], kind: u8) -> Option<&[u8]> {
        tlvs.iter()
            .find(|(found, _)| *found == kind)
            .map(|(_, value)| value.as_slice())
    }

    fn kinds(tlvs: &[(u8, Vec<u8>)]) -> Vec<u8> {
        tlvs.iter().map(|(kind, _)| *kind).collect()
    }

    const SIGNATURE_AND_PROXY: [u8; 13] = [
        0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A, 0x21,
    ];

    /// The spec's TCP-over-IPv4 header, 192.168.0.1:56324 to 192.168.0.11:443, no TLVs: what the builder must make
    /// and the parser must read.
    fn v2_tcp4_example() -> Vec<u8> {
        let mut bytes = SIGNATURE_AND_PROXY.to_vec();
        bytes.extend_from_slice(&[
            0x11, 0x00, 0x0C, // TCP over IPv4, 12 bytes follow
            0xC0, 0xA8, 0x00, 0x01, // 192.168.0.1
            0xC0, 0xA8, 0x00, 0x0B, // 192.168.0.11
            0xDC, 0x04, // 56324
            0x01, 0xBB, // 443
        ]);
        bytes
    }

    #[test]
    fn version_words_parse_and_a_bad_word_is_named() {
        assert_eq!("v1".parse(), Ok(ProxyVersion::V1));
        assert_eq!("v2".parse(), Ok(ProxyVersion::V2));
        let error = "v3".parse::<ProxyVersion>().unwrap_err();
        assert!(error.contains("'v3'"), "{error}");
        assert!("V2".parse::<ProxyVersion>().is_err());
        assert!("".parse::<ProxyVersion>().is_err());
    }

    #[test]
    fn v1_matches_the_specification_example() {
        assert_eq!(
            v1("192.168.0.1:56324", "192.168.0.11:443"),
            "PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n"
        );
    }

    #[test]
    fn v1_longest_ipv4_line_is_the_specification_maximum() {
        let line = v1("255.255.255.255:65535", "255.255.255.255:65535");
        assert_eq!(
            line,
            "PROXY TCP4 255.255.255.255 255.255.255.255 65535 65535\r\n"
        );
        assert_eq!(line.len(), 56);
    }

    #[test]
    fn v1_ipv6() {
        assert_eq!(
            v1("[2001:db8::1]:51000", "[2001:db8::2]:993"),
            "PROXY TCP6 2001:db8::1 2001:db8::2 51000 993\r\n"
        );
        assert_eq!(
            v1("[::1]:40000", "[::1]:143"),
            "PROXY TCP6 ::1 ::1 40000 143\r\n"
        );
    }

    #[test]
    fn v1_longest_ipv6_line_fits_the_receiver_limit() {
        let full = "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535";
        let line = v1(full, full);
        assert_eq!(
            line,
            "PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff \
             ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n"
        );
        assert_eq!(line.len(), 104);
        assert!(line.len() <= 107);
    }

    #[test]
    fn v1_ignores_tls_facts() {
        let facts = verified_client("alice");
        let with = proxy_header(
            ProxyVersion::V1,
            addr("192.0.2.7:1234"),
            addr("192.0.2.1:993"),
            Some(&facts),
        );
        assert_eq!(with, b"PROXY TCP4 192.0.2.7 192.0.2.1 1234 993\r\n");
    }

    #[test]
    fn v1_dual_stack_ipv4_client_is_announced_as_ipv4() {
        assert_eq!(
            v1("[::ffff:127.0.0.5]:40000", "[::ffff:127.0.0.1]:993"),
            "PROXY TCP4 127.0.0.5 127.0.0.1 40000 993\r\n"
        );
        assert_eq!(
            v1("[::ffff:127.0.0.5]:40000", "127.0.0.1:993"),
            "PROXY TCP4 127.0.0.5 127.0.0.1 40000 993\r\n"
        );
    }

    #[test]
    fn v1_mixed_families_become_tcp6_with_the_ipv4_end_mapped_in_hex() {
        assert_eq!(
            v1("[2001:db8::1]:51000", "192.0.2.1:993"),
            "PROXY TCP6 2001:db8::1 ::ffff:c000:201 51000 993\r\n"
        );
        assert_eq!(
            v1("192.0.2.7:1234", "[2001:db8::2]:993"),
            "PROXY TCP6 ::ffff:c000:207 2001:db8::2 1234 993\r\n"
        );
    }

    #[test]
    fn v1_drops_the_ipv6_scope_id() {
        let source = SocketAddr::V6(SocketAddrV6::new("fe80::1".parse().unwrap(), 5000, 0, 3));
        let destination = SocketAddr::V6(SocketAddrV6::new("fe80::2".parse().unwrap(), 25, 7, 3));
        let header = proxy_header(ProxyVersion::V1, source, destination, None);
        assert_eq!(header, b"PROXY TCP6 fe80::1 fe80::2 5000 25\r\n");
    }

    #[test]
    fn ipv6_text_follows_rfc_5952() {
        for (address, text) in [
            ("::", "::"),
            ("::1", "::1"),
            ("1::", "1::"),
            ("2001:db8:0:0:1:0:0:1", "2001:db8::1:0:0:1"),
            ("1:0:0:2:0:0:0:3", "1:0:0:2::3"),
            ("2001:db8:0:1:1:1:1:1", "2001:db8:0:1:1:1:1:1"),
            ("2001:DB8::ABCD", "2001:db8::abcd"),
            ("::ffff:192.0.2.1", "::ffff:c000:201"),
            ("::192.0.2.1", "::c000:201"),
        ] {
            let parsed: Ipv6Addr = address.parse().unwrap();
            assert_eq!(ipv6_hex_text(parsed), text, "{address}");
        }
    }

    #[test]
    fn ipv6_text_agrees_with_std_outside_ipv4_mapped_addresses() {
        for address in [
            "::2",
            "fe80::1:2",
            "2001:db8:85a3::8a2e:370:7334",
            "0:0:1::",
            "1:2:3:4:5:6:7:8",
            "1:0:1:0:1:0:1:0",
            "ff02::1:ff00:0",
        ] {
            let parsed: Ipv6Addr = address.parse().unwrap();
            assert_eq!(ipv6_hex_text(parsed), parsed.to_string(), "{address}");
        }
    }

    #[test]
    fn v2_ipv4_without_tls() {
        let expected = v2_tcp4_example();
        assert_eq!(v2("192.168.0.1:56324", "192.168.0.11:443", None), expected);
    }

    #[test]
    fn v2_ipv6_without_tls() {
        let mut expected = SIGNATURE_AND_PROXY.to_vec();
        expected.extend_from_slice(&[0x21, 0x00, 0x24]); // TCP over IPv6, 36 bytes follow
        expected.extend_from_slice(&[
            0x20, 0x01, 0x0D, 0xB8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x01,
        ]);
        expected.extend_from_slice(&[0; 15]);
        expected.push(0x01); // ::1
        expected.extend_from_slice(&[0xC7, 0x38, 0x03, 0xE1]); // 51000, 993
        assert_eq!(v2("[2001:db8::1]:51000", "[::1]:993", None), expected);
    }

    #[test]
    fn v2_ipv4_with_tls_and_no_client_certificate() {
        let expected = [
            &SIGNATURE_AND_PROXY[..],
            &[0x11, 0x00, 0x37], // 12 address bytes + 43 TLV bytes
            &[192, 0, 2, 7, 192, 0, 2, 1, 0x04, 0xD2, 0x03, 0xE1],
            &[0x20, 0x00, 0x28],       // PP2_TYPE_SSL, 40 bytes
            &[0x01],                   // PP2_CLIENT_SSL only
            &[0x00, 0x00, 0x00, 0x01], // verify: no certificate, so not success
            &[0x21, 0x00, 0x07],
            b"TLSv1.3",
            &[0x23, 0x00, 0x16],
            b"TLS_AES_128_GCM_SHA256",
        ]
        .concat();
        assert_eq!(
            v2("192.0.2.7:1234", "192.0.2.1:993", Some(&tls13())),
            expected
        );
    }

    #[test]
    fn v2_ipv6_with_every_tls_fact() {
        let facts = TlsFacts {
            server_name: Some("mail.example.org".to_string()),
            ..verified_client("alice")
        };
        let expected = [
            &SIGNATURE_AND_PROXY[..],
            &[0x21, 0x00, 0x6A], // 36 address bytes + 70 TLV bytes
            &[
                0x20, 0x01, 0x0D, 0xB8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x07,
            ],
            &[
                0x20, 0x01, 0x0D, 0xB8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x01,
            ],
            &[0xC3, 0x50, 0x03, 0xE1], // 50000, 993
            &[0x02, 0x00, 0x10],
            b"mail.example.org",
            &[0x20, 0x00, 0x30],       // PP2_TYPE_SSL, 48 bytes
            &[0x07],                   // SSL, CERT_CONN, CERT_SESS
            &[0x00, 0x00, 0x00, 0x00], // verified
            &[0x21, 0x00, 0x07],
            b"TLSv1.3",
            &[0x22, 0x00, 0x05],
            b"alice",
            &[0x23, 0x00, 0x16],
            b"TLS_AES_128_GCM_SHA256",
        ]
        .concat();
        let header = v2("[2001:db8::7]:50000", "[2001:db8::1]:993", Some(&facts));
        assert_eq!(header, expected);

        let parsed = parse_v2(&header);
        assert_eq!(kinds(&parsed.tlvs), [0x02, 0x20]);
        let ssl = parse_ssl(&parsed);
        assert_eq!(kinds(&ssl.sub_tlvs), [0x21, 0x22, 0x23]);
        assert_eq!(find(&ssl.sub_tlvs, 0x22), Some(&b"alice"[..]));
    }

    #[test]
    fn v2_presented_but_unverified_certificate_sends_no_cn() {
        let facts = TlsFacts {
            verified_client: None,
            ..verified_client("mallory")
        };
        let parsed = parse_v2(&v2("192.0.2.7:1234", "192.0.2.1:993", Some(&facts)));
        let ssl = parse_ssl(&parsed);
        assert_eq!(ssl.client, 0x07);
        assert_eq!(ssl.verify, 1);
        assert_eq!(find(&ssl.sub_tlvs, 0x22), None);
        assert_eq!(kinds(&ssl.sub_tlvs), [0x21, 0x23]);
    }

    #[test]
    fn v2_resumed_session_says_its_certificate_was_not_shown_on_this_connection() {
        let facts = TlsFacts {
            resumed: true,
            ..verified_client("alice")
        };
        let parsed = parse_v2(&v2("192.0.2.7:1234", "192.0.2.1:993", Some(&facts)));
        let ssl = parse_ssl(&parsed);
        assert_eq!(ssl.client, 0x05);
        assert_eq!(ssl.verify, 0);
        assert_eq!(find(&ssl.sub_tlvs, 0x22), Some(&b"alice"[..]));
    }

    #[test]
    fn v2_verified_without_a_presented_certificate_is_not_success() {
        let facts = TlsFacts {
            client_cert_presented: false,
            ..verified_client("nobody")
        };
        let parsed = parse_v2(&v2("192.0.2.7:1234", "192.0.2.1:993", Some(&facts)));
        let ssl = parse_ssl(&parsed);
        assert_eq!(ssl.client, 0x01);
        assert_eq!(ssl.verify, 1);
        assert_eq!(find(&ssl.sub_tlvs, 0x22), None);
    }

    #[test]
    fn v2_leaves_out_empty_values_and_text_with_nul() {
        let mut facts = TlsFacts {
            protocol: String::new(),
            cipher: "AES\0".to_string(),
            server_name: Some(String::new()),
            ..verified_client("unused")
        };
        if let Some(names) = facts.verified_client.as_mut() {
            names.common_name = Some("admin\0.evil.example".to_string());
        }
        let parsed = parse_v2(&v2("192.0.2.7:1234", "192.0.2.1:993", Some(&facts)));
        assert_eq!(kinds(&parsed.tlvs), [0x20]);
        let ssl = parse_ssl(&parsed);
        assert_eq!((ssl.client, ssl.verify), (0x07, 0));
        assert!(ssl.sub_tlvs.is_empty(), "{ssl:?}");
    }

    #[test]
    fn a_required_starttls_session_announces_only_the_tls_flag() {
        let parsed = parse_v2(&v2(
            "192.0.2.7:1234",
            "192.0.2.1:143",
            Some(&TlsFacts::default()),
        ));
        assert_eq!(kinds(&parsed.tlvs), [0x20]);
        let ssl = parse_ssl(&parsed);
        assert_eq!((ssl.client, ssl.verify), (0x01, 1));
        assert!(ssl.sub_tlvs.is_empty());
    }

    #[test]
    fn v2_mixed_families_become_tcp_over_ipv6_with_the_ipv4_end_mapped() {
        let parsed = parse_v2(&v2("192.0.2.7:1234", "[2001:db8::1]:993", None));
        assert_eq!(parsed.family_and_transport, 0x21);
        let mapped = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xFF, 0xFF, 192, 0, 2, 7];
        assert_eq!(parsed.address_block[..16], mapped);
    }

    #[test]
    fn v2_dual_stack_ipv4_client_is_announced_as_ipv4() {
        let header = v2("[::ffff:127.0.0.5]:40000", "[::ffff:127.0.0.1]:993", None);
        let parsed = parse_v2(&header);
        assert_eq!(parsed.family_and_transport, 0x11);
        assert_eq!(
            parsed.address_block,
            [127, 0, 0, 5, 127, 0, 0, 1, 0x9C, 0x40, 0x03, 0xE1]
        );
    }

    #[test]
    fn v2_carries_the_agreed_application_protocol_first() {
        let facts = TlsFacts {
            alpn: Some("h2".to_string()),
            server_name: Some("www.example.org".to_string()),
            ..tls13()
        };
        let header = v2("192.0.2.7:1234", "192.0.2.1:443", Some(&facts));
        let parsed = parse_v2(&header);
        assert_eq!(kinds(&parsed.tlvs), [0x01, 0x02, 0x20]);
        assert_eq!(find(&parsed.tlvs, 0x01), Some(&b"h2"[..]));
        assert_eq!(header[16 + 12..16 + 12 + 5], [0x01, 0x00, 0x02, b'h', b'2']);
        let without = v2("192.0.2.7:1234", "192.0.2.1:443", Some(&tls13()));
        assert_eq!(kinds(&parse_v2(&without).tlvs), [0x20]);
    }

    #[test]
    fn v2_values_at_their_bounds_are_sent_and_the_header_still_fits() {
        let mut facts = TlsFacts {
            protocol: "p".repeat(MAX_VERSION_LEN),
            cipher: "c".repeat(MAX_CIPHER_LEN),
            server_name: Some("s".repeat(MAX_AUTHORITY_LEN)),
            alpn: Some("a".repeat(MAX_ALPN_LEN)),
            ..verified_client("unused")
        };
        if let Some(names) = facts.verified_client.as_mut() {
            names.common_name = Some("n".repeat(MAX_CN_LEN));
        }
        let header = v2("[2001:db8::7]:50000", "[2001:db8::1]:993", Some(&facts));
        assert_eq!(header.len(), 536);
        assert!(header.len() <= MAX_V2_HEADER_LEN);
        let parsed = parse_v2(&header);
        assert_eq!(kinds(&parsed.tlvs), [0x01, 0x02, 0x20]);
        assert_eq!(kinds(&parse_ssl(&parsed).sub_tlvs), [0x21, 0x22, 0x23]);
    }

    #[test]
    fn v2_a_value_one_byte_past_its_bound_is_left_out_whole() {
        let mut facts = TlsFacts {
            protocol: "p".repeat(MAX_VERSION_LEN + 1),
            cipher: "c".repeat(MAX_CIPHER_LEN + 1),
            server_name: Some("s".repeat(MAX_AUTHORITY_LEN + 1)),
            alpn: Some("a".repeat(MAX_ALPN_LEN + 1)),
            ..verified_client("unused")
        };
        if let Some(names) = facts.verified_client.as_mut() {
            names.common_name = Some("n".repeat(MAX_CN_LEN + 1));
        }
        let header = v2("[2001:db8::7]:50000", "[2001:db8::1]:993", Some(&facts));
        let parsed = parse_v2(&header);
        assert_eq!(kinds(&parsed.tlvs), [0x20]);
        let ssl = parse_ssl(&parsed);
        assert_eq!((ssl.client, ssl.verify), (0x07, 0));
        assert!(ssl.sub_tlvs.is_empty());
        assert_eq!(header.len(), 16 + 36 + 3 + 1 + 4);
    }

    fn client(source: &str, destination: &str) -> Carried {
        Carried::Client {
            source: addr(source),
            destination: addr(destination),
        }
    }

    fn header(version: ProxyVersion, carried: Carried, length: usize) -> Parsed {
        Parsed::Header(ReceivedHeader {
            version,
            carried,
            length,
        })
    }

    fn invalid(bytes: &[u8]) -> String {
        match parse_header(bytes) {
            Parsed::Invalid(reason) => reason,
            other => panic!("{:?} parsed as {other:?}", String::from_utf8_lossy(bytes)),
        }
    }

    #[test]
    fn parses_the_specification_v1_examples() {
        let line = b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n";
        assert_eq!(
            parse_header(line),
            header(
                ProxyVersion::V1,
                client("192.168.0.1:56324", "192.168.0.11:443"),
                line.len()
            )
        );
        let line = b"PROXY TCP6 ffff:f...f:ffff ffff:f...f:ffff 65535 65535\r\n";
        assert!(invalid(line).contains("bad address 'ffff:f...f:ffff'"));
        let line = b"PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n";
        let full = "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535";
        assert_eq!(
            parse_header(line),
            header(ProxyVersion::V1, client(full, full), 104)
        );
        assert_eq!(
            parse_header(b"PROXY UNKNOWN\r\n"),
            header(ProxyVersion::V1, Carried::Unknown, 15)
        );
        let line = b"PROXY UNKNOWN ffff:f...f:ffff ffff:f...f:ffff 65535 65535\r\n";
        assert_eq!(
            parse_header(line),
            header(ProxyVersion::V1, Carried::Unknown, line.len())
        );
    }

    #[test]
    fn a_v1_header_ends_at_its_crlf_and_what_follows_is_left_alone() {
        let mut bytes = b"PROXY TCP4 192.0.2.7 192.0.2.1 1234 993\r\n".to_vec();
        let length = bytes.len();
        bytes.extend_from_slice(&[0x16, 0x03, 0x01, b'\n']);
        assert_eq!(
            parse_header(&bytes),
            header(
                ProxyVersion::V1,
                client("192.0.2.7:1234", "192.0.2.1:993"),
                length
            )
        );
    }

    #[test]
    fn a_v1_line_is_read_a_byte_at_a_time_past_its_shortest_form() {
        let line = b"PROXY TCP4 192.0.2.7 192.0.2.1 1234 993\r\n";
        assert_eq!(parse_header(b""), Parsed::NeedAtLeast(15));
        assert_eq!(parse_header(b"PRO"), Parsed::NeedAtLeast(15));
        for have in 15..line.len() {
            assert_eq!(parse_header(&line[..have]), Parsed::NeedAtLeast(have + 1));
        }
    }

    #[test]
    fn bad_v1_lines_are_refused_with_the_reason() {
        let long = [b"PROXY UNKNOWN ".as_slice(), &[b'x'; 100]].concat();
        assert_eq!(invalid(&long), "PROXY v1 line longer than 107 bytes");
        let mut longest = [b"PROXY UNKNOWN ".as_slice(), &[b'x'; 91]].concat();
        longest.extend_from_slice(b"\r\n");
        assert_eq!(longest.len(), 107);
        assert_eq!(
            parse_header(&longest),
            header(ProxyVersion::V1, Carried::Unknown, 107)
        );
        for (line, reason) in [
            (
                &b"PROXY TCP4 192.0.2.7 192.0.2.1 1234 993\n"[..],
                "does not end in CRLF",
            ),
            (
                b"PROXY TCP4 192.0.2.7 192.0.2.1 1234\r\n",
                "expected 5 fields, got 4",
            ),
            (
                b"PROXY TCP4 192.0.2.7  192.0.2.1 1234 993\r\n",
                "expected 5 fields, got 6",
            ),
            (
                b"PROXY TCP5 192.0.2.7 192.0.2.1 1234 993\r\n",
                "unknown protocol 'TCP5'",
            ),
            (
                b"PROXY TCP4 2001:db8::1 192.0.2.1 1234 993\r\n",
                "bad address '2001:db8::1'",
            ),
            (
                b"PROXY TCP6 192.0.2.7 2001:db8::1 1234 993\r\n",
                "bad address '192.0.2.7'",
            ),
            (
                b"PROXY TCP4 192.0.2.07 192.0.2.1 1234 993\r\n",
                "bad address '192.0.2.07'",
            ),
            (
                b"PROXY TCP4 192.0.2.7 192.0.2.1 +1234 993\r\n",
                "bad port '+1234'",
            ),
            (
                b"PROXY TCP4 192.0.2.7 192.0.2.1 1234 65536\r\n",
                "bad port '65536'",
            ),
            (
                b"PROXY TCP4 192.0.2.7 192.0.2.1 1234 \xff\r\n",
                "not ASCII text",
            ),
            (
                b"PROXY  TCP4 192.0.2.7 192.0.2.1 1234 993\r\n",
                "expected 5 fields, got 6",
            ),
        ] {
            let got = invalid(line);
            assert!(got.contains(reason), "{got}");
        }
        assert_eq!(
            invalid(b"proxy TCP4 192.0.2.7 192.0.2.1 1234 993\r\n"),
            "no PROXY header: the connection starts with other bytes"
        );
        assert_eq!(
            invalid(&[0x16, 0x03, 0x01, 0x02, 0x00]),
            "no PROXY header: the connection starts with a TLS handshake"
        );
    }

    #[test]
    fn parses_v2_tcp_over_ipv4_byte_for_byte() {
        let bytes = v2_tcp4_example();
        assert_eq!(
            parse_header(&bytes),
            header(
                ProxyVersion::V2,
                client("192.168.0.1:56324", "192.168.0.11:443"),
                28
            )
        );
        for have in 1..16 {
            assert_eq!(
                parse_header(&bytes[..have]),
                Parsed::NeedAtLeast(16),
                "{have}"
            );
        }
        for have in 16..28 {
            assert_eq!(parse_header(&bytes[..have]), Parsed::NeedAtLeast(28));
        }
    }

    #[test]
    fn parses_v2_tcp_over_ipv6_byte_for_byte() {
        let mut bytes = SIGNATURE_AND_PROXY.to_vec();
        bytes.extend_from_slice(&[0x21, 0x00, 0x24]);
        bytes.extend_from_slice(&[
            0x20, 0x01, 0x0D, 0xB8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x01,
        ]);
        bytes.extend_from_slice(&[0; 15]);
        bytes.push(0x01);
        bytes.extend_from_slice(&[0xC7, 0x38, 0x03, 0xE1]);
        assert_eq!(
            parse_header(&bytes),
            header(
                ProxyVersion::V2,
                client("[2001:db8::1]:51000", "[::1]:993"),
                52
            )
        );
    }

    #[test]
    fn v2_local_unspec_and_unix_use_the_real_addresses() {
        // HAProxy's health check: LOCAL, AF_UNSPEC, no address block.
        let local = [&V2_SIGNATURE[..], &[0x20, 0x00, 0x00, 0x00]].concat();
        assert_eq!(
            parse_header(&local),
            header(ProxyVersion::V2, Carried::Local, 16)
        );
        // LOCAL with addresses: they are ignored.
        let mut local_with_addresses = [&V2_SIGNATURE[..], &[0x20, 0x11, 0x00, 0x0C]].concat();
        local_with_addresses.extend_from_slice(&[192, 0, 2, 7, 192, 0, 2, 1, 0, 1, 0, 2]);
        assert_eq!(
            parse_header(&local_with_addresses),
            header(ProxyVersion::V2, Carried::Local, 28)
        );
        let unspec = [&SIGNATURE_AND_PROXY[..], &[0x00, 0x00, 0x00]].concat();
        assert_eq!(
            parse_header(&unspec),
            header(ProxyVersion::V2, Carried::Unknown, 16)
        );
        let mut unix = [&SIGNATURE_AND_PROXY[..], &[0x31, 0x00, 0xD8]].concat();
        unix.extend_from_slice(&[b'/'; 216]);
        assert_eq!(
            parse_header(&unix),
            header(ProxyVersion::V2, Carried::Unknown, 232)
        );
    }

    #[test]
    fn v2_tlvs_are_skipped_and_what_follows_is_left_alone() {
        let mut bytes = [&SIGNATURE_AND_PROXY[..], &[0x11, 0x00, 0x1A]].concat();
        bytes.extend_from_slice(&[192, 0, 2, 7, 192, 0, 2, 1, 0x04, 0xD2, 0x03, 0xE1]);
        bytes.extend_from_slice(&[0x04, 0x00, 0x03, 0, 0, 0]); // PP2_TYPE_NOOP, 3 bytes
        bytes.extend_from_slice(&[0xE0, 0x00, 0x05, b'h', b'e', b'l', b'l', b'o']); // a custom type
        let length = bytes.len();
        assert_eq!(length, 16 + 26);
        bytes.extend_from_slice(&[0x16, 0x03, 0x01]);
        assert_eq!(
            parse_header(&bytes),
            header(
                ProxyVersion::V2,
                client("192.0.2.7:1234", "192.0.2.1:993"),
                length
            )
        );
    }

    #[test]
    fn bad_v2_headers_are_refused_with_the_reason() {
        let with = |version_command: u8, family: u8, block: &[u8]| {
            let mut bytes = V2_SIGNATURE.to_vec();
            bytes.extend_from_slice(&[version_command, family]);
            bytes.extend_from_slice(&(block.len() as u16).to_be_bytes());
            bytes.extend_from_slice(block);
            bytes
        };
        let v4 = [192, 0, 2, 7, 192, 0, 2, 1, 0x04, 0xD2, 0x03, 0xE1];
        for (bytes, reason) in [
            (with(0x11, 0x11, &v4), "version 1"),
            (with(0x22, 0x11, &v4), "unknown command 0x2"),
            (with(0x21, 0x12, &v4), "transport 0x2 is not TCP"),
            (with(0x21, 0x41, &v4), "unknown address family 0x4"),
            (with(0x21, 0x11, &v4[..11]), "11 address bytes, 12 needed"),
            (with(0x21, 0x21, &v4), "12 address bytes, 36 needed"),
            (
                with(0x21, 0x11, &[&v4[..], &[0x04, 0x00]].concat()),
                "truncated TLV",
            ),
            (
                with(0x21, 0x11, &[&v4[..], &[0x04, 0x00, 0x02, 0]].concat()),
                "TLV 0x04 runs past the header",
            ),
        ] {
            let got = invalid(&bytes);
            assert!(got.contains(reason), "{got}");
        }
    }

    #[test]
    fn an_oversized_v2_header_is_refused_before_its_body_is_read() {
        let mut bytes = [&SIGNATURE_AND_PROXY[..], &[0x11]].concat();
        bytes.extend_from_slice(&((MAX_RECEIVED_V2_LEN - 16) as u16).to_be_bytes());
        assert_eq!(
            parse_header(&bytes),
            Parsed::NeedAtLeast(MAX_RECEIVED_V2_LEN)
        );
        let mut bytes = [&SIGNATURE_AND_PROXY[..], &[0x11]].concat();
        bytes.extend_from_slice(&((MAX_RECEIVED_V2_LEN - 15) as u16).to_be_bytes());
        assert_eq!(
            invalid(&bytes),
            "PROXY v2 header of 4097 bytes, more than the 4096 accepted"
        );
        let mut bytes = [&SIGNATURE_AND_PROXY[..], &[0x11]].concat();
        bytes.extend_from_slice(&[0xFF, 0xFF]);
        assert!(invalid(&bytes).contains("65551 bytes"));
    }

    #[test]
    fn every_built_header_parses_back_to_its_addresses() {
        for (source, destination) in [
            ("192.0.2.7:1234", "192.0.2.1:993"),
            ("[2001:db8::7]:50000", "[2001:db8::1]:993"),
            ("[::ffff:127.0.0.5]:40000", "[::1]:143"),
        ] {
            for version in [ProxyVersion::V1, ProxyVersion::V2] {
                let facts = verified_client("alice");
                let built = proxy_header(version, addr(source), addr(destination), Some(&facts));
                let Parsed::Header(parsed) = parse_header(&built) else {
                    panic!("{version:?} {source}: {:?}", parse_header(&built));
                };
                assert_eq!(parsed.length, built.len());
                assert_eq!(parsed.version, version);
                let Carried::Client {
                    source: got_source,
                    destination: got_destination,
                } = parsed.carried
                else {
                    panic!("{parsed:?}");
                };
                // A mixed pair travels as IPv6 with the IPv4 end mapped: the same address.
                let canonical = |a: SocketAddr| (a.ip().to_canonical(), a.port());
                assert_eq!(canonical(got_source), canonical(addr(source)));
                assert_eq!(canonical(got_destination), canonical(addr(destination)));
            }
        }
    }
}
