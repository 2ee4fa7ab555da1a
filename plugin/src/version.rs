//! CNI spec versions: which we speak, and how results differ between them.

use crate::error::CniError;

/// Newest first is not required; the VERSION output lists them oldest first like libcni.
pub const SUPPORTED: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];
pub const CURRENT: &str = "1.1.0";

/// Result shape families.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Spec {
    /// 0.3.0, 0.3.1, 0.4.0: `ips[].version` present.
    V03,
    /// 1.0.0: no `ips[].version`.
    V10,
    /// 1.1.0: interfaces may carry `mtu`; GC and STATUS exist.
    V11,
}

pub fn parse(v: &str) -> Result<Spec, CniError> {
    match v {
        "0.3.0" | "0.3.1" | "0.4.0" => Ok(Spec::V03),
        "1.0.0" => Ok(Spec::V10),
        "1.1.0" => Ok(Spec::V11),
        other => Err(CniError::IncompatibleVersion {
            requested: other.to_string(),
            supported: SUPPORTED.join(", "),
        }),
    }
}

/// `{"cniVersion":"1.1.0","supportedVersions":[…]}`
pub fn version_output() -> serde_json::Value {
    serde_json::json!({ "cniVersion": CURRENT, "supportedVersions": SUPPORTED })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions() {
        for v in SUPPORTED {
            assert!(parse(v).is_ok());
        }
        let e = parse("0.2.0").expect_err("too old");
        assert_eq!(e.code(), 1);
        assert!(parse("9.9.9").is_err());
        assert!(Spec::V03 < Spec::V11);
    }
}
