//! The two address families, as the allocator sees them: an address is a number (`u128`
//! bits, high bits zero for IPv4) and a prefix is (address, length). Everything else in the
//! pool is the same code for both.

use std::fmt::{Debug, Display};
use std::hash::Hash;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use ipnetwork::{IpNetwork, Ipv4Network, Ipv6Network};
use serde::de::DeserializeOwned;
use serde::Serialize;

/// An address family: IPv4 ([`V4`]) or IPv6 ([`V6`]).
pub trait Family:
    Copy + Clone + Debug + Default + PartialEq + Eq + Hash + Send + Sync + 'static
{
    type Addr: Copy
        + Debug
        + Display
        + FromStr<Err = std::net::AddrParseError>
        + Eq
        + Ord
        + Hash
        + Serialize
        + DeserializeOwned
        + Send
        + Sync
        + Into<IpAddr>;
    type Net: Copy
        + Debug
        + Display
        + FromStr<Err = ipnetwork::IpNetworkError>
        + Eq
        + Ord
        + Hash
        + Send
        + Sync
        + Into<IpNetwork>;

    /// "IPv4" / "IPv6", for messages.
    const NAME: &'static str;
    /// Address width in bits.
    const BITS: u8;
    /// Shortest prefix length a node may hold; bounds the counts (an IPv6 /64 is 2^64
    /// addresses, counted in `u128`).
    const MIN_PREFIX_LEN: u8;
    /// Whether a VPC CIDR's all-ones address is reserved too (IPv4 broadcast). Its
    /// all-zeros address is reserved in both families (IPv6: subnet-router anycast).
    const RESERVES_LAST: bool;

    fn bits(a: Self::Addr) -> u128;
    /// The address with these bits (truncated to the family's width).
    fn addr(bits: u128) -> Self::Addr;
    /// `None` if `len` is longer than the family's width.
    fn net(a: Self::Addr, len: u8) -> Option<Self::Net>;
    /// The address as written (not masked).
    fn net_ip(n: Self::Net) -> Self::Addr;
    fn net_len(n: Self::Net) -> u8;
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct V4;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct V6;

impl Family for V4 {
    type Addr = Ipv4Addr;
    type Net = Ipv4Network;
    const NAME: &'static str = "IPv4";
    const BITS: u8 = 32;
    const MIN_PREFIX_LEN: u8 = 16;
    const RESERVES_LAST: bool = true;

    fn bits(a: Ipv4Addr) -> u128 {
        u128::from(u32::from(a))
    }
    fn addr(bits: u128) -> Ipv4Addr {
        // The high bits are zero for every IPv4 address; keep the low 32.
        Ipv4Addr::from(u32::try_from(bits & u128::from(u32::MAX)).unwrap_or(u32::MAX))
    }
    fn net(a: Ipv4Addr, len: u8) -> Option<Ipv4Network> {
        Ipv4Network::new(a, len).ok()
    }
    fn net_ip(n: Ipv4Network) -> Ipv4Addr {
        n.ip()
    }
    fn net_len(n: Ipv4Network) -> u8 {
        n.prefix()
    }
}

impl Family for V6 {
    type Addr = Ipv6Addr;
    type Net = Ipv6Network;
    const NAME: &'static str = "IPv6";
    const BITS: u8 = 128;
    const MIN_PREFIX_LEN: u8 = 64;
    const RESERVES_LAST: bool = false;

    fn bits(a: Ipv6Addr) -> u128 {
        u128::from(a)
    }
    fn addr(bits: u128) -> Ipv6Addr {
        Ipv6Addr::from(bits)
    }
    fn net(a: Ipv6Addr, len: u8) -> Option<Ipv6Network> {
        Ipv6Network::new(a, len).ok()
    }
    fn net_ip(n: Ipv6Network) -> Ipv6Addr {
        n.ip()
    }
    fn net_len(n: Ipv6Network) -> u8 {
        n.prefix()
    }
}

/// `size - 1` of a prefix of length `len`: the host bits, all ones.
pub(crate) fn host_mask<F: Family>(len: u8) -> u128 {
    let host_bits = u32::from(F::BITS.saturating_sub(len));
    if host_bits >= 128 {
        u128::MAX
    } else {
        (1u128 << host_bits) - 1
    }
}

/// First and last address (bits) of `n`.
pub(crate) fn span<F: Family>(n: F::Net) -> (u128, u128) {
    let mask = host_mask::<F>(F::net_len(n));
    let first = F::bits(F::net_ip(n)) & !mask;
    (first, first | mask)
}

/// Whether `n` is written as its own network address.
pub(crate) fn is_aligned<F: Family>(n: F::Net) -> bool {
    F::bits(F::net_ip(n)) == span::<F>(n).0
}

/// Whether `outer` contains all of `inner`.
pub(crate) fn contains<F: Family>(outer: F::Net, inner: F::Net) -> bool {
    let (o1, o2) = span::<F>(outer);
    let (i1, i2) = span::<F>(inner);
    F::net_len(outer) <= F::net_len(inner) && o1 <= i1 && i2 <= o2
}
