//! Fuzz target: the PROXY protocol v1/v2 header builder (src/proxy_header.rs). Addresses, ports and TLS facts come
//! from the input; every header is read back by a reader written here from HAProxy's specification, and must state
//! the same addresses (IPv4-mapped ends as IPv4, a mixed pair as IPv6), the same ports and exactly the TLVs the
//! manual promises, each whole or absent, within 107 bytes (v1) or 536 (v2). It must never reuse the builder's code.
#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

use libfuzzer_sys::fuzz_target;
use sslwrap::proxy_header::{ProxyVersion, proxy_header};
use sslwrap::tls_facts::{ClientNames, TlsFacts};

const SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";

fuzz_target!(|data: &[u8]| {
    let mut input = Input(data);
    let version = if input.byte() & 1 == 0 {
        ProxyVersion::V1
    } else {
        ProxyVersion::V2
    };
    let source = input.address();
    let destination = input.address();
    let tls = (input.byte() & 1 == 1).then(|| input.facts());
    let header = proxy_header(version, source, destination, tls.as_ref());
    let (expected_source, expected_destination) = expected_pair(source.ip(), destination.ip());
    let expected = Stated {
        source: expected_source,
        destination: expected_destination,
        source_port: source.port(),
        destination_port: destination.port(),
    };
    match version {
        ProxyVersion::V1 => assert_eq!(
            read_v1(&header),
            expected,
            "v1 header {:?}",
            String::from_utf8_lossy(&header)
        ),
        ProxyVersion::V2 => {
            let (stated, tlvs) = read_v2(&header);
            assert_eq!(stated, expected, "v2 addresses");
            assert_eq!(tlvs, expected_tlvs(tls.as_ref()), "v2 TLVs");
        }
    }
});

/// What a header says about the connection.
#[derive(Debug, PartialEq, Eq)]
struct Stated {
    source: IpAddr,
    destination: IpAddr,
    source_port: u16,
    destination_port: u16,
}

/// The manual: an IPv4-mapped IPv6 end is stated as IPv4; ends still in different families are both IPv6.
fn expected_pair(source: IpAddr, destination: IpAddr) -> (IpAddr, IpAddr) {
    let unmapped = |address: IpAddr| match address {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    };
    let mapped = |address: IpAddr| match address {
        IpAddr::V4(v4) => IpAddr::V6(v4.to_ipv6_mapped()),
        v6 => v6,
    };
    match (unmapped(source), unmapped(destination)) {
        (IpAddr::V4(source), IpAddr::V4(destination)) => {
            (IpAddr::V4(source), IpAddr::V4(destination))
        }
        (source, destination) => (mapped(source), mapped(destination)),
    }
}

/// "PROXY TCP4|TCP6 SRC DST SPORT DPORT\r\n", at most 107 bytes, IPv6 in hex groups without a dotted tail.
fn read_v1(header: &[u8]) -> Stated {
    assert!(header.len() <= 107, "a v1 line of {} bytes", header.len());
    let line = std::str::from_utf8(header).expect("a v1 line is ASCII");
    let line = line.strip_suffix("\r\n").expect("a v1 line ends with CRLF");
    let fields: Vec<&str> = line.split(' ').collect();
    let [
        proxy,
        protocol,
        source,
        destination,
        source_port,
        destination_port,
    ] = fields[..]
    else {
        panic!("a v1 line of {} fields: {line:?}", fields.len());
    };
    assert_eq!(proxy, "PROXY");
    let address = |text: &str| -> IpAddr {
        match protocol {
            "TCP4" => IpAddr::V4(text.parse::<Ipv4Addr>().expect("a TCP4 address")),
            "TCP6" => {
                assert!(
                    !text.contains('.'),
                    "a dotted IPv4 tail in a TCP6 address: {text}"
                );
                let v6: Ipv6Addr = text.parse().expect("a TCP6 address");
                // RFC 5952: std writes the canonical text for every address but the IPv4-mapped ones (dotted).
                if v6.to_ipv4_mapped().is_none() {
                    assert_eq!(text, v6.to_string(), "not the RFC 5952 text of the address");
                }
                IpAddr::V6(v6)
            }
            other => panic!("v1 protocol {other:?}"),
        }
    };
    let port = |text: &str| -> u16 {
        let port: u16 = text.parse().expect("a decimal port");
        assert_eq!(port.to_string(), text, "a port with leading zeros");
        port
    };
    Stated {
        source: address(source),
        destination: address(destination),
        source_port: port(source_port),
        destination_port: port(destination_port),
    }
}

/// One TLV as read: its type and value (for PP2_TYPE_SSL, the sub-TLVs read too).
#[derive(Debug, PartialEq, Eq)]
enum ReadTlv {
    Plain(u8, Vec<u8>),
    Ssl {
        client: u8,
        verify: u32,
        subs: Vec<(u8, Vec<u8>)>,
    },
}

fn read_v2(header: &[u8]) -> (Stated, Vec<ReadTlv>) {
    assert!(header.len() <= 536, "a v2 header of {} bytes", header.len());
    assert!(
        header.len() >= 16 && &header[..12] == SIGNATURE,
        "no v2 signature"
    );
    assert_eq!(header[12], 0x21, "version 2, PROXY command");
    let length = usize::from(u16::from_be_bytes([header[14], header[15]]));
    assert_eq!(header.len(), 16 + length, "the length field");
    let body = &header[16..];
    let (stated, address_len) = match header[13] {
        0x11 => {
            assert!(body.len() >= 12, "a short IPv4 block");
            let ip = |at: usize| {
                IpAddr::V4(Ipv4Addr::from(
                    <[u8; 4]>::try_from(&body[at..at + 4]).unwrap(),
                ))
            };
            (stated(ip(0), ip(4), &body[8..12]), 12)
        }
        0x21 => {
            assert!(body.len() >= 36, "a short IPv6 block");
            let ip = |at: usize| {
                IpAddr::V6(Ipv6Addr::from(
                    <[u8; 16]>::try_from(&body[at..at + 16]).unwrap(),
                ))
            };
            (stated(ip(0), ip(16), &body[32..36]), 36)
        }
        other => panic!("v2 family and transport {other:#x}"),
    };
    let mut tlvs = Vec::new();
    let mut previous_type = 0u8;
    for (kind, value) in read_tlvs(&body[address_len..]) {
        assert!(kind > previous_type, "TLVs out of type order");
        previous_type = kind;
        if kind == 0x20 {
            assert!(value.len() >= 5, "a short PP2_TYPE_SSL");
            let verify = u32::from_be_bytes(value[1..5].try_into().unwrap());
            let subs = read_tlvs(&value[5..]);
            assert!(
                subs.windows(2).all(|pair| pair[0].0 < pair[1].0),
                "sub-TLVs out of order"
            );
            tlvs.push(ReadTlv::Ssl {
                client: value[0],
                verify,
                subs,
            });
        } else {
            tlvs.push(ReadTlv::Plain(kind, value));
        }
    }
    (stated, tlvs)
}

fn stated(source: IpAddr, destination: IpAddr, ports: &[u8]) -> Stated {
    Stated {
        source,
        destination,
        source_port: u16::from_be_bytes([ports[0], ports[1]]),
        destination_port: u16::from_be_bytes([ports[2], ports[3]]),
    }
}

/// Type, 2-byte length, value, to the last byte: nothing left over, no length past the end.
fn read_tlvs(mut bytes: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut tlvs = Vec::new();
    while !bytes.is_empty() {
        assert!(bytes.len() >= 3, "a TLV cut short");
        let length = usize::from(u16::from_be_bytes([bytes[1], bytes[2]]));
        assert!(bytes.len() >= 3 + length, "a TLV longer than the header");
        tlvs.push((bytes[0], bytes[3..3 + length].to_vec()));
        bytes = &bytes[3 + length..];
    }
    tlvs
}

/// The manual's TLVs: ALPN (0x01) and AUTHORITY (0x02) when known, SSL (0x20) always, with its version (0x21),
/// verified CN (0x22) and cipher (0x23); a text that is empty, holds a NUL or is longer than its bound is left out.
fn expected_tlvs(tls: Option<&TlsFacts>) -> Vec<ReadTlv> {
    let Some(facts) = tls else {
        return Vec::new();
    };
    let sendable = |text: &str, longest: usize| {
        (!text.is_empty() && !text.contains('\0') && text.len() <= longest)
            .then(|| text.as_bytes().to_vec())
    };
    let verified = facts.client_cert_presented && facts.verified_client.is_some();
    let mut tlvs = Vec::new();
    if let Some(alpn) = facts.alpn.as_deref().and_then(|alpn| sendable(alpn, 64)) {
        tlvs.push(ReadTlv::Plain(0x01, alpn));
    }
    if let Some(name) = facts
        .server_name
        .as_deref()
        .and_then(|name| sendable(name, 253))
    {
        tlvs.push(ReadTlv::Plain(0x02, name));
    }
    let mut subs = Vec::new();
    if let Some(version) = sendable(&facts.protocol, 16) {
        subs.push((0x21, version));
    }
    let cn = facts
        .verified_client
        .as_ref()
        .and_then(|names| names.common_name.as_deref());
    if let Some(cn) = cn.filter(|_| verified).and_then(|cn| sendable(cn, 64)) {
        subs.push((0x22, cn));
    }
    if let Some(cipher) = sendable(&facts.cipher, 64) {
        subs.push((0x23, cipher));
    }
    // PP2_CLIENT_SSL; CERT_CONN when a certificate was shown on this connection, CERT_SESS when in the session.
    let client = match (facts.client_cert_presented, facts.resumed) {
        (false, _) => 0x01,
        (true, false) => 0x07,
        (true, true) => 0x05,
    };
    tlvs.push(ReadTlv::Ssl {
        client,
        verify: if verified { 0 } else { 1 },
        subs,
    });
    tlvs
}

/// The fuzzer's bytes read as values; past the end every read gives zeros.
struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn byte(&mut self) -> u8 {
        let (&first, rest) = self.0.split_first().unwrap_or((&0, &[]));
        self.0 = rest;
        first
    }

    fn bytes<const N: usize>(&mut self) -> [u8; N] {
        std::array::from_fn(|_| self.byte())
    }

    fn address(&mut self) -> SocketAddr {
        let kind = self.byte() % 3;
        let port = u16::from_be_bytes(self.bytes());
        match kind {
            0 => SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::from(self.bytes::<4>()), port)),
            1 => {
                let ip = Ipv6Addr::from(self.bytes::<16>());
                let flow = u32::from_be_bytes(self.bytes());
                let scope = u32::from_be_bytes(self.bytes());
                SocketAddr::V6(SocketAddrV6::new(ip, port, flow, scope))
            }
            _ => {
                let ip = Ipv4Addr::from(self.bytes::<4>()).to_ipv6_mapped();
                SocketAddr::V6(SocketAddrV6::new(ip, port, 0, 0))
            }
        }
    }

    /// A text of up to `longest` bytes (made valid UTF-8), so that the bounds are crossed both ways.
    fn text(&mut self, longest: usize) -> String {
        let length = (usize::from(self.byte()) * 2).min(longest);
        let taken = &self.0[..length.min(self.0.len())];
        self.0 = &self.0[taken.len()..];
        String::from_utf8_lossy(taken).into_owned()
    }

    fn optional_text(&mut self, longest: usize) -> Option<String> {
        (self.byte() & 1 == 1).then(|| self.text(longest))
    }

    fn facts(&mut self) -> TlsFacts {
        let flags = self.byte();
        TlsFacts {
            protocol: self.text(40),
            cipher: self.text(100),
            client_cert_presented: flags & 1 != 0,
            verified_client: (flags & 2 != 0).then(|| ClientNames {
                subject: String::new(),
                issuer: String::new(),
                common_name: self.optional_text(100),
            }),
            server_name: self.optional_text(300),
            resumed: flags & 4 != 0,
            alpn: self.optional_text(100),
        }
    }
}
