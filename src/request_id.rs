//! `X-Request-Id`: the id every answer carries and its access line logs,
//! so an operator can go from a user's report to the log line.
//!
//! Each request gets a fresh id: a random per-process prefix and a counter,
//! 24 hex digits, unique across restarts without a random draw per request.
//! An id that arrives with the request is kept only from a peer listed in
//! `trusted_proxies` (a load balancer that already assigned one), and only
//! when it is 1 to [`MAX_LEN`] characters of `A-Z a-z 0-9 - _ . : + / = @ ~`;
//! anyone else's is replaced, so a client cannot forge the id that an
//! operator searches for, nor put log-breaking bytes into it. The id is
//! also sent to the upstream, so the backend's logs can carry it.

use std::cell::Cell;
use std::hash::{BuildHasher, Hasher};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use http::header::{HeaderName, HeaderValue};
use http::HeaderMap;

pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Longest request id kept from a trusted peer.
pub const MAX_LEN: usize = 128;

/// A new id for a request: 12 hex digits of per-process randomness, then
/// 12 of a counter.
pub fn generate() -> HeaderValue {
    static PREFIX: OnceLock<u64> = OnceLock::new();
    let prefix = *PREFIX.get_or_init(|| {
        // RandomState draws its keys from the OS; hashing the pid and the
        // time with them gives a prefix that differs per process.
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u32(std::process::id());
        hasher.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos()),
        );
        hasher.finish()
    });
    let count = next_count();
    let mut text = [0u8; 24];
    hex_into(&mut text[..12], prefix);
    hex_into(&mut text[12..], count);
    HeaderValue::from_bytes(&text).expect("hex digits are a valid header value")
}

/// The next value of the id's counter. Each thread takes a block of values
/// at a time, so the workers do not all write one shared counter on every
/// request; values stay unique within the process, though not in order.
fn next_count() -> u64 {
    const BLOCK: u64 = 1 << 16;
    static NEXT_BLOCK: AtomicU64 = AtomicU64::new(0);
    thread_local! {
        static BLOCK_LEFT: Cell<(u64, u64)> = const { Cell::new((0, 0)) };
    }
    BLOCK_LEFT.with(|left| {
        let (mut next, mut end) = left.get();
        if next == end {
            next = NEXT_BLOCK.fetch_add(BLOCK, Ordering::Relaxed);
            end = next + BLOCK;
        }
        left.set((next + 1, end));
        next
    })
}

/// Writes the low `4 * out.len()` bits of `value` as lowercase hex.
fn hex_into(out: &mut [u8], mut value: u64) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for slot in out.iter_mut().rev() {
        *slot = DIGITS[(value & 0xf) as usize];
        value >>= 4;
    }
}

/// True when `value` may be kept as a request id.
pub fn is_valid(value: &[u8]) -> bool {
    (1..=MAX_LEN).contains(&value.len())
        && value.iter().all(|&b| {
            b.is_ascii_alphanumeric()
                || matches!(
                    b,
                    b'-' | b'_' | b'.' | b':' | b'+' | b'/' | b'=' | b'@' | b'~'
                )
        })
}

/// The id for a request from `peer`: its own, when the peer is trusted and
/// the id valid (a single field line), else a generated one.
pub fn for_request(headers: &HeaderMap, peer: IpAddr, trusted: &TrustedProxies) -> HeaderValue {
    if !trusted.is_empty() && trusted.contains(peer) {
        let mut values = headers.get_all(&X_REQUEST_ID).iter();
        if let (Some(value), None) = (values.next(), values.next()) {
            if is_valid(value.as_bytes()) {
                return value.clone();
            }
        }
    }
    generate()
}

/// One address block: an address and how many leading bits must match.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Block {
    addr: IpAddr,
    prefix: u8,
}

impl Block {
    fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let (addr, prefix) = match text.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (text, None),
        };
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| format!("{text:?} is not an IP address or CIDR block"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(bits) => bits
                .parse::<u8>()
                .ok()
                .filter(|&bits| bits <= max)
                .ok_or_else(|| format!("{text:?} has a prefix length outside 0..={max}"))?,
        };
        Ok(Self { addr, prefix })
    }

    fn contains(&self, peer: IpAddr) -> bool {
        let (bits, net, peer) = match (self.addr, peer.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(peer)) => {
                (32, u128::from(u32::from(net)), u128::from(u32::from(peer)))
            }
            (IpAddr::V6(net), IpAddr::V6(peer)) => (128, u128::from(net), u128::from(peer)),
            _ => return false,
        };
        let host_bits = bits - u32::from(self.prefix);
        host_bits == bits || (net >> host_bits) == (peer >> host_bits)
    }
}

impl std::fmt::Display for Block {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// The peers whose `X-Request-Id` is kept (`trusted_proxies`); empty by
/// default, so every id is generated.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies(Vec<Block>);

impl TrustedProxies {
    /// Addresses (`10.0.0.7`, `::1`) and CIDR blocks (`10.0.0.0/8`).
    pub fn parse<S: AsRef<str>>(items: &[S]) -> Result<Self, String> {
        items
            .iter()
            .map(|item| Block::parse(item.as_ref()))
            .collect::<Result<Vec<_>, _>>()
            .map(Self)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn contains(&self, peer: IpAddr) -> bool {
        self.0.iter().any(|block| block.contains(peer))
    }

    /// Each block as `addr/prefix`, for `--print-config`.
    pub fn to_strings(&self) -> Vec<String> {
        self.0.iter().map(Block::to_string).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn trusting(blocks: &[&str]) -> TrustedProxies {
        TrustedProxies::parse(blocks).unwrap()
    }

    fn with_id(id: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(&X_REQUEST_ID, HeaderValue::from_str(id).unwrap());
        headers
    }

    #[test]
    fn generated_ids_are_24_hex_digits_and_differ() {
        let a = generate();
        let b = generate();
        assert_eq!(a.len(), 24);
        assert!(a.as_bytes().iter().all(u8::is_ascii_hexdigit));
        assert_ne!(a, b);
        assert_eq!(
            a.as_bytes()[..12],
            b.as_bytes()[..12],
            "one prefix per process"
        );
    }

    #[test]
    fn ids_made_on_several_threads_never_repeat() {
        let threads: Vec<_> = (0..4)
            .map(|_| std::thread::spawn(|| (0..70_000).map(|_| generate()).collect::<Vec<_>>()))
            .collect();
        let mut seen = std::collections::HashSet::new();
        for thread in threads {
            for id in thread.join().unwrap() {
                assert!(seen.insert(id), "an id was handed out twice");
            }
        }
        assert_eq!(seen.len(), 4 * 70_000);
    }

    #[test]
    fn an_id_from_a_trusted_peer_is_kept() {
        let trusted = trusting(&["10.0.0.0/8"]);
        let id = for_request(&with_id("lb-1234"), ip("10.1.2.3"), &trusted);
        assert_eq!(id, "lb-1234");
    }

    #[test]
    fn an_id_from_anyone_else_is_replaced() {
        let trusted = trusting(&["10.0.0.0/8"]);
        let id = for_request(&with_id("forged"), ip("192.168.1.1"), &trusted);
        assert_ne!(id, "forged");
        let id = for_request(
            &with_id("forged"),
            ip("10.0.0.1"),
            &TrustedProxies::default(),
        );
        assert_ne!(id, "forged", "nobody is trusted by default");
    }

    #[test]
    fn a_trusted_peer_with_a_bad_id_gets_a_new_one() {
        let trusted = trusting(&["127.0.0.1"]);
        for bad in [
            "has space",
            "quote\"",
            "semi;colon",
            &"x".repeat(MAX_LEN + 1),
        ] {
            let id = for_request(&with_id(bad), ip("127.0.0.1"), &trusted);
            assert_ne!(id, bad);
            assert_eq!(id.len(), 24);
        }
        let mut two = with_id("a");
        two.append(&X_REQUEST_ID, HeaderValue::from_static("b"));
        assert_eq!(for_request(&two, ip("127.0.0.1"), &trusted).len(), 24);
    }

    #[test]
    fn ids_allow_uuids_and_base64_but_not_control_bytes() {
        assert!(is_valid(b"3f2b8c1d-4e5f-4a6b-8c7d-9e0f1a2b3c4d"));
        assert!(is_valid(b"abc+/=="));
        assert!(!is_valid(b""));
        assert!(!is_valid(b"a\tb"));
        assert!(is_valid("x".repeat(MAX_LEN).as_bytes()));
    }

    #[test]
    fn blocks_match_by_prefix_in_both_families() {
        let trusted = trusting(&["10.0.0.0/8", "::1", "2001:db8::/32"]);
        assert!(trusted.contains(ip("10.255.0.1")));
        assert!(!trusted.contains(ip("11.0.0.1")));
        assert!(trusted.contains(ip("::1")));
        assert!(trusted.contains(ip("2001:db8:1::5")));
        assert!(!trusted.contains(ip("2001:db9::5")));
        assert!(
            trusted.contains(ip("::ffff:10.0.0.1")),
            "a v4-mapped peer matches its v4 block"
        );
        assert!(trusting(&["0.0.0.0/0"]).contains(ip("8.8.8.8")));
    }

    #[test]
    fn bad_blocks_are_refused_with_their_text() {
        for bad in ["10.0.0.0/33", "nope", "::/129", "10.0.0.1/x"] {
            let err = TrustedProxies::parse(&[bad]).unwrap_err();
            assert!(err.contains(bad), "{err}");
        }
        assert_eq!(
            trusting(&["10.0.0.0/8", "::1"]).to_strings(),
            ["10.0.0.0/8", "::1/128"]
        );
    }
}
