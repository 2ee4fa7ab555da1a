//! The environment: which commands the front forwards, and variable lookup.

/// `CNI_COMMAND` values the agent may run in-process; anything else (absent, empty,
/// `VERSION`, unknown) goes straight to the standalone plugin.
pub const FORWARDED: [&[u8]; 5] = [b"ADD", b"DEL", b"CHECK", b"GC", b"STATUS"];

/// Whether the front forwards this `CNI_COMMAND`.
#[must_use]
pub fn forwarded(command: Option<&[u8]>) -> bool {
    command.is_some_and(|c| FORWARDED.contains(&c))
}

/// The value of `entry` (`KEY=VALUE`, without its NUL) if its key is `key`.
#[must_use]
pub fn value<'a>(entry: &'a [u8], key: &[u8]) -> Option<&'a [u8]> {
    let rest = entry.strip_prefix(key)?;
    rest.strip_prefix(b"=")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands() {
        for c in ["ADD", "DEL", "CHECK", "GC", "STATUS"] {
            assert!(forwarded(Some(c.as_bytes())), "{c}");
        }
        for c in ["", "VERSION", "add", "ADD ", "ADDX", "GCX"] {
            assert!(!forwarded(Some(c.as_bytes())), "{c}");
        }
        assert!(!forwarded(None));
    }

    #[test]
    fn values() {
        assert_eq!(value(b"CNI_COMMAND=ADD", b"CNI_COMMAND"), Some(&b"ADD"[..]));
        assert_eq!(value(b"CNI_COMMAND=", b"CNI_COMMAND"), Some(&b""[..]));
        assert_eq!(value(b"CNI_COMMAND=a=b", b"CNI_COMMAND"), Some(&b"a=b"[..]));
        assert_eq!(value(b"CNI_COMMANDX=ADD", b"CNI_COMMAND"), None);
        assert_eq!(value(b"CNI_COMMAND", b"CNI_COMMAND"), None);
        assert_eq!(value(b"CNI_COMMAN=D", b"CNI_COMMAND"), None);
    }
}
