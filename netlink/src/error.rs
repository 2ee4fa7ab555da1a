//! The one error type of this crate.

use std::path::PathBuf;

/// Errors returned by every function of this crate.
///
/// When the kernel rejected a request the errno is kept ([`NetlinkError::Kernel`]), so
/// callers can branch on it with [`NetlinkError::errno`], [`NetlinkError::is_exists`] and
/// [`NetlinkError::is_not_found`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NetlinkError {
    /// The kernel answered a netlink request with a negative errno.
    #[error("{op}: {}", std::io::Error::from_raw_os_error(*.errno))]
    Kernel {
        /// The request that failed, e.g. `"RTM_NEWLINK"`.
        op: &'static str,
        /// Positive errno (e.g. `libc::EEXIST`).
        errno: i32,
    },
    /// Opening the netlink socket failed.
    #[error("netlink socket: {0}")]
    Socket(std::io::Error),
    /// The netlink connection task is gone (socket closed) or the request could not be sent.
    #[error("{op}: netlink request could not be sent (connection closed)")]
    RequestFailed {
        /// The request that failed.
        op: &'static str,
    },
    /// The kernel answered with a message this crate did not expect.
    #[error("{op}: unexpected netlink reply: {detail}")]
    UnexpectedReply {
        /// The request that was answered.
        op: &'static str,
        /// Short description of the reply.
        detail: String,
    },
    /// A /proc write or read, or an operation on a namespace file descriptor, failed.
    #[error("io: {0}")]
    Io(std::io::Error),
    /// The path exists but is not a network namespace file.
    #[error("{} is not a network namespace", .0.display())]
    NotNetns(PathBuf),
    /// An argument was rejected before anything was sent to the kernel.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// nf_tables rejected a transaction: `object` is the first object it refused (e.g.
    /// `set inet vpcnet-policy egress_x_ports`); nothing of the transaction was applied.
    #[error("nf_tables rejected {object}: {}{}", std::io::Error::from_raw_os_error(*.errno), .message.as_deref().map(|m| format!(" ({m})")).unwrap_or_default())]
    Nftables {
        /// The object the rejected message was about.
        object: String,
        /// Positive errno.
        errno: i32,
        /// The kernel's extended-ACK message, if it sent one.
        message: Option<String>,
    },
    /// The dedicated namespace thread of [`crate::netns::run_in`] panicked.
    #[error("namespace worker thread panicked")]
    ThreadPanicked,
}

impl NetlinkError {
    /// The errno behind this error, if there is one (kernel NACK or OS error).
    pub fn errno(&self) -> Option<i32> {
        match self {
            Self::Kernel { errno, .. } | Self::Nftables { errno, .. } => Some(*errno),
            Self::Socket(e) | Self::Io(e) => e.raw_os_error(),
            _ => None,
        }
    }

    /// True when the object already exists (EEXIST).
    pub fn is_exists(&self) -> bool {
        self.errno() == Some(libc::EEXIST)
    }

    /// True when the object (or the device it hangs off) does not exist:
    /// ENODEV, ENOENT, ESRCH or EADDRNOTAVAIL.
    pub fn is_not_found(&self) -> bool {
        matches!(
            self.errno(),
            Some(libc::ENODEV | libc::ENOENT | libc::ESRCH | libc::EADDRNOTAVAIL)
        )
    }

    pub(crate) fn kernel(op: &'static str, raw_code: i32) -> Self {
        Self::Kernel {
            op,
            errno: raw_code.saturating_abs(),
        }
    }
}

impl From<rtnetlink::Error> for NetlinkError {
    fn from(e: rtnetlink::Error) -> Self {
        match e {
            rtnetlink::Error::NetlinkError(msg) => Self::kernel("rtnetlink", msg.raw_code()),
            rtnetlink::Error::RequestFailed => Self::RequestFailed { op: "rtnetlink" },
            other => Self::UnexpectedReply {
                op: "rtnetlink",
                detail: other.to_string(),
            },
        }
    }
}
