//! Every bound on the plugin's input, in one place (issue 9 item 10).
//!
//! Invariant: the plugin never holds more input than these bounds, and a value over its
//! bound is refused before anything is changed, with a permanent CNI code (4 for a CNI_*
//! variable, 7 for the netconf) and a message naming the field and its bound — never code
//! 11, which a runtime retries forever, and never a failure further down (a request the
//! agent cuts off, a socket path the kernel refuses) that names something else.

/// The netconf on stdin. Real ones are a few KiB (a chained prevResult, a GC's
/// valid-attachments list for a full node: 250 pods × ~100 bytes); 1 MiB is far above.
pub const STDIN: usize = 1 << 20;

/// Netconf `name`: a DNS subdomain's length (it is a Kubernetes object name in practice).
pub const NAME: usize = 253;

/// Netconf `socket`: `sun_path` holds 108 bytes including the terminating NUL.
pub const SOCKET_PATH: usize = 107;

/// Netconf `logFile`: PATH_MAX without the NUL.
pub const LOG_FILE: usize = 4095;

/// CNI_CONTAINERID: runtimes use 64 hex digits; 256 leaves room for any other scheme.
pub const CONTAINER_ID: usize = 256;

/// CNI_ARGS as a whole (kubelet's is ~250 bytes: namespace, name, uid, sandbox ID).
pub const ARGS: usize = 4096;

/// One K8S_POD_* value of CNI_ARGS: a pod name or namespace is at most 253 bytes.
pub const POD_ARG: usize = 253;

/// "1 MiB" for [`STDIN`] in messages.
pub fn human(bytes: usize) -> String {
    if bytes >= 1 << 20 && bytes % (1 << 20) == 0 {
        format!("{} MiB", bytes >> 20)
    } else {
        format!("{bytes} bytes")
    }
}
