//! One error type for the whole plugin; every variant knows its CNI error code.

use std::fmt;

use vpcnet_proto::codes::CniCode;

/// A failure the plugin reports to the runtime as a CNI error result.
#[derive(Debug, thiserror::Error)]
pub enum CniError {
    /// Requested cniVersion not supported (CNI code 1).
    #[error("incompatible CNI version {requested:?}: cniVersion must be one of {supported}")]
    IncompatibleVersion {
        requested: String,
        supported: String,
    },
    /// A netconf field we do not support (CNI code 2).
    #[error("unsupported field {field}: {reason}")]
    UnsupportedField { field: &'static str, reason: String },
    /// The agent has no allocation for this container (CNI code 3).
    #[error("unknown container: {0}")]
    UnknownContainer(String),
    /// Missing or malformed CNI_* environment variable (CNI code 4). The message names it.
    #[error("invalid environment variable {var}: {reason}")]
    InvalidEnv { var: &'static str, reason: String },
    /// I/O failure (CNI code 5).
    #[error("I/O error: {0}")]
    Io(String),
    /// stdin is not decodable JSON of the expected shape (CNI code 6).
    #[error("failed to decode network configuration on stdin: {0}")]
    Decode(String),
    /// Config decodes but a field is invalid (CNI code 7). The message names the field.
    #[error("invalid network configuration field {field}: {reason}")]
    InvalidConfig { field: &'static str, reason: String },
    /// The netconf on stdin is over [`crate::limits::STDIN`] (CNI code 7): refused after
    /// reading just past the bound, never read whole.
    #[error("invalid network configuration: stdin is larger than the {} limit ({limit} bytes)", crate::limits::human(*.limit))]
    StdinTooLarge { limit: usize },
    /// Transient: the agent is unreachable, the pool is empty and cannot grow, max-pods… (CNI code 11).
    #[error("try again later: {0}")]
    TryAgainLater(String),
    /// STATUS: the plugin cannot set up new pods now (CNI code 50).
    #[error("plugin not available: {0}")]
    NotAvailable(String),
    /// Setting up or tearing down the data plane failed (vpcnet code 100).
    #[error("data plane: {0}")]
    Dataplane(String),
    /// CHECK found the attachment not as the result says (vpcnet code 110). Names the missing piece.
    #[error("check failed: {0}")]
    CheckFailed(String),
    /// An error the agent returned, with its own code.
    #[error("vpcnetd: {msg}")]
    Agent { code: u32, msg: String },
}

impl CniError {
    pub fn code(&self) -> u32 {
        let code = match self {
            CniError::IncompatibleVersion { .. } => CniCode::IncompatibleVersion,
            CniError::UnsupportedField { .. } => CniCode::UnsupportedField,
            CniError::UnknownContainer(_) => CniCode::UnknownContainer,
            CniError::InvalidEnv { .. } => CniCode::InvalidEnv,
            CniError::Io(_) => CniCode::Io,
            CniError::Decode(_) => CniCode::Decode,
            CniError::InvalidConfig { .. } | CniError::StdinTooLarge { .. } => {
                CniCode::InvalidConfig
            }
            CniError::TryAgainLater(_) => CniCode::TryAgainLater,
            CniError::NotAvailable(_) => CniCode::NotAvailable,
            CniError::Dataplane(_) => CniCode::Dataplane,
            CniError::CheckFailed(_) => CniCode::CheckFailed,
            // The agent's own code, passed on as it sent it.
            CniError::Agent { code, .. } => return *code,
        };
        code.as_u32()
    }

    pub fn env(var: &'static str, reason: impl fmt::Display) -> Self {
        CniError::InvalidEnv {
            var,
            reason: reason.to_string(),
        }
    }

    pub fn config(field: &'static str, reason: impl fmt::Display) -> Self {
        CniError::InvalidConfig {
            field,
            reason: reason.to_string(),
        }
    }

    pub fn dataplane(what: &str, err: impl fmt::Display) -> Self {
        CniError::Dataplane(format!("{what}: {err}"))
    }
}
