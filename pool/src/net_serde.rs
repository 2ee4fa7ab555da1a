//! Serde for [`Ipv4Network`] as its `"a.b.c.d/len"` string (ipnetwork's own serde support is
//! behind a feature this crate does not enable). Use with `#[serde(with = "net_serde")]`.

use ipnetwork::Ipv4Network;
use serde::{Deserialize, Deserializer, Serializer};

pub fn serialize<S: Serializer>(net: &Ipv4Network, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(net)
}

pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Ipv4Network, D::Error> {
    let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
    s.parse().map_err(serde::de::Error::custom)
}

/// The same for `Vec<Ipv4Network>`.
pub mod vec {
    use super::*;

    pub fn serialize<S: Serializer>(nets: &[Ipv4Network], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(nets.iter().map(|n| n.to_string()))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Ipv4Network>, D::Error> {
        Vec::<String>::deserialize(d)?
            .iter()
            .map(|s| s.parse().map_err(serde::de::Error::custom))
            .collect()
    }
}
