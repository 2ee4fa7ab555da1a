//! The subset of nft's JSON (`nft -j -f`, libnftables-json(5)) that vpcnet renders, as a
//! [`Batch`]: `add`/`delete` of tables, `add` of chains (regular and base), sets and maps
//! (`ipv4_addr`, `ipv6_addr`, `inet_proto`, `inet_service`, `ifname` and concatenations of
//! them; `flags interval`; `: verdict`), elements (values, prefixes, ranges, concatenations,
//! `: jump`), rules, and `flush` of chains and sets. Rules: `match` on `ip`/`ip6`
//! `saddr`/`daddr`, `th dport`, `tcp flags` under a mask, `meta` `iifname`/`oifname`/
//! `l4proto`/`nfproto`, `ct state`, concatenations, named sets (`@name`) and anonymous ones
//! (`{ … }`); `vmap`; `accept`/`drop`/`return`/`jump`; `masquerade`; `counter`. The bytecode
//! is nft 1.0's for the same JSON (implicit protocol dependencies included). Anything else is
//! an [`NetlinkError::InvalidArgument`] naming it: the translation never guesses.

use std::net::{Ipv4Addr, Ipv6Addr};

use serde_json::Value;

use super::{
    Batch, CmpOp, Elem, Expr, Family, Hook, KeyType, MetaKey, PayloadBase, SetSpec, Verdict, REG_1,
};
use crate::NetlinkError;

fn bad(what: impl std::fmt::Display) -> NetlinkError {
    NetlinkError::InvalidArgument(format!("nftables JSON: {what}"))
}

fn s<'a>(o: &'a Value, key: &str) -> Result<&'a str, NetlinkError> {
    o.get(key)
        .and_then(Value::as_str)
        .ok_or_else(|| bad(format!("`{key}` missing or not a string in {o}")))
}

fn family(o: &Value) -> Result<Family, NetlinkError> {
    match s(o, "family")? {
        "ip" => Ok(Family::Ip),
        "ip6" => Ok(Family::Ip6),
        "inet" => Ok(Family::Inet),
        f => Err(bad(format!("family {f} is not supported"))),
    }
}

/// Translates a `{"nftables": [...]}` transaction into one [`Batch`].
pub fn batch_from_json(v: &Value) -> Result<Batch, NetlinkError> {
    let mut b = Batch::new();
    let cmds = v
        .get("nftables")
        .and_then(Value::as_array)
        .ok_or_else(|| bad("not an {\"nftables\": [...]} object"))?;
    for cmd in cmds {
        let Some((verb, body)) = cmd.as_object().and_then(|o| o.iter().next()) else {
            return Err(bad(format!("command {cmd}")));
        };
        if verb == "metainfo" {
            continue;
        }
        let Some((kind, o)) = body.as_object().and_then(|o| o.iter().next()) else {
            return Err(bad(format!("command {cmd}")));
        };
        match (verb.as_str(), kind.as_str()) {
            ("add", "table") => b.add_table(family(o)?, s(o, "name")?),
            ("delete", "table") => b.delete_table(family(o)?, s(o, "name")?),
            ("add", "chain") => add_chain(&mut b, o)?,
            ("add", "set") | ("add", "map") => {
                let spec = set_spec(o, kind == "map")?;
                b.add_set(family(o)?, s(o, "table")?, &spec);
            }
            ("add", "element") => add_elements(&mut b, o)?,
            ("add", "rule") => add_rule(&mut b, o)?,
            ("delete", "chain") => b.delete_chain(family(o)?, s(o, "table")?, s(o, "name")?),
            ("delete", "set") | ("delete", "map") => {
                b.delete_set(family(o)?, s(o, "table")?, s(o, "name")?)
            }
            ("delete", "element") => delete_elements(&mut b, o)?,
            ("flush", "chain") => b.flush_chain(family(o)?, s(o, "table")?, s(o, "name")?),
            ("flush", "set") | ("flush", "map") => {
                b.flush_set(family(o)?, s(o, "table")?, s(o, "name")?)
            }
            _ => return Err(bad(format!("`{verb} {kind}` is not supported"))),
        }
    }
    Ok(b)
}

fn add_chain(b: &mut Batch, o: &Value) -> Result<(), NetlinkError> {
    let hook = match o.get("hook") {
        None => None,
        Some(h) => {
            let hooknum = match h.as_str() {
                Some("prerouting") => 0,
                Some("input") => 1,
                Some("forward") => 2,
                Some("output") => 3,
                Some("postrouting") => 4,
                _ => return Err(bad(format!("hook {h}"))),
            };
            let priority = o
                .get("prio")
                .and_then(Value::as_i64)
                .and_then(|p| i32::try_from(p).ok())
                .ok_or_else(|| bad(format!("base chain without a numeric prio: {o}")))?;
            let accept = match o.get("policy").and_then(Value::as_str) {
                None | Some("accept") => true,
                Some("drop") => false,
                Some(p) => return Err(bad(format!("policy {p}"))),
            };
            Some(Hook {
                chain_type: s(o, "type")?.to_owned(),
                hooknum,
                priority,
                accept,
            })
        }
    };
    b.add_chain(family(o)?, s(o, "table")?, s(o, "name")?, hook.as_ref());
    Ok(())
}

fn key_type(t: &Value) -> Result<KeyType, NetlinkError> {
    match t.as_str() {
        Some("ipv4_addr") => Ok(KeyType::Ipv4Addr),
        Some("ipv6_addr") => Ok(KeyType::Ipv6Addr),
        Some("inet_proto") => Ok(KeyType::InetProto),
        Some("inet_service") => Ok(KeyType::InetService),
        Some("ifname") => Ok(KeyType::Ifname),
        _ => Err(bad(format!("set type {t}"))),
    }
}

fn set_spec(o: &Value, map: bool) -> Result<SetSpec, NetlinkError> {
    let t = o
        .get("type")
        .ok_or_else(|| bad(format!("set without type: {o}")))?;
    let key = match t.as_array() {
        Some(ts) => ts.iter().map(key_type).collect::<Result<Vec<_>, _>>()?,
        None => vec![key_type(t)?],
    };
    let mut interval = false;
    if let Some(flags) = o.get("flags") {
        let flags: Vec<&str> = match flags {
            Value::String(f) => vec![f.as_str()],
            Value::Array(a) => a.iter().filter_map(Value::as_str).collect(),
            _ => return Err(bad(format!("set flags {flags}"))),
        };
        for f in flags {
            match f {
                "interval" => interval = true,
                other => return Err(bad(format!("set flag {other}"))),
            }
        }
    }
    if map && o.get("map").and_then(Value::as_str) != Some("verdict") {
        return Err(bad(format!("only verdict maps are supported: {o}")));
    }
    Ok(SetSpec {
        name: s(o, "name")?.to_owned(),
        key,
        interval,
        verdict_map: map,
    })
}

fn number(v: &Value) -> Option<u64> {
    v.as_u64()
        .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
}

/// One field's value (inclusive range) of type `t`.
fn field(t: KeyType, v: &Value) -> Result<(Vec<u8>, Vec<u8>), NetlinkError> {
    let err = || bad(format!("value {v} is not a {t:?}"));
    if let Some(r) = v.get("range").and_then(Value::as_array) {
        let [a, z] = r.as_slice() else {
            return Err(err());
        };
        let (a, _) = field(t, a)?;
        let (_, z) = field(t, z)?;
        return Ok((a, z));
    }
    if let Some(p) = v.get("prefix") {
        let addr = p.get("addr").ok_or_else(err)?;
        let len = p
            .get("len")
            .and_then(Value::as_u64)
            .and_then(|l| u32::try_from(l).ok())
            .ok_or_else(err)?;
        let (start, _) = field(t, addr)?;
        let bits = u32::try_from(start.len() * 8).unwrap_or(0);
        if len > bits {
            return Err(err());
        }
        let (mut lo, mut hi) = (start.clone(), start);
        for (i, (l, h)) in lo.iter_mut().zip(hi.iter_mut()).enumerate() {
            let first_bit = u32::try_from(i * 8).unwrap_or(0);
            let keep = len.saturating_sub(first_bit).min(8);
            let mask: u8 = if keep == 0 { 0 } else { 0xffu8 << (8 - keep) };
            *l &= mask;
            *h = (*h & mask) | !mask;
        }
        return Ok((lo, hi));
    }
    let one = match t {
        KeyType::Ipv4Addr => v
            .as_str()
            .and_then(|s| s.parse::<Ipv4Addr>().ok())
            .map(|a| a.octets().to_vec()),
        KeyType::Ipv6Addr => v
            .as_str()
            .and_then(|s| s.parse::<Ipv6Addr>().ok())
            .map(|a| a.octets().to_vec()),
        KeyType::InetProto => proto_number(v).map(|p| vec![p]),
        KeyType::InetService => number(v)
            .and_then(|n| u16::try_from(n).ok())
            .map(|n| n.to_be_bytes().to_vec()),
        KeyType::Ifname => v
            .as_str()
            .filter(|n| !n.is_empty() && n.len() < 16)
            .map(super::ifname_key),
    }
    .ok_or_else(err)?;
    Ok((one.clone(), one))
}

fn proto_number(v: &Value) -> Option<u8> {
    match v.as_str() {
        Some("tcp") => Some(6),
        Some("udp") => Some(17),
        Some("sctp") => Some(132),
        Some("icmp") => Some(1),
        Some("ipv6-icmp") | Some("icmpv6") => Some(58),
        _ => number(v).and_then(|n| u8::try_from(n).ok()),
    }
}

fn verdict(v: &Value) -> Result<Option<Verdict>, NetlinkError> {
    let Some((k, body)) = v.as_object().and_then(|o| o.iter().next()) else {
        return Ok(None);
    };
    Ok(Some(match k.as_str() {
        "accept" => Verdict::Accept,
        "drop" => Verdict::Drop,
        "return" => Verdict::Return,
        "jump" => Verdict::Jump(s(body, "target")?.to_owned()),
        _ => return Ok(None),
    }))
}

fn elem(spec: &SetSpec, v: &Value) -> Result<Elem, NetlinkError> {
    let (key, data) = match (spec.verdict_map, v.as_array()) {
        (true, Some(pair)) if pair.len() == 2 => (&pair[0], Some(&pair[1])),
        (true, _) => return Err(bad(format!("map element {v} is not [key, verdict]"))),
        (false, _) => (v, None),
    };
    let fields = match (spec.key.len(), key.get("concat").and_then(Value::as_array)) {
        (1, None) => vec![field(spec.key[0], key)?],
        (n, Some(parts)) if parts.len() == n => spec
            .key
            .iter()
            .zip(parts)
            .map(|(t, p)| field(*t, p))
            .collect::<Result<Vec<_>, _>>()?,
        _ => return Err(bad(format!("element {key} does not fit set {}", spec.name))),
    };
    let verdict = match data {
        Some(d) => Some(verdict(d)?.ok_or_else(|| bad(format!("verdict {d}")))?),
        None => None,
    };
    Ok(Elem { fields, verdict })
}

fn add_elements(b: &mut Batch, o: &Value) -> Result<(), NetlinkError> {
    let (fam, table, name) = (family(o)?, s(o, "table")?, s(o, "name")?);
    let spec = b.set_spec(fam, table, name).cloned().ok_or_else(|| {
        bad(format!(
            "elements of set {name}, not declared earlier in the transaction"
        ))
    })?;
    let elems = o
        .get("elem")
        .and_then(Value::as_array)
        .ok_or_else(|| bad(format!("element without elem: {o}")))?
        .iter()
        .map(|e| elem(&spec, e))
        .collect::<Result<Vec<_>, _>>()?;
    b.add_elements(fam, table, &spec, &elems)
}

fn delete_elements(b: &mut Batch, o: &Value) -> Result<(), NetlinkError> {
    let (fam, table, name) = (family(o)?, s(o, "table")?, s(o, "name")?);
    let spec = b.set_spec(fam, table, name).cloned().ok_or_else(|| {
        bad(format!(
            "elements of set {name}, not declared earlier in the transaction"
        ))
    })?;
    let [kt] = spec.key.as_slice() else {
        return Err(bad(format!(
            "deleting elements of the concatenation {name}"
        )));
    };
    let keys = o
        .get("elem")
        .and_then(Value::as_array)
        .ok_or_else(|| bad(format!("element without elem: {o}")))?
        .iter()
        .map(|e| {
            let (lo, hi) = field(*kt, e)?;
            if lo == hi {
                Ok(lo)
            } else {
                Err(bad(format!("deleting a range {e}")))
            }
        })
        .collect::<Result<Vec<_>, _>>()?;
    b.delete_elements(fam, table, &spec, &keys)
}

/// What a rule has established so far (nft's implicit dependencies, emitted once).
struct RuleCtx {
    family: Family,
    nfproto: Option<u8>,
    l4proto: Option<u8>,
    exprs: Vec<Expr>,
}

/// A loaded value: its type (for an anonymous set's key) and length.
struct Loaded {
    key: Vec<KeyType>,
    len: usize,
}

impl RuleCtx {
    fn need_nfproto(&mut self, nfproto: u8) -> Result<(), NetlinkError> {
        match self.family {
            Family::Inet => {
                if self.nfproto != Some(nfproto) {
                    self.exprs.push(Expr::Meta {
                        key: MetaKey::Nfproto,
                        dreg: REG_1,
                    });
                    self.exprs.push(Expr::Cmp {
                        sreg: REG_1,
                        op: CmpOp::Eq,
                        data: vec![nfproto],
                    });
                    self.nfproto = Some(nfproto);
                }
                Ok(())
            }
            Family::Ip if nfproto == 2 => Ok(()),
            Family::Ip6 if nfproto == 10 => Ok(()),
            f => Err(bad(format!(
                "a match on nfproto {nfproto} in a table of family {}",
                f.name()
            ))),
        }
    }

    fn need_l4proto(&mut self, proto: u8) {
        if self.l4proto != Some(proto) {
            self.exprs.push(Expr::Meta {
                key: MetaKey::L4proto,
                dreg: REG_1,
            });
            self.exprs.push(Expr::Cmp {
                sreg: REG_1,
                op: CmpOp::Eq,
                data: vec![proto],
            });
            self.l4proto = Some(proto);
        }
    }

    /// Loads `left` (a payload, meta, ct or concatenation) at register offset `at` (bytes).
    fn load(&mut self, left: &Value, at: usize) -> Result<Loaded, NetlinkError> {
        let dreg = super::reg32_at(at);
        if let Some(p) = left.get("payload") {
            let (proto, fieldname) = (s(p, "protocol")?, s(p, "field")?);
            let (base, offset, len, key) = match (proto, fieldname) {
                ("ip", "saddr") => (PayloadBase::Network, 12, 4, KeyType::Ipv4Addr),
                ("ip", "daddr") => (PayloadBase::Network, 16, 4, KeyType::Ipv4Addr),
                ("ip6", "saddr") => (PayloadBase::Network, 8, 16, KeyType::Ipv6Addr),
                ("ip6", "daddr") => (PayloadBase::Network, 24, 16, KeyType::Ipv6Addr),
                ("th", "sport") => (PayloadBase::Transport, 0, 2, KeyType::InetService),
                ("th", "dport") => (PayloadBase::Transport, 2, 2, KeyType::InetService),
                _ => return Err(bad(format!("payload {proto} {fieldname}"))),
            };
            match proto {
                "ip" => self.need_nfproto(2)?,
                "ip6" => self.need_nfproto(10)?,
                _ => {}
            }
            self.exprs.push(Expr::Payload {
                base,
                offset,
                len,
                dreg,
            });
            return Ok(Loaded {
                key: vec![key],
                len: usize::try_from(len).unwrap_or(0),
            });
        }
        if let Some(m) = left.get("meta") {
            let (key, kt, len) = match s(m, "key")? {
                "iifname" => (MetaKey::Iifname, KeyType::Ifname, 16),
                "oifname" => (MetaKey::Oifname, KeyType::Ifname, 16),
                "l4proto" => (MetaKey::L4proto, KeyType::InetProto, 1),
                "nfproto" => (MetaKey::Nfproto, KeyType::InetProto, 1),
                k => return Err(bad(format!("meta {k}"))),
            };
            self.exprs.push(Expr::Meta { key, dreg });
            return Ok(Loaded { key: vec![kt], len });
        }
        if let Some(parts) = left.get("concat").and_then(Value::as_array) {
            let mut key = Vec::new();
            let mut off = at;
            for p in parts {
                let l = self.load(p, off)?;
                if p.get("meta")
                    .and_then(|m| m.get("key"))
                    .and_then(Value::as_str)
                    == Some("l4proto")
                {
                    // nft converts the one-byte protocol to network order in a concatenation
                    // (a no-op of length 1, kept for identical bytecode).
                    let r = super::reg32_at(off);
                    self.exprs.push(Expr::Hton {
                        sreg: r,
                        dreg: r,
                        len: 1,
                        size: 2,
                    });
                }
                off += crate::nfnl::align4(l.len);
                key.extend(l.key);
            }
            return Ok(Loaded { key, len: off - at });
        }
        Err(bad(format!("match on {left}")))
    }

    fn statement(&mut self, b: &mut Batch, table: &str, st: &Value) -> Result<(), NetlinkError> {
        if let Some(v) = verdict(st)? {
            self.exprs.push(Expr::Immediate(v));
            return Ok(());
        }
        if st.get("masquerade").is_some() {
            self.exprs.push(Expr::Masquerade);
            return Ok(());
        }
        if st.get("counter").is_some() {
            self.exprs.push(Expr::Counter);
            return Ok(());
        }
        if let Some(vm) = st.get("vmap") {
            let key = vm.get("key").ok_or_else(|| bad(format!("vmap {vm}")))?;
            self.load(key, 0)?;
            let set = vm
                .get("data")
                .and_then(Value::as_str)
                .and_then(|d| d.strip_prefix('@'))
                .ok_or_else(|| bad(format!("vmap to anything but a named map: {vm}")))?;
            self.exprs.push(Expr::Lookup {
                set: set.to_owned(),
                set_id: None,
                sreg: REG_1,
                dreg: Some(super::REG_VERDICT),
                invert: false,
            });
            return Ok(());
        }
        let Some(m) = st.get("match") else {
            return Err(bad(format!("statement {st}")));
        };
        let (op, left, right) = (
            s(m, "op")?,
            m.get("left").ok_or_else(|| bad(format!("match {m}")))?,
            m.get("right").ok_or_else(|| bad(format!("match {m}")))?,
        );
        let negate = match op {
            "==" | "in" => false,
            "!=" => true,
            o => return Err(bad(format!("operator {o}"))),
        };
        // ct state: a bit mask.
        if left
            .get("ct")
            .and_then(|c| c.get("key"))
            .and_then(Value::as_str)
            == Some("state")
        {
            let bits = names_to_bits(
                right,
                &[
                    ("invalid", 1),
                    ("established", 2),
                    ("related", 4),
                    ("new", 8),
                    ("untracked", 64),
                ],
            )?;
            self.exprs.push(Expr::CtState { dreg: REG_1 });
            self.exprs.push(Expr::Bitwise {
                sreg: REG_1,
                dreg: REG_1,
                mask: bits.to_ne_bytes().to_vec(),
                xor: vec![0; 4],
            });
            self.exprs.push(Expr::Cmp {
                sreg: REG_1,
                op: if negate { CmpOp::Eq } else { CmpOp::Neq },
                data: vec![0; 4],
            });
            return Ok(());
        }
        // tcp flags & mask <op> flags.
        if let Some(and) = left.get("&").and_then(Value::as_array) {
            let [l, mask] = and.as_slice() else {
                return Err(bad(format!("& {left}")));
            };
            let p = l.get("payload");
            if p.and_then(|p| p.get("protocol")).and_then(Value::as_str) != Some("tcp")
                || p.and_then(|p| p.get("field")).and_then(Value::as_str) != Some("flags")
            {
                return Err(bad(format!("& on anything but tcp flags: {left}")));
            }
            let flags = [
                ("fin", 1),
                ("syn", 2),
                ("rst", 4),
                ("psh", 8),
                ("ack", 16),
                ("urg", 32),
                ("ecn", 64),
                ("cwr", 128),
            ];
            let mask = u8::try_from(names_to_bits(mask, &flags)?).unwrap_or(0);
            let want = u8::try_from(names_to_bits(right, &flags)?).unwrap_or(0);
            self.need_l4proto(6);
            self.exprs.push(Expr::Payload {
                base: PayloadBase::Transport,
                offset: 13,
                len: 1,
                dreg: REG_1,
            });
            self.exprs.push(Expr::Bitwise {
                sreg: REG_1,
                dreg: REG_1,
                mask: vec![mask],
                xor: vec![0],
            });
            self.exprs.push(Expr::Cmp {
                sreg: REG_1,
                op: if negate { CmpOp::Neq } else { CmpOp::Eq },
                data: vec![want],
            });
            return Ok(());
        }
        // meta l4proto/nfproto == <value>.
        if let Some(k) = left
            .get("meta")
            .and_then(|m| m.get("key"))
            .and_then(Value::as_str)
        {
            if k == "l4proto" || k == "nfproto" {
                if let Some(n) = match k {
                    "nfproto" => match right.as_str() {
                        Some("ipv4") => Some(2),
                        Some("ipv6") => Some(10),
                        _ => None,
                    },
                    _ => proto_number(right),
                } {
                    self.load(left, 0)?;
                    self.exprs.push(Expr::Cmp {
                        sreg: REG_1,
                        op: if negate { CmpOp::Neq } else { CmpOp::Eq },
                        data: vec![n],
                    });
                    return Ok(());
                }
            }
        }
        // A named set.
        if let Some(set) = right.as_str().and_then(|r| r.strip_prefix('@')) {
            self.load(left, 0)?;
            self.exprs.push(Expr::Lookup {
                set: set.to_owned(),
                set_id: None,
                sreg: REG_1,
                dreg: None,
                invert: negate,
            });
            return Ok(());
        }
        // An anonymous set of addresses.
        if let Some(items) = right.get("set").and_then(Value::as_array) {
            let loaded = self.load(left, 0)?;
            let [kt] = loaded.key.as_slice() else {
                return Err(bad(format!("anonymous set of a concatenation: {right}")));
            };
            let kt = *kt;
            if !matches!(kt, KeyType::Ipv4Addr | KeyType::Ipv6Addr) {
                return Err(bad(format!("anonymous set of {kt:?}")));
            }
            let elems = items
                .iter()
                .map(|i| field(kt, i))
                .collect::<Result<Vec<_>, _>>()?;
            // As nft does: one prefix is a masked compare, not a set.
            if let [(lo, hi)] = elems.as_slice() {
                if let Some(plen) = prefix_len(lo, hi).filter(|l| *l > 0) {
                    let Some(Expr::Payload {
                        offset, dreg, base, ..
                    }) = self.exprs.pop()
                    else {
                        return Err(bad("internal: no payload load"));
                    };
                    // A whole-byte prefix compares its bytes; any other loads the whole
                    // address and masks it.
                    let full = lo.len();
                    let aligned = plen % 8 == 0;
                    let bytes = if aligned {
                        usize::try_from(plen / 8).unwrap_or(full)
                    } else {
                        full
                    };
                    self.exprs.push(Expr::Payload {
                        base,
                        offset,
                        len: u32::try_from(bytes).unwrap_or(0),
                        dreg,
                    });
                    if !aligned {
                        let mask: Vec<u8> = (0..full)
                            .map(|i| {
                                let first = u32::try_from(i * 8).unwrap_or(0);
                                let keep = plen.saturating_sub(first).min(8);
                                if keep == 0 {
                                    0
                                } else {
                                    0xffu8 << (8 - keep)
                                }
                            })
                            .collect();
                        self.exprs.push(Expr::Bitwise {
                            sreg: dreg,
                            dreg,
                            mask,
                            xor: vec![0; full],
                        });
                    }
                    self.exprs.push(Expr::Cmp {
                        sreg: dreg,
                        op: if negate { CmpOp::Neq } else { CmpOp::Eq },
                        data: lo[..bytes].to_vec(),
                    });
                    return Ok(());
                }
            }
            let elems: Vec<Elem> = elems
                .into_iter()
                .map(|f| Elem {
                    fields: vec![f],
                    verdict: None,
                })
                .collect();
            let (name, id) = b.anonymous_set(self.family, table, vec![kt], true, &elems)?;
            self.exprs.push(Expr::Lookup {
                set: name,
                set_id: Some(id),
                sreg: REG_1,
                dreg: None,
                invert: negate,
            });
            return Ok(());
        }
        Err(bad(format!("match {m}")))
    }
}

/// The prefix length of the inclusive range `lo..=hi`, if it is one.
fn prefix_len(lo: &[u8], hi: &[u8]) -> Option<u32> {
    let (l, h) = (bits(lo), bits(hi));
    let n = u32::try_from(l.len()).ok()?;
    let plen = l.iter().zip(&h).take_while(|(a, b)| a == b).count();
    let rest_ok = l[plen..].iter().all(|b| !*b) && h[plen..].iter().all(|b| *b);
    rest_ok.then(|| u32::try_from(plen).unwrap_or(n))
}

fn bits(v: &[u8]) -> Vec<bool> {
    v.iter()
        .flat_map(|b| (0..8).rev().map(move |i| b & (1 << i) != 0))
        .collect()
}

fn names_to_bits(v: &Value, names: &[(&str, u32)]) -> Result<u32, NetlinkError> {
    let one = |n: &Value| {
        let name = n.as_str().unwrap_or_default();
        names
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, b)| *b)
            .ok_or_else(|| bad(format!("flag {n}")))
    };
    match v {
        Value::Array(a) => a.iter().try_fold(0, |acc, n| Ok(acc | one(n)?)),
        n => one(n),
    }
}

fn add_rule(b: &mut Batch, o: &Value) -> Result<(), NetlinkError> {
    let (fam, table, chain) = (family(o)?, s(o, "table")?, s(o, "chain")?);
    let stmts = o
        .get("expr")
        .and_then(Value::as_array)
        .ok_or_else(|| bad(format!("rule without expr: {o}")))?;
    let mut ctx = RuleCtx {
        family: fam,
        nfproto: None,
        l4proto: None,
        exprs: Vec::new(),
    };
    for st in stmts {
        ctx.statement(b, table, st)?;
    }
    let comment = o.get("comment").and_then(Value::as_str);
    b.add_rule(fam, table, chain, &ctx.exprs, comment);
    Ok(())
}
