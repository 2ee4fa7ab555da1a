//! nf_tables over netlink: a typed batch of table, chain, set, element and rule messages,
//! sent as one `NFNL_MSG_BATCH_BEGIN … NFNL_MSG_BATCH_END` transaction on a
//! `NETLINK_NETFILTER` socket of the calling thread's network namespace. The kernel applies
//! all of it or none; a rejected message comes back as [`NetlinkError::Nftables`] naming
//! the object it was about.
//!
//! Why our own encoder: the product must not exec `nft` (fork, exec and a JSON parse on every
//! pod ADD cost 13–40 ms), and no license-compatible crate speaks nf_tables netlink (see
//! docs/network-policy.md § The nftables path). The expressions are exactly the ones vpcnet's
//! rulesets use (meta, payload, cmp, bitwise, byteorder, ct, lookup, immediate, masq,
//! counter), encoded as `nft` 1.0 encodes them (the kernel tests compare `nft --debug=netlink`
//! listings of both paths). [`json`] translates the subset of the `nft -j` JSON that
//! `vpcnet_policy::render` and the agent's SNAT emit into a [`Batch`].
//!
//! Synchronous (a few `send`/`recv` on a private socket); callers on a runtime use
//! `spawn_blocking`.

pub mod json;

use std::collections::BTreeMap;

use crate::nfnl::{self, NLA_F_NESTED, NLMSG_ERROR, NLM_F_ACK, NLM_F_REQUEST};
use crate::NetlinkError;

const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
const NFNL_MSG_BATCH_END: u16 = 0x11;
const NLM_F_CREATE: u16 = 0x400;
const NLM_F_APPEND: u16 = 0x800;

const NFT_MSG_NEWTABLE: u16 = 0;
const NFT_MSG_DELTABLE: u16 = 2;
const NFT_MSG_NEWCHAIN: u16 = 3;
const NFT_MSG_DELCHAIN: u16 = 5;
const NFT_MSG_NEWRULE: u16 = 6;
const NFT_MSG_DELRULE: u16 = 8;
const NFT_MSG_NEWSET: u16 = 9;
const NFT_MSG_DELSET: u16 = 11;
const NFT_MSG_NEWSETELEM: u16 = 12;
const NFT_MSG_DELSETELEM: u16 = 14;
const NFT_MSG_GETGEN: u16 = 16;

const NFTA_TABLE_NAME: u16 = 1;
const NFTA_TABLE_FLAGS: u16 = 2;
const NFTA_CHAIN_TABLE: u16 = 1;
const NFTA_CHAIN_NAME: u16 = 3;
const NFTA_CHAIN_HOOK: u16 = 4;
const NFTA_CHAIN_POLICY: u16 = 5;
const NFTA_CHAIN_TYPE: u16 = 7;
const NFTA_HOOK_HOOKNUM: u16 = 1;
const NFTA_HOOK_PRIORITY: u16 = 2;
const NFTA_RULE_TABLE: u16 = 1;
const NFTA_RULE_CHAIN: u16 = 2;
const NFTA_RULE_EXPRESSIONS: u16 = 4;
const NFTA_RULE_USERDATA: u16 = 7;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_EXPR_NAME: u16 = 1;
const NFTA_EXPR_DATA: u16 = 2;
const NFTA_SET_TABLE: u16 = 1;
const NFTA_SET_NAME: u16 = 2;
const NFTA_SET_FLAGS: u16 = 3;
const NFTA_SET_KEY_TYPE: u16 = 4;
const NFTA_SET_KEY_LEN: u16 = 5;
const NFTA_SET_DATA_TYPE: u16 = 6;
const NFTA_SET_DESC: u16 = 9;
const NFTA_SET_ID: u16 = 10;
const NFTA_SET_USERDATA: u16 = 13;
const NFTA_SET_DESC_CONCAT: u16 = 2;
const NFTA_SET_FIELD_LEN: u16 = 1;
const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
const NFTA_SET_ELEM_LIST_SET: u16 = 2;
const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
const NFTA_SET_ELEM_LIST_SET_ID: u16 = 4;
const NFTA_SET_ELEM_KEY: u16 = 1;
const NFTA_SET_ELEM_DATA: u16 = 2;
const NFTA_SET_ELEM_FLAGS: u16 = 3;
const NFTA_SET_ELEM_USERDATA: u16 = 6;
const NFTA_SET_ELEM_KEY_END: u16 = 10;
const NFTA_DATA_VALUE: u16 = 1;
const NFTA_DATA_VERDICT: u16 = 2;
const NFTA_VERDICT_CODE: u16 = 1;
const NFTA_VERDICT_CHAIN: u16 = 2;

const NFT_SET_ANONYMOUS: u32 = 0x1;
const NFT_SET_CONSTANT: u32 = 0x2;
const NFT_SET_INTERVAL: u32 = 0x4;
const NFT_SET_MAP: u32 = 0x8;
const NFT_SET_CONCAT: u32 = 0x80;
const NFT_SET_ELEM_INTERVAL_END: u32 = 0x1;
const NFT_DATA_VERDICT: u32 = 0xffff_ff00;
/// nft's userspace type ids are folded into a concatenation's key type 6 bits at a time.
const TYPE_BITS: u32 = 6;
/// `NFTNL_UDATA_RULE_COMMENT`.
const UDATA_RULE_COMMENT: u8 = 0;

/// The address family of a table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Family {
    Ip,
    Ip6,
    Inet,
}

impl Family {
    fn nfproto(self) -> u8 {
        match self {
            Family::Ip => 2,
            Family::Ip6 => 10,
            Family::Inet => 1,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Family::Ip => "ip",
            Family::Ip6 => "ip6",
            Family::Inet => "inet",
        }
    }
}

/// One field of a set key (nft's data types).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyType {
    Ipv4Addr,
    Ipv6Addr,
    InetProto,
    InetService,
    Ifname,
}

impl KeyType {
    /// nft's type id (`enum datatypes`), stored with the set so `nft list` can print it.
    fn id(self) -> u32 {
        match self {
            KeyType::Ipv4Addr => 7,
            KeyType::Ipv6Addr => 8,
            KeyType::InetProto => 12,
            KeyType::InetService => 13,
            KeyType::Ifname => 41,
        }
    }

    /// Length in bytes of one value.
    pub fn bytes(self) -> usize {
        match self {
            KeyType::Ipv4Addr => 4,
            KeyType::Ipv6Addr => 16,
            KeyType::InetProto => 1,
            KeyType::InetService => 2,
            KeyType::Ifname => 16,
        }
    }
}

/// A named set or map.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetSpec {
    pub name: String,
    /// One type, or several for a concatenation.
    pub key: Vec<KeyType>,
    /// `flags interval` (with several key types: concatenated ranges).
    pub interval: bool,
    /// A map to verdicts (`type … : verdict`).
    pub verdict_map: bool,
}

impl SetSpec {
    fn key_len(&self) -> usize {
        self.key.iter().map(|k| nfnl::align4(k.bytes())).sum()
    }

    fn flags(&self, anonymous: bool) -> u32 {
        let mut f = 0;
        if anonymous {
            f |= NFT_SET_ANONYMOUS | NFT_SET_CONSTANT;
        }
        if self.interval {
            f |= NFT_SET_INTERVAL;
            if self.key.len() > 1 {
                f |= NFT_SET_CONCAT;
            }
        }
        if self.verdict_map {
            f |= NFT_SET_MAP;
        }
        f
    }
}

/// A verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Accept,
    Drop,
    Return,
    Jump(String),
}

impl Verdict {
    fn code(&self) -> i32 {
        match self {
            Verdict::Drop => 0,
            Verdict::Accept => 1,
            Verdict::Jump(_) => -3,
            Verdict::Return => -5,
        }
    }

    fn encode(&self) -> Vec<u8> {
        let mut v = attr(NFTA_VERDICT_CODE, &self.code().to_be_bytes());
        if let Verdict::Jump(chain) = self {
            v.extend(attr_str(NFTA_VERDICT_CHAIN, chain));
        }
        nest(NFTA_DATA_VERDICT, &v)
    }
}

/// One element: per key field an inclusive range of values (`start == end` for a single
/// value), each in the field's wire format (network byte order, unpadded), and the verdict of
/// a map's element.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Elem {
    pub fields: Vec<(Vec<u8>, Vec<u8>)>,
    pub verdict: Option<Verdict>,
}

impl Elem {
    /// A single value of one field.
    pub fn value(v: Vec<u8>) -> Self {
        Elem {
            fields: vec![(v.clone(), v)],
            verdict: None,
        }
    }
}

/// An interface name as a key: zero-padded to `IFNAMSIZ`.
pub fn ifname_key(name: &str) -> Vec<u8> {
    let mut v = name.as_bytes().to_vec();
    v.resize(16, 0);
    v
}

/// Register numbers as the kernel knows them.
pub const REG_VERDICT: u32 = 0;
/// The first 16-byte register (= the first 4-byte one, `NFT_REG32_00`).
pub const REG_1: u32 = 1;
const REG32_00: u32 = 8;

/// The 4-byte register at `offset` bytes into the register file (a concatenation's field).
pub fn reg32_at(offset: usize) -> u32 {
    if offset == 0 {
        REG_1
    } else {
        REG32_00 + u32::try_from(offset / 4).unwrap_or(0)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetaKey {
    Iifname,
    Oifname,
    Nfproto,
    L4proto,
}

impl MetaKey {
    fn code(self) -> u32 {
        match self {
            MetaKey::Iifname => 6,
            MetaKey::Oifname => 7,
            MetaKey::Nfproto => 15,
            MetaKey::L4proto => 16,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PayloadBase {
    Network,
    Transport,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CmpOp {
    Eq,
    Neq,
}

/// One kernel expression of a rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expr {
    Meta {
        key: MetaKey,
        dreg: u32,
    },
    Payload {
        base: PayloadBase,
        offset: u32,
        len: u32,
        dreg: u32,
    },
    Cmp {
        sreg: u32,
        op: CmpOp,
        data: Vec<u8>,
    },
    Bitwise {
        sreg: u32,
        dreg: u32,
        mask: Vec<u8>,
        xor: Vec<u8>,
    },
    /// `ct state` into `dreg`.
    CtState {
        dreg: u32,
    },
    /// `hton(reg, size, len)`, as nft emits after `meta l4proto` in a concatenation.
    Hton {
        sreg: u32,
        dreg: u32,
        len: u32,
        size: u32,
    },
    /// A set lookup: by name, or (an anonymous set of this batch) by its id; `dreg` for a
    /// verdict map; `invert` for `!=`.
    Lookup {
        set: String,
        set_id: Option<u32>,
        sreg: u32,
        dreg: Option<u32>,
        invert: bool,
    },
    Immediate(Verdict),
    Masquerade,
    Counter,
}

fn be32(v: u32) -> [u8; 4] {
    v.to_be_bytes()
}

impl Expr {
    fn encode(&self) -> Vec<u8> {
        let (name, data): (&str, Vec<u8>) = match self {
            Expr::Meta { key, dreg } => (
                "meta",
                [attr(2, &be32(key.code())), attr(1, &be32(*dreg))].concat(),
            ),
            Expr::Payload {
                base,
                offset,
                len,
                dreg,
            } => {
                let b = match base {
                    PayloadBase::Network => 1,
                    PayloadBase::Transport => 2,
                };
                (
                    "payload",
                    [
                        attr(1, &be32(*dreg)),
                        attr(2, &be32(b)),
                        attr(3, &be32(*offset)),
                        attr(4, &be32(*len)),
                    ]
                    .concat(),
                )
            }
            Expr::Cmp { sreg, op, data } => {
                let o = match op {
                    CmpOp::Eq => 0,
                    CmpOp::Neq => 1,
                };
                (
                    "cmp",
                    [
                        attr(1, &be32(*sreg)),
                        attr(2, &be32(o)),
                        nest(3, &attr(NFTA_DATA_VALUE, data)),
                    ]
                    .concat(),
                )
            }
            Expr::Bitwise {
                sreg,
                dreg,
                mask,
                xor,
            } => (
                "bitwise",
                [
                    attr(1, &be32(*sreg)),
                    attr(2, &be32(*dreg)),
                    attr(3, &be32(u32::try_from(mask.len()).unwrap_or(0))),
                    nest(4, &attr(NFTA_DATA_VALUE, mask)),
                    nest(5, &attr(NFTA_DATA_VALUE, xor)),
                ]
                .concat(),
            ),
            Expr::CtState { dreg } => ("ct", [attr(2, &be32(0)), attr(1, &be32(*dreg))].concat()),
            Expr::Hton {
                sreg,
                dreg,
                len,
                size,
            } => (
                "byteorder",
                [
                    attr(1, &be32(*sreg)),
                    attr(2, &be32(*dreg)),
                    attr(3, &be32(1)),
                    attr(4, &be32(*len)),
                    attr(5, &be32(*size)),
                ]
                .concat(),
            ),
            Expr::Lookup {
                set,
                set_id,
                sreg,
                dreg,
                invert,
            } => {
                let mut a = attr_str(1, set);
                a.extend(attr(2, &be32(*sreg)));
                if let Some(d) = dreg {
                    a.extend(attr(3, &be32(*d)));
                }
                if let Some(id) = set_id {
                    a.extend(attr(4, &be32(*id)));
                }
                a.extend(attr(5, &be32(u32::from(*invert))));
                ("lookup", a)
            }
            Expr::Immediate(v) => (
                "immediate",
                [attr(1, &be32(REG_VERDICT)), nest(2, &v.encode())].concat(),
            ),
            Expr::Masquerade => ("masq", Vec::new()),
            Expr::Counter => ("counter", Vec::new()),
        };
        let mut e = attr_str(NFTA_EXPR_NAME, name);
        if !data.is_empty() {
            e.extend(nest(NFTA_EXPR_DATA, &data));
        }
        nest(NFTA_LIST_ELEM, &e)
    }
}

/// A base chain's hook.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hook {
    /// `filter`, `nat`, `route`.
    pub chain_type: String,
    /// `NF_INET_*`: prerouting 0, input 1, forward 2, output 3, postrouting 4.
    pub hooknum: u32,
    pub priority: i32,
    /// `policy accept` (else drop).
    pub accept: bool,
}

pub const HOOK_FORWARD: u32 = 2;
pub const HOOK_POSTROUTING: u32 = 4;

fn attr(kind: u16, payload: &[u8]) -> Vec<u8> {
    let mut a = Vec::with_capacity(nfnl::align4(4 + payload.len()));
    a.extend_from_slice(
        &u16::try_from(4 + payload.len())
            .unwrap_or(u16::MAX)
            .to_ne_bytes(),
    );
    a.extend_from_slice(&kind.to_ne_bytes());
    a.extend_from_slice(payload);
    a.resize(nfnl::align4(a.len()), 0);
    a
}

fn attr_str(kind: u16, s: &str) -> Vec<u8> {
    let mut v = s.as_bytes().to_vec();
    v.push(0);
    attr(kind, &v)
}

fn nest(kind: u16, inner: &[u8]) -> Vec<u8> {
    attr(kind | NLA_F_NESTED, inner)
}

/// One message of a batch, and what to call its object in an error.
#[derive(Debug)]
struct Msg {
    kind: u16,
    flags: u16,
    family: Family,
    attrs: Vec<u8>,
    what: String,
}

/// An open `NETLINK_NETFILTER` socket for nf_tables batches, kept across commits.
///
/// Why keep one: when a netlink socket that sent nf_tables messages is closed, the kernel
/// (`nft_rcv_nl_event`, `NETLINK_URELEASE`) first flushes the deferred destruction of the
/// objects earlier transactions deleted, which waits for an RCU grace period — 8 to 15 ms
/// measured on the 2-core dev machine (Linux 6.18; `strace -T` of the agent: the batch
/// itself 0.12–0.2 ms, the `close` 8–15 ms). A long-lived socket leaves that to the
/// kernel's worker. Bound to the network namespace of the thread that opened it.
#[derive(Debug)]
pub struct Session {
    sock: netlink_sys::Socket,
    seq: u32,
}

impl Session {
    /// Opens a socket in the calling thread's network namespace.
    pub fn open() -> Result<Session, NetlinkError> {
        let sock = nfnl::open()?;
        // Errors carry the request's header only, and a message from the kernel if any.
        let _ = sock.set_cap_ack(true);
        let _ = sock.set_ext_ack(true);
        Ok(Session { sock, seq: 1 })
    }
}

/// One nf_tables transaction under construction. Nothing reaches the kernel before
/// [`Batch::commit`].
#[derive(Debug, Default)]
pub struct Batch {
    msgs: Vec<Msg>,
    next_set_id: u32,
    /// The sets created in this batch (for their elements' encoding).
    sets: BTreeMap<(Family, String, String), SetSpec>,
}

impl Batch {
    pub fn new() -> Self {
        Self::default()
    }

    /// How many messages (objects) the batch holds.
    pub fn len(&self) -> usize {
        self.msgs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.msgs.is_empty()
    }

    fn push(&mut self, kind: u16, flags: u16, family: Family, attrs: Vec<u8>, what: String) {
        self.msgs.push(Msg {
            kind,
            flags,
            family,
            attrs,
            what,
        });
    }

    /// `add table` (present is fine).
    pub fn add_table(&mut self, family: Family, name: &str) {
        let a = [
            attr_str(NFTA_TABLE_NAME, name),
            attr(NFTA_TABLE_FLAGS, &be32(0)),
        ]
        .concat();
        let what = format!("table {} {name}", family.name());
        self.push(NFT_MSG_NEWTABLE, NLM_F_CREATE, family, a, what);
    }

    /// `delete table` (absent fails: precede it with [`Batch::add_table`]).
    pub fn delete_table(&mut self, family: Family, name: &str) {
        let what = format!("table {} {name} (delete)", family.name());
        self.push(
            NFT_MSG_DELTABLE,
            0,
            family,
            attr_str(NFTA_TABLE_NAME, name),
            what,
        );
    }

    /// `add chain` (present is fine), a base chain with `hook`.
    pub fn add_chain(&mut self, family: Family, table: &str, name: &str, hook: Option<&Hook>) {
        let mut a = [
            attr_str(NFTA_CHAIN_TABLE, table),
            attr_str(NFTA_CHAIN_NAME, name),
        ]
        .concat();
        if let Some(h) = hook {
            a.extend(nest(
                NFTA_CHAIN_HOOK,
                &[
                    attr(NFTA_HOOK_HOOKNUM, &be32(h.hooknum)),
                    attr(NFTA_HOOK_PRIORITY, &h.priority.to_be_bytes()),
                ]
                .concat(),
            ));
            a.extend(attr(NFTA_CHAIN_POLICY, &be32(u32::from(h.accept))));
            a.extend(attr_str(NFTA_CHAIN_TYPE, &h.chain_type));
        }
        let what = format!("chain {} {table} {name}", family.name());
        self.push(NFT_MSG_NEWCHAIN, NLM_F_CREATE, family, a, what);
    }

    /// `delete chain` with its rules (fails while a verdict still jumps to it).
    pub fn delete_chain(&mut self, family: Family, table: &str, name: &str) {
        let a = [
            attr_str(NFTA_CHAIN_TABLE, table),
            attr_str(NFTA_CHAIN_NAME, name),
        ]
        .concat();
        let what = format!("chain {} {table} {name} (delete)", family.name());
        self.push(NFT_MSG_DELCHAIN, 0, family, a, what);
    }

    /// `delete set`/`delete map` (fails while a rule still uses it).
    pub fn delete_set(&mut self, family: Family, table: &str, name: &str) {
        let a = [
            attr_str(NFTA_SET_TABLE, table),
            attr_str(NFTA_SET_NAME, name),
        ]
        .concat();
        let what = format!("set {} {table} {name} (delete)", family.name());
        self.push(NFT_MSG_DELSET, 0, family, a, what);
    }

    /// `delete element`: single-value keys of a set without intervals (a map's data is not
    /// needed to name its element).
    pub fn delete_elements(
        &mut self,
        family: Family,
        table: &str,
        spec: &SetSpec,
        keys: &[Vec<u8>],
    ) -> Result<(), NetlinkError> {
        if keys.is_empty() {
            return Ok(());
        }
        if spec.interval || spec.key.len() != 1 {
            return Err(NetlinkError::InvalidArgument(format!(
                "deleting elements of set {} {table} {}: only plain single-field sets",
                family.name(),
                spec.name
            )));
        }
        let mut list = Vec::new();
        for k in keys {
            if k.len() != spec.key[0].bytes() {
                return Err(NetlinkError::InvalidArgument(format!(
                    "deleting an element of the wrong length from set {}",
                    spec.name
                )));
            }
            list.extend(nest(
                NFTA_LIST_ELEM,
                &nest(NFTA_SET_ELEM_KEY, &attr(NFTA_DATA_VALUE, &padded(k))),
            ));
        }
        let a = [
            attr_str(NFTA_SET_ELEM_LIST_TABLE, table),
            attr_str(NFTA_SET_ELEM_LIST_SET, &spec.name),
            nest(NFTA_SET_ELEM_LIST_ELEMENTS, &list),
        ]
        .concat();
        let what = format!(
            "elements of set {} {table} {} (delete)",
            family.name(),
            spec.name
        );
        self.push(NFT_MSG_DELSETELEM, 0, family, a, what);
        Ok(())
    }

    /// `flush chain`: deletes its rules.
    pub fn flush_chain(&mut self, family: Family, table: &str, name: &str) {
        let a = [
            attr_str(NFTA_RULE_TABLE, table),
            attr_str(NFTA_RULE_CHAIN, name),
        ]
        .concat();
        let what = format!("chain {} {table} {name} (flush)", family.name());
        self.push(NFT_MSG_DELRULE, 0, family, a, what);
    }

    fn new_set(&mut self, family: Family, table: &str, spec: &SetSpec, anonymous: bool) -> u32 {
        self.next_set_id += 1;
        let id = self.next_set_id;
        let key_type = spec.key.iter().fold(0u32, |t, k| (t << TYPE_BITS) | k.id());
        let mut a = [
            attr_str(NFTA_SET_TABLE, table),
            attr_str(NFTA_SET_NAME, &spec.name),
            attr(NFTA_SET_FLAGS, &be32(spec.flags(anonymous))),
            attr(NFTA_SET_KEY_TYPE, &be32(key_type)),
            attr(
                NFTA_SET_KEY_LEN,
                &be32(u32::try_from(spec.key_len()).unwrap_or(0)),
            ),
        ]
        .concat();
        if spec.verdict_map {
            a.extend(attr(NFTA_SET_DATA_TYPE, &be32(NFT_DATA_VERDICT)));
        }
        if spec.key.len() > 1 {
            let fields: Vec<u8> = spec
                .key
                .iter()
                .flat_map(|k| {
                    nest(
                        NFTA_LIST_ELEM,
                        &attr(
                            NFTA_SET_FIELD_LEN,
                            &be32(u32::try_from(k.bytes()).unwrap_or(0)),
                        ),
                    )
                })
                .collect();
            a.extend(nest(NFTA_SET_DESC, &nest(NFTA_SET_DESC_CONCAT, &fields)));
        }
        a.extend(attr(NFTA_SET_ID, &be32(id)));
        // What nft stores for itself (`NFTNL_UDATA_SET_*`): the key's byte order (host for
        // interface names, network for the rest), a map's data byte order and interval flag.
        // `nft list` prints interface names only with it.
        if let [k] = spec.key.as_slice() {
            let order: u32 = if *k == KeyType::Ifname { 1 } else { 2 };
            let mut ud = vec![0u8, 4];
            ud.extend(order.to_ne_bytes());
            if spec.verdict_map {
                ud.extend([1, 4]);
                ud.extend(0u32.to_ne_bytes());
                ud.extend([6, 4]);
                ud.extend(0u32.to_ne_bytes());
            }
            a.extend(attr(NFTA_SET_USERDATA, &ud));
        }
        let kind = if spec.verdict_map { "map" } else { "set" };
        let what = format!("{kind} {} {table} {}", family.name(), spec.name);
        self.push(NFT_MSG_NEWSET, NLM_F_CREATE, family, a, what);
        self.sets
            .insert((family, table.to_owned(), spec.name.clone()), spec.clone());
        id
    }

    /// `add set`/`add map` (present with the same definition is fine).
    pub fn add_set(&mut self, family: Family, table: &str, spec: &SetSpec) {
        self.new_set(family, table, spec, false);
    }

    /// An anonymous constant set with `elems` (`ip saddr { … }`): returns the name and id a
    /// [`Expr::Lookup`] refers to it by.
    pub fn anonymous_set(
        &mut self,
        family: Family,
        table: &str,
        key: Vec<KeyType>,
        interval: bool,
        elems: &[Elem],
    ) -> Result<(String, u32), NetlinkError> {
        let spec = SetSpec {
            name: "__set%d".to_owned(),
            key,
            interval,
            verdict_map: false,
        };
        let id = self.new_set(family, table, &spec, true);
        self.elements(family, table, &spec, Some(id), elems)?;
        Ok((spec.name, id))
    }

    /// The definition of a set created in this batch.
    pub fn set_spec(&self, family: Family, table: &str, name: &str) -> Option<&SetSpec> {
        self.sets.get(&(family, table.to_owned(), name.to_owned()))
    }

    /// `flush set`: deletes its elements.
    pub fn flush_set(&mut self, family: Family, table: &str, name: &str) {
        let a = [
            attr_str(NFTA_SET_ELEM_LIST_TABLE, table),
            attr_str(NFTA_SET_ELEM_LIST_SET, name),
        ]
        .concat();
        let what = format!("set {} {table} {name} (flush)", family.name());
        self.push(NFT_MSG_DELSETELEM, 0, family, a, what);
    }

    /// `add element` to the set `spec` describes (present is fine).
    pub fn add_elements(
        &mut self,
        family: Family,
        table: &str,
        spec: &SetSpec,
        elems: &[Elem],
    ) -> Result<(), NetlinkError> {
        self.elements(family, table, spec, None, elems)
    }

    fn elements(
        &mut self,
        family: Family,
        table: &str,
        spec: &SetSpec,
        set_id: Option<u32>,
        elems: &[Elem],
    ) -> Result<(), NetlinkError> {
        if elems.is_empty() {
            return Ok(());
        }
        let mut list = Vec::new();
        let bad = |why: &str| {
            NetlinkError::InvalidArgument(format!(
                "element of set {} {table} {}: {why}",
                family.name(),
                spec.name
            ))
        };
        let single_interval = spec.interval && spec.key.len() == 1;
        let mut sorted: Vec<&Elem> = elems.iter().collect();
        if single_interval {
            sorted.sort_by(|a, b| a.fields.first().cmp(&b.fields.first()));
        }
        for (i, e) in sorted.iter().enumerate() {
            if e.fields.len() != spec.key.len() {
                return Err(bad("wrong number of fields"));
            }
            for ((s, t), k) in e.fields.iter().zip(&spec.key) {
                if s.len() != k.bytes() || t.len() != k.bytes() || s > t {
                    return Err(bad("value of the wrong length or an empty range"));
                }
            }
            if e.verdict.is_some() != spec.verdict_map {
                return Err(bad("a map element needs a verdict, a set element none"));
            }
            let key: Vec<u8> = e.fields.iter().flat_map(|(s, _)| padded(s)).collect();
            if single_interval {
                let (start, end) = &e.fields[0];
                // As nft does: the first interval of a set gets an end marker at zero.
                if i == 0 && start.iter().any(|b| *b != 0) {
                    list.extend(nest(
                        NFTA_LIST_ELEM,
                        &[
                            nest(
                                NFTA_SET_ELEM_KEY,
                                &attr(NFTA_DATA_VALUE, &vec![0; start.len()]),
                            ),
                            attr(NFTA_SET_ELEM_FLAGS, &be32(NFT_SET_ELEM_INTERVAL_END)),
                        ]
                        .concat(),
                    ));
                }
                // The end is exclusive; none after the last value of the type, where nft
                // marks the start open (`NFTNL_UDATA_SET_ELEM_FLAGS`: interval open).
                let mut start_el = nest(NFTA_SET_ELEM_KEY, &attr(NFTA_DATA_VALUE, start));
                let next = increment(end);
                if next.is_none() {
                    let mut ud = vec![1u8, 4];
                    ud.extend(1u32.to_ne_bytes());
                    start_el.extend(attr(NFTA_SET_ELEM_USERDATA, &ud));
                }
                list.extend(nest(NFTA_LIST_ELEM, &start_el));
                if let Some(next) = next {
                    list.extend(nest(
                        NFTA_LIST_ELEM,
                        &[
                            nest(NFTA_SET_ELEM_KEY, &attr(NFTA_DATA_VALUE, &next)),
                            attr(NFTA_SET_ELEM_FLAGS, &be32(NFT_SET_ELEM_INTERVAL_END)),
                        ]
                        .concat(),
                    ));
                }
                continue;
            }
            let mut el = nest(NFTA_SET_ELEM_KEY, &attr(NFTA_DATA_VALUE, &key));
            if spec.interval {
                let key_end: Vec<u8> = e.fields.iter().flat_map(|(_, t)| padded(t)).collect();
                el.extend(nest(
                    NFTA_SET_ELEM_KEY_END,
                    &attr(NFTA_DATA_VALUE, &key_end),
                ));
            } else if e.fields.iter().any(|(s, t)| s != t) {
                return Err(bad("a range in a set without flags interval"));
            }
            if let Some(v) = &e.verdict {
                el.extend(nest(NFTA_SET_ELEM_DATA, &v.encode()));
            }
            list.extend(nest(NFTA_LIST_ELEM, &el));
        }
        let mut a = [
            attr_str(NFTA_SET_ELEM_LIST_TABLE, table),
            attr_str(NFTA_SET_ELEM_LIST_SET, &spec.name),
        ]
        .concat();
        if let Some(id) = set_id {
            a.extend(attr(NFTA_SET_ELEM_LIST_SET_ID, &be32(id)));
        }
        a.extend(nest(NFTA_SET_ELEM_LIST_ELEMENTS, &list));
        let what = format!("elements of set {} {table} {}", family.name(), spec.name);
        self.push(NFT_MSG_NEWSETELEM, NLM_F_CREATE, family, a, what);
        Ok(())
    }

    /// `add rule` (appended to the chain).
    pub fn add_rule(
        &mut self,
        family: Family,
        table: &str,
        chain: &str,
        exprs: &[Expr],
        comment: Option<&str>,
    ) {
        let mut a = [
            attr_str(NFTA_RULE_TABLE, table),
            attr_str(NFTA_RULE_CHAIN, chain),
        ]
        .concat();
        let list: Vec<u8> = exprs.iter().flat_map(Expr::encode).collect();
        a.extend(nest(NFTA_RULE_EXPRESSIONS, &list));
        if let Some(c) = comment {
            let mut v = c.as_bytes().to_vec();
            v.push(0);
            let mut ud = vec![UDATA_RULE_COMMENT, u8::try_from(v.len()).unwrap_or(u8::MAX)];
            ud.extend(v.iter().take(255));
            a.extend(attr(NFTA_RULE_USERDATA, &ud));
        }
        let n = self
            .msgs
            .iter()
            .filter(|m| m.kind == NFT_MSG_NEWRULE)
            .count();
        let what = format!("rule #{n} of chain {} {table} {chain}", family.name());
        self.push(
            NFT_MSG_NEWRULE,
            NLM_F_CREATE | NLM_F_APPEND,
            family,
            a,
            what,
        );
    }

    /// The batch as the bytes sent to the kernel, sequence numbers from `seq0` (BEGIN) on.
    fn encode(&self, seq0: u32) -> Vec<u8> {
        let size: usize = self.msgs.iter().map(|m| m.attrs.len() + 20).sum();
        let mut out = Vec::with_capacity(size + 40);
        let res = NFNL_SUBSYS_NFTABLES;
        nfnl::push_message(
            &mut out,
            NFNL_MSG_BATCH_BEGIN,
            NLM_F_REQUEST,
            seq0,
            0,
            res,
            &[],
        );
        let mut seq = seq0;
        for m in &self.msgs {
            seq = seq.wrapping_add(1);
            nfnl::push_message(
                &mut out,
                (NFNL_SUBSYS_NFTABLES << 8) | m.kind,
                NLM_F_REQUEST | m.flags,
                seq,
                m.family.nfproto(),
                0,
                &m.attrs,
            );
        }
        seq = seq.wrapping_add(1);
        nfnl::push_message(
            &mut out,
            NFNL_MSG_BATCH_END,
            NLM_F_REQUEST,
            seq,
            0,
            res,
            &[],
        );
        out
    }

    /// Sends the batch as one transaction in the calling thread's network namespace and
    /// waits for the kernel's verdict: all of it applied, or none of it and the first
    /// rejected object named in the error. Opens and closes a socket of its own: closing
    /// it after a batch that deleted chains or sets waits for an RCU grace period (below,
    /// [`Session`]); a caller on a latency-sensitive path keeps a [`Session`] instead.
    pub fn commit(&self) -> Result<(), NetlinkError> {
        if self.msgs.is_empty() {
            return Ok(());
        }
        self.commit_in(&mut Session::open()?)
    }

    /// [`commit`](Self::commit) on an open [`Session`] (in the network namespace it was
    /// opened in). After an error the session may hold unread replies: drop it and open a
    /// new one.
    pub fn commit_in(&self, session: &mut Session) -> Result<(), NetlinkError> {
        if self.msgs.is_empty() {
            return Ok(());
        }
        let sock = &session.sock;
        // A fresh range of sequence numbers per batch: a reply can never be taken for one
        // of an earlier batch's.
        let seq0: u32 = session.seq;
        session.seq = session
            .seq
            .wrapping_add(u32::try_from(self.msgs.len()).unwrap_or(0))
            .wrapping_add(3);
        let bytes = self.encode(seq0);
        // A large ruleset is more than the default send buffer; nft raises it the same way.
        if bytes.len() + 4096 > 200_000 {
            nix::sys::socket::setsockopt(
                sock,
                nix::sys::socket::sockopt::SndBufForce,
                &(bytes.len() + 4096),
            )
            .map_err(|e| NetlinkError::Socket(e.into()))?;
        }
        sock.send(&bytes, 0).map_err(NetlinkError::Socket)?;
        // The kernel has processed the batch when `send` returns: its errors (only errors:
        // no message asked for an ACK) are queued before the answer to this request.
        let end_seq = seq0
            .wrapping_add(u32::try_from(self.msgs.len()).unwrap_or(0))
            .wrapping_add(2);
        let gen = nfnl::message(
            (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETGEN,
            NLM_F_REQUEST | NLM_F_ACK,
            end_seq,
            0,
            0,
            &[],
        );
        sock.send(&gen, 0).map_err(NetlinkError::Socket)?;
        let mut first_error: Option<NetlinkError> = None;
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = sock
                .recv(&mut &mut buf[..], 0)
                .map_err(NetlinkError::Socket)?;
            if n == 0 {
                break;
            }
            let mut done = false;
            for r in nfnl::replies(&buf[..n]) {
                if r.kind != NLMSG_ERROR {
                    continue;
                }
                let errno = nfnl::error_code(r.body);
                if r.seq == end_seq {
                    if errno != 0 && first_error.is_none() {
                        first_error = Some(NetlinkError::Kernel {
                            op: "NFT_MSG_GETGEN",
                            errno,
                        });
                    }
                    done = true;
                } else if errno != 0
                    && first_error.is_none()
                    && r.seq.wrapping_sub(seq0) < end_seq.wrapping_sub(seq0)
                {
                    first_error = Some(self.describe(seq0, r.seq, errno, r.body));
                }
            }
            if done {
                break;
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    fn describe(&self, seq0: u32, seq: u32, errno: i32, body: &[u8]) -> NetlinkError {
        let idx = seq.wrapping_sub(seq0);
        let object = match usize::try_from(idx).ok() {
            Some(0) => "the batch (begin)".to_owned(),
            Some(i) => self
                .msgs
                .get(i - 1)
                .map(|m| m.what.clone())
                .unwrap_or_else(|| "the batch (end)".to_owned()),
            None => "the batch".to_owned(),
        };
        NetlinkError::Nftables {
            object,
            errno,
            message: ext_ack_message(body),
        }
    }
}

/// The `NLMSGERR_ATTR_MSG` of an extended ACK (after the error code and the capped header).
fn ext_ack_message(body: &[u8]) -> Option<String> {
    const NLMSGERR_ATTR_MSG: u16 = 1;
    let tlvs = body.get(4 + nfnl::NLMSG_HDRLEN..)?;
    nfnl::attrs(tlvs)
        .find(|(k, _, _)| *k == NLMSGERR_ATTR_MSG)
        .map(|(_, p, _)| String::from_utf8_lossy(p).trim_end_matches('\0').to_owned())
}

/// A field value padded to the 4-byte registers.
fn padded(v: &[u8]) -> Vec<u8> {
    let mut p = v.to_vec();
    p.resize(nfnl::align4(v.len()), 0);
    p
}

/// `v + 1` as a big-endian number, `None` when it overflows.
fn increment(v: &[u8]) -> Option<Vec<u8>> {
    let mut out = v.to_vec();
    for b in out.iter_mut().rev() {
        if *b == u8::MAX {
            *b = 0;
        } else {
            *b += 1;
            return Some(out);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn increment_carries_and_overflows() {
        assert_eq!(increment(&[10, 0, 0, 255]), Some(vec![10, 0, 1, 0]));
        assert_eq!(increment(&[255, 255]), None);
    }

    #[test]
    fn concat_key_type_folds_six_bits_per_field() {
        let t = [KeyType::Ipv4Addr, KeyType::InetProto, KeyType::InetService]
            .iter()
            .fold(0u32, |t, k| (t << TYPE_BITS) | k.id());
        assert_eq!(t, (7 << 12) | (12 << 6) | 13);
    }

    #[test]
    fn registers_of_a_concatenation() {
        assert_eq!(reg32_at(0), 1);
        assert_eq!(reg32_at(4), 9);
        assert_eq!(reg32_at(16), 12);
    }

    #[test]
    fn batch_frames_begin_messages_end() {
        let mut b = Batch::new();
        b.add_table(Family::Inet, "t");
        b.delete_table(Family::Inet, "t");
        let bytes = b.encode(7);
        let kinds: Vec<(u16, u32)> = nfnl::replies(&bytes).map(|r| (r.kind, r.seq)).collect();
        assert_eq!(kinds, vec![(0x10, 7), (0x0a00, 8), (0x0a02, 9), (0x11, 10)]);
    }
}
