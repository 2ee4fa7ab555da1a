//! The network configuration on stdin, decoded and validated up front.

use std::path::PathBuf;

use serde::Deserialize;
use serde_json::Value;

use vpcnet_proto::api::{Attachment, DEFAULT_SOCKET};

use crate::error::CniError;
use crate::limits;
use crate::version::{self, Spec};

pub const DEFAULT_LOG_FILE: &str = "/var/log/vpcnet/plugin.log";
/// `logMaxBytes`: 1 KiB (tests) to 1 GiB.
pub const LOG_MAX_BYTES: std::ops::RangeInclusive<u64> = 1024..=(1 << 30);
/// IPv4's minimum MTU, and veth's maximum.
pub const MTU_RANGE: std::ops::RangeInclusive<u32> = 68..=65535;

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Raw {
    cni_version: Option<String>,
    name: Option<String>,
    #[serde(rename = "type")]
    plugin_type: Option<String>,
    socket: Option<Value>,
    mtu: Option<Value>,
    log_file: Option<String>,
    log_level: Option<String>,
    log_max_bytes: Option<Value>,
    prev_result: Option<Value>,
    ipam: Option<Value>,
    #[serde(rename = "cni.dev/valid-attachments")]
    valid_attachments: Option<Vec<RawAttachment>>,
    #[serde(rename = "cni.dev/attachments")]
    attachments: Option<Vec<RawAttachment>>,
}

#[derive(Debug, Deserialize)]
struct RawAttachment {
    #[serde(rename = "containerID")]
    container_id: String,
    ifname: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum LogLevel {
    Error,
    Info,
    Debug,
}

#[derive(Clone, Debug)]
pub struct NetConf {
    pub cni_version: String,
    pub spec: Spec,
    pub name: String,
    pub socket: PathBuf,
    pub mtu: Option<u32>,
    pub log_file: PathBuf,
    pub log_level: LogLevel,
    /// `logMaxBytes`: the log is rotated at this size (see `log`).
    pub log_max_bytes: u64,
    pub prev_result: Option<Value>,
    /// GC: attachments the runtime still uses (None when the runtime sent no list).
    pub valid_attachments: Option<Vec<Attachment>>,
}

/// Only the version, for error results when the rest does not decode.
pub fn peek_version(stdin: &[u8]) -> Option<String> {
    #[derive(Deserialize)]
    struct V {
        #[serde(rename = "cniVersion")]
        v: Option<String>,
    }
    serde_json::from_slice::<V>(stdin).ok()?.v
}

pub fn parse(stdin: &[u8]) -> Result<NetConf, CniError> {
    let raw: Raw = serde_json::from_slice(stdin).map_err(|e| CniError::Decode(e.to_string()))?;
    let cni_version = raw
        .cni_version
        .ok_or_else(|| CniError::config("cniVersion", "missing"))?;
    let spec = version::parse(&cni_version)?;
    let name = raw
        .name
        .filter(|n| !n.is_empty())
        .ok_or_else(|| CniError::config("name", "missing or empty"))?;
    validate_name(&name)?;
    if let Some(t) = raw.plugin_type.as_deref() {
        if t.is_empty() {
            return Err(CniError::config("type", "empty"));
        }
    }
    if raw.ipam.as_ref().is_some_and(|v| !v.is_null()) {
        return Err(CniError::UnsupportedField {
            field: "ipam",
            reason: "vpcnet takes addresses from vpcnetd, not from an IPAM plugin; remove it"
                .into(),
        });
    }
    let socket = match raw.socket {
        None | Some(Value::Null) => PathBuf::from(DEFAULT_SOCKET),
        Some(Value::String(s)) if s.len() > limits::SOCKET_PATH => {
            return Err(CniError::config(
                "socket",
                format!(
                    "is {} bytes, longer than the {} a unix socket path can have",
                    s.len(),
                    limits::SOCKET_PATH
                ),
            ))
        }
        Some(Value::String(s)) if s.starts_with('/') => PathBuf::from(s),
        Some(other) => {
            return Err(CniError::config(
                "socket",
                format!("{other} is not an absolute path"),
            ))
        }
    };
    let mtu = match raw.mtu {
        None | Some(Value::Null) => None,
        Some(v) => {
            let m = v.as_u64().and_then(|m| u32::try_from(m).ok());
            match m {
                Some(m) if MTU_RANGE.contains(&m) => Some(m),
                _ => {
                    return Err(CniError::config(
                        "mtu",
                        format!(
                            "{v} is out of range {}..={}",
                            MTU_RANGE.start(),
                            MTU_RANGE.end()
                        ),
                    ))
                }
            }
        }
    };
    let log_level = match raw.log_level.as_deref() {
        None | Some("") | Some("info") => LogLevel::Info,
        Some("error") | Some("warn") | Some("warning") => LogLevel::Error,
        Some("debug") | Some("trace") => LogLevel::Debug,
        Some(other) => {
            return Err(CniError::config(
                "logLevel",
                format!("{other:?} is not one of error, info, debug"),
            ))
        }
    };
    let log_max_bytes = match raw.log_max_bytes {
        None | Some(Value::Null) => crate::log::DEFAULT_MAX_BYTES,
        Some(v) => match v.as_u64() {
            Some(n) if LOG_MAX_BYTES.contains(&n) => n,
            _ => {
                return Err(CniError::config(
                    "logMaxBytes",
                    format!(
                        "{v} is not a size in bytes within {}..={}",
                        LOG_MAX_BYTES.start(),
                        LOG_MAX_BYTES.end()
                    ),
                ))
            }
        },
    };
    if let Some(f) = raw.log_file.as_deref() {
        if f.len() > limits::LOG_FILE {
            return Err(CniError::config(
                "logFile",
                format!(
                    "is {} bytes, longer than the limit of {}",
                    f.len(),
                    limits::LOG_FILE
                ),
            ));
        }
    }
    let attachments_field = if raw.valid_attachments.is_some() {
        "cni.dev/valid-attachments"
    } else {
        "cni.dev/attachments"
    };
    let valid_attachments = raw.valid_attachments.or(raw.attachments).map(|list| {
        list.into_iter()
            .map(|a| Attachment {
                container_id: a.container_id,
                ifname: a.ifname,
            })
            .collect::<Vec<_>>()
    });
    for a in valid_attachments.iter().flatten() {
        if a.container_id.len() > limits::CONTAINER_ID || a.ifname.len() > 15 {
            return Err(CniError::config(
                attachments_field,
                format!(
                    "an entry is over the bounds (containerID {} bytes, ifname 15)",
                    limits::CONTAINER_ID
                ),
            ));
        }
    }
    Ok(NetConf {
        cni_version,
        spec,
        name,
        socket,
        mtu,
        log_file: raw
            .log_file
            .filter(|f| !f.is_empty())
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_LOG_FILE)),
        log_level,
        log_max_bytes,
        prev_result: raw.prev_result.filter(|v| !v.is_null()),
        valid_attachments,
    })
}

/// Spec: `^[A-Za-z0-9][A-Za-z0-9_.\-]*$` (what libcni checks too), and at most
/// [`limits::NAME`] bytes: the name is part of every key the agent journals.
fn validate_name(name: &str) -> Result<(), CniError> {
    if name.len() > limits::NAME {
        return Err(CniError::config(
            "name",
            format!(
                "is {} bytes, longer than the limit of {}",
                name.len(),
                limits::NAME
            ),
        ));
    }
    let mut bytes = name.bytes();
    let first_ok = bytes.next().is_some_and(|b| b.is_ascii_alphanumeric());
    if !first_ok || !bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-')) {
        return Err(CniError::config(
            "name",
            format!("{name:?} must match [A-Za-z0-9][A-Za-z0-9_.-]*"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conf(extra: &str) -> String {
        format!(r#"{{"cniVersion":"1.1.0","name":"net","type":"vpcnet"{extra}}}"#)
    }

    #[test]
    fn defaults() {
        let c = parse(conf("").as_bytes()).expect("valid");
        assert_eq!(c.socket, PathBuf::from(DEFAULT_SOCKET));
        assert_eq!(c.mtu, None);
        assert_eq!(c.log_level, LogLevel::Info);
        assert_eq!(c.log_max_bytes, 1 << 20);
        let c = parse(conf(r#","logMaxBytes":4096"#).as_bytes()).expect("valid");
        assert_eq!(c.log_max_bytes, 4096);
        assert!(c.valid_attachments.is_none());
    }

    #[test]
    fn errors_name_the_field() {
        let cases: &[(&str, u32, &str)] = &[
            ("{not json", 6, "decode"),
            (r#"{"name":"n"}"#, 7, "cniVersion"),
            (r#"{"cniVersion":"7.0.0","name":"n"}"#, 1, "7.0.0"),
            (r#"{"cniVersion":"1.0.0"}"#, 7, "name"),
        ];
        for (input, code, word) in cases {
            let e = parse(input.as_bytes()).expect_err(input);
            assert_eq!(e.code(), *code, "{input}: {e}");
            assert!(e.to_string().contains(word), "{input}: {e}");
        }
        for bad in [
            r#","mtu":0"#,
            r#","mtu":70000"#,
            r#","mtu":"big""#,
            r#","mtu":-1"#,
        ] {
            let e = parse(conf(bad).as_bytes()).expect_err(bad);
            assert_eq!(e.code(), 7);
            assert!(e.to_string().contains("mtu"), "{e}");
        }
        let e = parse(conf(r#","ipam":{"type":"host-local"}"#).as_bytes()).expect_err("ipam");
        assert_eq!(e.code(), 2);
        assert!(e.to_string().contains("ipam"));
        let e = parse(conf(r#","socket":"relative.sock""#).as_bytes()).expect_err("relative");
        assert!(e.to_string().contains("socket"));
        assert!(parse(conf(r#","mtu":1500"#).as_bytes()).is_ok());
        let long = |n: usize| "a".repeat(n);
        for (bad, field) in [
            (
                format!(r#"{{"cniVersion":"1.1.0","name":"{}"}}"#, long(254)),
                "name",
            ),
            (r#"{"cniVersion":"1.1.0","name":"a b"}"#.to_string(), "name"),
            (conf(&format!(r#","socket":"/{}""#, long(107))), "socket"),
            (conf(&format!(r#","logFile":"/{}""#, long(4095))), "logFile"),
            (conf(r#","logMaxBytes":1023"#), "logMaxBytes"),
            (conf(r#","logMaxBytes":"1M""#), "logMaxBytes"),
            (conf(r#","logMaxBytes":-1"#), "logMaxBytes"),
            (
                conf(&format!(
                    r#","cni.dev/valid-attachments":[{{"containerID":"{}","ifname":"eth0"}}]"#,
                    long(257)
                )),
                "cni.dev/valid-attachments",
            ),
        ] {
            let e = parse(bad.as_bytes()).expect_err(field);
            assert_eq!(e.code(), 7, "{e}");
            assert!(e.to_string().contains(field), "{e}");
        }
        let ok = format!(r#"{{"cniVersion":"1.1.0","name":"{}"}}"#, long(253));
        assert!(parse(ok.as_bytes()).is_ok());
    }

    #[test]
    fn gc_attachments_either_key() {
        for key in ["cni.dev/valid-attachments", "cni.dev/attachments"] {
            let c = parse(
                conf(&format!(
                    r#","{key}":[{{"containerID":"c1","ifname":"eth0"}}]"#
                ))
                .as_bytes(),
            )
            .expect("valid");
            let list = c.valid_attachments.expect("list");
            assert_eq!(list.len(), 1);
            assert_eq!(list[0].container_id, "c1");
        }
    }
}
