//! The CNI_* environment, parsed and validated before anything is changed.

use std::path::PathBuf;

use crate::error::CniError;
use crate::limits;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Gc,
    Status,
    Version,
}

/// Everything ADD/DEL/CHECK know about the container.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerEnv {
    pub container_id: String,
    pub ifname: String,
    /// None when CNI_NETNS is unset or empty (allowed on DEL).
    pub netns: Option<PathBuf>,
    pub args: PodArgs,
}

/// The keys of CNI_ARGS vpcnet uses; others are ignored.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodArgs {
    pub namespace: Option<String>,
    pub name: Option<String>,
    pub uid: Option<String>,
}

/// Reads a variable; unset and empty are both "absent".
fn var(get: &dyn Fn(&str) -> Option<String>, name: &str) -> Option<String> {
    get(name).filter(|v| !v.is_empty())
}

pub fn command(get: &dyn Fn(&str) -> Option<String>) -> Result<Command, CniError> {
    match var(get, "CNI_COMMAND").as_deref() {
        Some("ADD") => Ok(Command::Add),
        Some("DEL") => Ok(Command::Del),
        Some("CHECK") => Ok(Command::Check),
        Some("GC") => Ok(Command::Gc),
        Some("STATUS") => Ok(Command::Status),
        Some("VERSION") => Ok(Command::Version),
        Some(other) => Err(CniError::env(
            "CNI_COMMAND",
            format!("unknown command {other:?} (ADD, DEL, CHECK, GC, STATUS, VERSION)"),
        )),
        None => Err(CniError::env("CNI_COMMAND", "not set")),
    }
}

/// Spec: `^[A-Za-z0-9][A-Za-z0-9_.\-]*$`. The first character rule alone rejects `.`/`..`.
/// At most [`limits::CONTAINER_ID`] bytes: the ID is part of every journal record.
pub fn validate_container_id(id: &str) -> Result<(), CniError> {
    if id.len() > limits::CONTAINER_ID {
        return Err(CniError::env(
            "CNI_CONTAINERID",
            format!(
                "is {} bytes, longer than the limit of {}",
                id.len(),
                limits::CONTAINER_ID
            ),
        ));
    }
    let mut bytes = id.bytes();
    let first_ok = bytes.next().is_some_and(|b| b.is_ascii_alphanumeric());
    if !first_ok || !bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-')) {
        return Err(CniError::env(
            "CNI_CONTAINERID",
            format!("{id:?} must match [A-Za-z0-9][A-Za-z0-9_.-]*"),
        ));
    }
    Ok(())
}

/// Linux interface names: 1..=15 bytes, not `.`/`..`, no `/`, `:` or whitespace.
pub fn validate_ifname(name: &str) -> Result<(), CniError> {
    let reason = if name.is_empty() {
        Some("is empty".to_string())
    } else if name.len() > 15 {
        Some(format!("{name:?} is {} bytes, longer than 15", name.len()))
    } else if name == "." || name == ".." {
        Some(format!("{name:?} is not a valid interface name"))
    } else if name
        .bytes()
        .any(|b| b == b'/' || b == b':' || b.is_ascii_whitespace() || b == 0)
    {
        Some(format!(
            "{name:?} contains '/', ':', NUL or whitespace, which interface names cannot"
        ))
    } else {
        None
    };
    match reason {
        Some(r) => Err(CniError::env("CNI_IFNAME", r)),
        None => Ok(()),
    }
}

/// `K=V;K=V`. Malformed pairs, a CNI_ARGS over [`limits::ARGS`] bytes and a K8S_POD_* value
/// over [`limits::POD_ARG`] bytes are errors naming CNI_ARGS (and the key).
pub fn parse_args(raw: &str) -> Result<PodArgs, CniError> {
    if raw.len() > limits::ARGS {
        return Err(CniError::env(
            "CNI_ARGS",
            format!(
                "is {} bytes, longer than the limit of {}",
                raw.len(),
                limits::ARGS
            ),
        ));
    }
    let mut args = PodArgs::default();
    for pair in raw.split(';').filter(|p| !p.is_empty()) {
        let Some((k, v)) = pair.split_once('=') else {
            return Err(CniError::env(
                "CNI_ARGS",
                format!("{pair:?} is not KEY=VALUE"),
            ));
        };
        let v = Some(v.to_string()).filter(|v| !v.is_empty());
        if k.starts_with("K8S_POD_") && v.as_ref().is_some_and(|v| v.len() > limits::POD_ARG) {
            return Err(CniError::env(
                "CNI_ARGS",
                format!(
                    "{k} is {} bytes, longer than the limit of {}",
                    v.as_ref().map_or(0, String::len),
                    limits::POD_ARG
                ),
            ));
        }
        match k {
            "K8S_POD_NAMESPACE" => args.namespace = v,
            "K8S_POD_NAME" => args.name = v,
            "K8S_POD_UID" => args.uid = v,
            _ => {}
        }
    }
    Ok(args)
}

/// The container environment of ADD, DEL and CHECK. `netns_required` is false for DEL.
pub fn container(
    get: &dyn Fn(&str) -> Option<String>,
    netns_required: bool,
) -> Result<ContainerEnv, CniError> {
    let container_id =
        var(get, "CNI_CONTAINERID").ok_or_else(|| CniError::env("CNI_CONTAINERID", "not set"))?;
    validate_container_id(&container_id)?;
    let ifname = var(get, "CNI_IFNAME").ok_or_else(|| CniError::env("CNI_IFNAME", "not set"))?;
    validate_ifname(&ifname)?;
    let netns = var(get, "CNI_NETNS").map(PathBuf::from);
    if netns_required && netns.is_none() {
        return Err(CniError::env("CNI_NETNS", "not set"));
    }
    let args = parse_args(&var(get, "CNI_ARGS").unwrap_or_default())?;
    Ok(ContainerEnv {
        container_id,
        ifname,
        netns,
        args,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| m.get(k).cloned()
    }

    #[test]
    fn container_ids() {
        for ok in ["a", "abc-1.2_3", "0123456789abcdef", "a..b"] {
            assert!(validate_container_id(ok).is_ok(), "{ok}");
        }
        let long = "a".repeat(limits::CONTAINER_ID + 1);
        assert!(validate_container_id(&long[1..]).is_ok());
        for bad in ["", "..", ".", "-a", "a/b", "../x", "a b", "a;b", &long] {
            let e = validate_container_id(bad).expect_err(bad);
            assert_eq!(e.code(), 4);
            assert!(e.to_string().contains("CNI_CONTAINERID"));
        }
    }

    #[test]
    fn ifnames() {
        assert!(validate_ifname("eth0").is_ok());
        assert!(validate_ifname("fifteen_chars_x").is_ok());
        for bad in ["", "sixteen_chars_xx", "a/b", ".", "..", "a:b", "a b"] {
            let e = validate_ifname(bad).expect_err(bad);
            assert_eq!(e.code(), 4);
            assert!(e.to_string().contains("CNI_IFNAME"), "{e}");
        }
    }

    #[test]
    fn args_and_container_env() {
        let get = env(&[
            ("CNI_CONTAINERID", "c1"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_NETNS", "/var/run/netns/x"),
            (
                "CNI_ARGS",
                "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web;K8S_POD_UID=u-1",
            ),
        ]);
        let c = container(&get, true).expect("valid env");
        assert_eq!(c.args.namespace.as_deref(), Some("default"));
        assert_eq!(c.args.name.as_deref(), Some("web"));
        assert_eq!(c.args.uid.as_deref(), Some("u-1"));
        let del = env(&[
            ("CNI_CONTAINERID", "c1"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_NETNS", ""),
        ]);
        assert!(container(&del, false)
            .expect("DEL without netns")
            .netns
            .is_none());
        let e = container(&del, true).expect_err("ADD needs netns");
        assert!(e.to_string().contains("CNI_NETNS"));
        assert!(parse_args("novalue").is_err());
        let name = "n".repeat(limits::POD_ARG + 1);
        for bad in [
            format!("K8S_POD_NAME={name}"),
            format!("X={}", "x".repeat(limits::ARGS)),
        ] {
            let e = parse_args(&bad).expect_err("over a bound");
            assert_eq!(e.code(), 4);
            assert!(e.to_string().contains("CNI_ARGS"), "{e}");
        }
        assert!(parse_args(&format!("K8S_POD_NAME={}", &name[1..])).is_ok());
        assert_eq!(
            command(&env(&[("CNI_COMMAND", "GC")])).ok(),
            Some(Command::Gc)
        );
        assert!(command(&env(&[])).is_err());
    }
}
