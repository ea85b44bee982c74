//! `-accept_proxy` and `-accept_proxy_from`: the PROXY protocol header a load balancer sends before the client's
//! first byte, read off the client connection (session.rs calls it before the TLS handshake or the STARTTLS
//! greeting) and turned into the addresses the session uses everywhere (logs, `-exec` variables, the `-proxy`
//! header sent on). The parsing is proxy_header.rs's; this file holds the reading and the list of allowed senders.
//! It must never read a byte past the header (the TLS handshake or the STARTTLS dialogue follows it), never wait
//! past the session's deadline, never hold more than one header's bytes, and never take a header from a peer the
//! list does not name.

use std::io::{ErrorKind, Read};
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::time::Instant;

use crate::client::{ClientAddresses, ClientIo};
use crate::proxy_header::{Carried, MAX_RECEIVED_V2_LEN, Parsed, ReceivedHeader, parse_header};
use crate::reason::io_reason;
use crate::sys;

/// The `-accept_proxy` settings.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AcceptProxy {
    /// `-accept_proxy_from`: the only peers that may send a header; None: any peer.
    pub from: Option<Vec<Network>>,
}

impl AcceptProxy {
    /// Whether the connection's real peer may send a header. A peer with no IP address (inetd mode on a pipe)
    /// matches no network.
    pub fn allows(&self, peer: Option<SocketAddr>) -> bool {
        match (&self.from, peer) {
            (None, _) => true,
            (Some(networks), Some(peer)) => {
                networks.iter().any(|network| network.contains(peer.ip()))
            }
            (Some(_), None) => false,
        }
    }
}

/// One `ADDR[/BITS]` of `-accept_proxy_from`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Network {
    address: IpAddr,
    bits: u8,
}

impl Network {
    /// IPv4-mapped IPv6 addresses (a dual-stack listener's IPv4 peers) match as the IPv4 addresses they stand for.
    fn contains(&self, peer: IpAddr) -> bool {
        match (self.address, peer.to_canonical()) {
            (IpAddr::V4(network), IpAddr::V4(peer)) => same_prefix(
                network.to_bits().into(),
                peer.to_bits().into(),
                self.bits,
                32,
            ),
            (IpAddr::V6(network), IpAddr::V6(peer)) => {
                same_prefix(network.to_bits(), peer.to_bits(), self.bits, 128)
            }
            _ => false,
        }
    }
}

fn same_prefix(network: u128, peer: u128, bits: u8, width: u32) -> bool {
    let ignored = width - u32::from(bits);
    network.checked_shr(ignored).unwrap_or(0) == peer.checked_shr(ignored).unwrap_or(0)
}

impl FromStr for Network {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (address, bits) = match text.split_once('/') {
            Some((address, bits)) => (address, Some(bits)),
            None => (text, None),
        };
        let address = address
            .parse::<IpAddr>()
            .map_err(|_| format!("-accept_proxy_from: '{address}' is not an IP address"))?
            .to_canonical();
        let width = if address.is_ipv4() { 32 } else { 128 };
        let bits = match bits {
            None => width,
            // Digits only: u8's own parser would take "+8".
            Some(bits) => Some(bits)
                .filter(|bits| !bits.is_empty() && bits.bytes().all(|byte| byte.is_ascii_digit()))
                .and_then(|bits| bits.parse::<u8>().ok())
                .filter(|bits| *bits <= width)
                .ok_or_else(|| {
                    format!("-accept_proxy_from: '{text}': the prefix length must be 0 to {width}")
                })?,
        };
        Ok(Network { address, bits })
    }
}

/// The whole `-accept_proxy_from` value: `ADDR[/BITS][,ADDR[/BITS]...]`.
pub fn parse_networks(value: &str) -> Result<Vec<Network>, String> {
    value.split(',').map(str::parse).collect()
}

/// Why a connection was not served; the session logs it with the real peer.
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The peer is not in -accept_proxy_from.
    NotAllowed,
    /// It closed (or reset) before sending a byte: a load balancer's TCP health check, no error.
    ClosedSilently,
    TimedOut,
    Invalid(String),
}

/// Reads the header, exactly its bytes, from `client` by the deadline, and returns the addresses the session is to
/// use with the header read: the carried ones, or the real ones for LOCAL and UNKNOWN.
pub fn receive(
    client: &mut ClientIo,
    real: &ClientAddresses,
    accept: &AcceptProxy,
    deadline: Instant,
) -> Result<(ReceivedHeader, ClientAddresses), Refusal> {
    if !accept.allows(real.peer) {
        return Err(Refusal::NotAllowed);
    }
    let header = read_header(client, deadline)?;
    let addresses = match header.carried {
        Carried::Client {
            source,
            destination,
        } => ClientAddresses {
            peer: Some(source),
            local: Some(destination),
        },
        Carried::Local | Carried::Unknown => *real,
    };
    Ok((header, addresses))
}

/// Each read asks for no more than the parser says the shortest valid header still needs, so the first byte after
/// the header stays in the socket (on a pipe from inetd as well, where MSG_PEEK does not work).
fn read_header(client: &mut ClientIo, deadline: Instant) -> Result<ReceivedHeader, Refusal> {
    let mut bytes = Vec::with_capacity(64);
    loop {
        let wanted = match parse_header(&bytes) {
            Parsed::Header(header) => return Ok(header),
            Parsed::Invalid(reason) => return Err(Refusal::Invalid(reason)),
            Parsed::NeedAtLeast(wanted) => wanted,
        };
        // The parser refuses any length above the bound before asking for it; this only makes the bound visible.
        debug_assert!(wanted <= MAX_RECEIVED_V2_LEN);
        let held = bytes.len();
        bytes.resize(wanted, 0);
        let outcome = client.read(&mut bytes[held..]);
        match outcome {
            Ok(count) => bytes.truncate(held + count),
            Err(_) => bytes.truncate(held),
        }
        match outcome {
            Ok(0) if held == 0 => return Err(Refusal::ClosedSilently),
            Ok(0) => {
                return Err(Refusal::Invalid(format!(
                    "the connection closed after {held} bytes, inside the PROXY header"
                )));
            }
            Ok(_) => {}
            Err(error) if error.kind() == ErrorKind::WouldBlock => {
                match sys::wait_until(client.read_fd(), sys::POLLIN, deadline) {
                    Ok(true) => {}
                    Ok(false) => return Err(Refusal::TimedOut),
                    Err(error) => {
                        return Err(Refusal::Invalid(format!(
                            "poll failed: {}",
                            io_reason(&error)
                        )));
                    }
                }
            }
            Err(error) if error.kind() == ErrorKind::Interrupted => {}
            Err(error) if held == 0 && error.kind() == ErrorKind::ConnectionReset => {
                return Err(Refusal::ClosedSilently);
            }
            Err(error) => {
                return Err(Refusal::Invalid(format!(
                    "read failed: {}",
                    io_reason(&error)
                )));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn networks(value: &str) -> AcceptProxy {
        AcceptProxy {
            from: Some(parse_networks(value).expect("valid list")),
        }
    }

    fn peer(text: &str) -> Option<SocketAddr> {
        Some(text.parse().expect("test address"))
    }

    #[test]
    fn without_a_list_every_peer_may_send_a_header() {
        let anyone = AcceptProxy::default();
        assert!(anyone.allows(peer("192.0.2.7:1")));
        assert!(anyone.allows(None));
    }

    #[test]
    fn a_list_allows_its_networks_only() {
        let list = networks("10.0.0.0/8,192.0.2.7,2001:db8::/32");
        assert!(list.allows(peer("10.255.0.1:1")));
        assert!(list.allows(peer("192.0.2.7:1")));
        assert!(!list.allows(peer("192.0.2.8:1")));
        assert!(!list.allows(peer("11.0.0.1:1")));
        assert!(list.allows(peer("[2001:db8:1::5]:1")));
        assert!(!list.allows(peer("[2001:db9::5]:1")));
        assert!(list.allows(peer("[::ffff:10.1.2.3]:1")), "IPv4-mapped peer");
        assert!(!list.allows(None), "no address: no match");
        let every_ipv4 = networks("0.0.0.0/0");
        assert!(every_ipv4.allows(peer("203.0.113.1:1")));
        assert!(!every_ipv4.allows(peer("[2001:db8::1]:1")));
        assert!(networks("::/0").allows(peer("[2001:db8::1]:1")));
        assert!(networks("127.0.0.1/32").allows(peer("127.0.0.1:9")));
        assert!(networks("::ffff:127.0.0.1").allows(peer("127.0.0.1:9")));
    }

    #[test]
    fn a_bad_list_is_refused_naming_the_word() {
        for (value, message) in [
            (
                "10.0.0.0/33",
                "'10.0.0.0/33': the prefix length must be 0 to 32",
            ),
            ("::/129", "'::/129': the prefix length must be 0 to 128"),
            (
                "10.0.0.0/",
                "'10.0.0.0/': the prefix length must be 0 to 32",
            ),
            (
                "10.0.0.0/+8",
                "'10.0.0.0/+8': the prefix length must be 0 to 32",
            ),
            ("balancer", "'balancer' is not an IP address"),
            ("10.0.0.1,,10.0.0.2", "'' is not an IP address"),
            ("[::1]", "'[::1]' is not an IP address"),
        ] {
            let error = parse_networks(value).unwrap_err();
            assert_eq!(error, format!("-accept_proxy_from: {message}"), "{value}");
        }
    }
}
