//! The CNI error codes vpcnet speaks, in one place. The plugin reports them to the runtime;
//! the agent sends them in [`crate::api::Reply::Error`] so the plugin can pass them on. On the
//! wire (agent protocol and CNI error results) a code is its number.

use serde::{Deserialize, Serialize};

/// A CNI error code (1–99 are the spec's, 100+ are vpcnet's own).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(into = "u32", try_from = "u32")]
#[repr(u32)]
pub enum CniCode {
    /// Requested cniVersion not supported.
    IncompatibleVersion = 1,
    /// A netconf field the plugin does not support.
    UnsupportedField = 2,
    /// The container is unknown or does not exist.
    UnknownContainer = 3,
    /// Missing or malformed CNI_* environment variable.
    InvalidEnv = 4,
    /// I/O failure (e.g. the agent could not journal the change).
    Io = 5,
    /// Failed to decode the content (netconf, request).
    Decode = 6,
    /// Invalid network configuration / request.
    InvalidConfig = 7,
    /// Transient: agent unreachable, pool empty and cannot grow, max-pods, datastore down.
    TryAgainLater = 11,
    /// STATUS: the plugin cannot set up new pods now.
    NotAvailable = 50,
    /// vpcnet: setting up or tearing down the data plane failed.
    Dataplane = 100,
    /// vpcnet: the caller may not change the agent's state (not root).
    PermissionDenied = 101,
    /// vpcnet: the agent does not speak the request's protocol version.
    ProtocolVersion = 102,
    /// vpcnet: CHECK found the attachment not as the result says.
    CheckFailed = 110,
}

impl CniCode {
    pub const ALL: [CniCode; 13] = [
        CniCode::IncompatibleVersion,
        CniCode::UnsupportedField,
        CniCode::UnknownContainer,
        CniCode::InvalidEnv,
        CniCode::Io,
        CniCode::Decode,
        CniCode::InvalidConfig,
        CniCode::TryAgainLater,
        CniCode::NotAvailable,
        CniCode::Dataplane,
        CniCode::PermissionDenied,
        CniCode::ProtocolVersion,
        CniCode::CheckFailed,
    ];

    pub fn as_u32(self) -> u32 {
        self as u32
    }
}

impl From<CniCode> for u32 {
    fn from(c: CniCode) -> u32 {
        c.as_u32()
    }
}

/// A number that is not one of our codes (e.g. from a newer agent).
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown CNI error code {0}")]
pub struct UnknownCode(pub u32);

impl TryFrom<u32> for CniCode {
    type Error = UnknownCode;
    fn try_from(n: u32) -> Result<Self, UnknownCode> {
        CniCode::ALL
            .into_iter()
            .find(|c| c.as_u32() == n)
            .ok_or(UnknownCode(n))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_round_trip_and_are_the_specs() {
        for c in CniCode::ALL {
            assert_eq!(CniCode::try_from(c.as_u32()), Ok(c));
        }
        // The spec's well-known codes (CNI SPEC "Error" section).
        assert_eq!(CniCode::IncompatibleVersion.as_u32(), 1);
        assert_eq!(CniCode::InvalidEnv.as_u32(), 4);
        assert_eq!(CniCode::InvalidConfig.as_u32(), 7);
        assert_eq!(CniCode::TryAgainLater.as_u32(), 11);
        assert_eq!(CniCode::NotAvailable.as_u32(), 50);
        assert_eq!(CniCode::try_from(42), Err(UnknownCode(42)));
        assert_eq!(
            serde_json::to_string(&CniCode::TryAgainLater).ok(),
            Some("11".into())
        );
    }
}
