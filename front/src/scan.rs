//! Finds the netconf's top-level `"socket"` without parsing it into values.
//!
//! The front must connect where the full plugin would: the plugin decodes the netconf with
//! `serde_json` into a struct whose `socket` is `null`/absent (the default socket) or a string
//! that must be an absolute path. This scanner walks the whole document (RFC 8259 grammar:
//! whitespace, strings with their escapes, numbers, `true`/`false`/`null`, objects and arrays
//! skipped by depth) and answers [`Socket::Path`] or [`Socket::Default`] only when it is sure
//! the plugin would read the same; in every other case it answers [`Socket::Defer`] and the
//! front execs the standalone plugin, which gives the proper error or handles the rare form:
//!
//! * the document is malformed, is not an object, or nests deeper than [`MAX_DEPTH`];
//! * `socket` appears twice at the top level (`serde`'s derive rejects duplicate fields);
//! * the `socket` string has a backslash escape, is empty or is not absolute, or `socket` is
//!   neither a string nor `null`;
//! * a top-level key has an escape (it might decode to `socket`).
//!
//! Only top-level keys count: a `socket` inside a nested object is skipped like any value.
//! The scanner does not check UTF-8 (the plugin does, and answers the error itself).

/// The deepest nesting this scanner follows (`serde_json`'s own recursion limit is 128).
pub const MAX_DEPTH: u32 = 128;

/// What the netconf says about the agent's socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Socket<'a> {
    /// No top-level `socket`, or `null`: the default socket.
    Default,
    /// The path, exactly the bytes between the quotes (no escapes, starts with `/`).
    Path(&'a [u8]),
    /// Let the standalone plugin decide.
    Defer(Why),
}

/// Why the scanner defers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Why {
    Malformed,
    TooDeep,
    Duplicate,
    /// `socket` is not a plain absolute-path string (escaped, empty, relative, not a string).
    Unplain,
    /// A top-level key has an escape.
    EscapedKey,
}

/// Scans `doc` (the netconf as read from stdin).
#[must_use]
pub fn socket(doc: &[u8]) -> Socket<'_> {
    match (Scanner { b: doc, i: 0 }).top() {
        Ok(found) => found,
        Err(why) => Socket::Defer(why),
    }
}

struct Scanner<'a> {
    b: &'a [u8],
    i: usize,
}

/// A string's contents (between the quotes) and whether it had an escape.
struct Str<'a> {
    raw: &'a [u8],
    escaped: bool,
}

impl<'a> Scanner<'a> {
    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    fn ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.i += 1;
        }
    }

    /// Consumes `c` (after whitespace) or fails.
    fn expect(&mut self, c: u8) -> Result<(), Why> {
        self.ws();
        if self.peek() == Some(c) {
            self.i += 1;
            Ok(())
        } else {
            Err(Why::Malformed)
        }
    }

    /// The top-level object.
    fn top(&mut self) -> Result<Socket<'a>, Why> {
        let mut found: Option<Socket<'a>> = None;
        self.expect(b'{')?;
        self.ws();
        if self.peek() == Some(b'}') {
            self.i += 1;
        } else {
            loop {
                self.ws();
                let key = self.string()?;
                self.expect(b':')?;
                self.ws();
                if key.escaped {
                    return Err(Why::EscapedKey);
                }
                if key.raw == b"socket" {
                    if found.is_some() {
                        return Err(Why::Duplicate);
                    }
                    found = Some(self.socket_value()?);
                } else {
                    self.value()?;
                }
                self.ws();
                match self.peek() {
                    Some(b',') => self.i += 1,
                    Some(b'}') => {
                        self.i += 1;
                        break;
                    }
                    _ => return Err(Why::Malformed),
                }
            }
        }
        self.ws();
        if self.i != self.b.len() {
            return Err(Why::Malformed);
        }
        match found {
            None => Ok(Socket::Default),
            Some(Socket::Defer(why)) => Err(why),
            Some(s) => Ok(s),
        }
    }

    /// The value of the top-level `socket`. A well-formed but unusable value is returned as
    /// `Socket::Defer` so that the rest of the document is still checked.
    fn socket_value(&mut self) -> Result<Socket<'a>, Why> {
        match self.peek() {
            Some(b'"') => {
                let s = self.string()?;
                if s.escaped || s.raw.first() != Some(&b'/') {
                    Ok(Socket::Defer(Why::Unplain))
                } else {
                    Ok(Socket::Path(s.raw))
                }
            }
            Some(b'n') => {
                self.literal(b"null")?;
                Ok(Socket::Default)
            }
            _ => {
                self.value()?;
                Ok(Socket::Defer(Why::Unplain))
            }
        }
    }

    /// A string starting at the opening quote.
    fn string(&mut self) -> Result<Str<'a>, Why> {
        if self.peek() != Some(b'"') {
            return Err(Why::Malformed);
        }
        self.i += 1;
        let start = self.i;
        let mut escaped = false;
        loop {
            let c = self.peek().ok_or(Why::Malformed)?;
            self.i += 1;
            match c {
                b'"' => break,
                b'\\' => {
                    escaped = true;
                    match self.peek() {
                        Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => {
                            self.i += 1;
                        }
                        Some(b'u') => {
                            self.i += 1;
                            for _ in 0..4 {
                                match self.peek() {
                                    Some(h) if h.is_ascii_hexdigit() => self.i += 1,
                                    _ => return Err(Why::Malformed),
                                }
                            }
                        }
                        _ => return Err(Why::Malformed),
                    }
                }
                0..=0x1f => return Err(Why::Malformed),
                _ => {}
            }
        }
        let raw = self.b.get(start..self.i - 1).ok_or(Why::Malformed)?;
        Ok(Str { raw, escaped })
    }

    fn literal(&mut self, word: &[u8]) -> Result<(), Why> {
        let end = self.i + word.len();
        if self.b.get(self.i..end) == Some(word) {
            self.i = end;
            Ok(())
        } else {
            Err(Why::Malformed)
        }
    }

    fn digits(&mut self) -> usize {
        let start = self.i;
        while self.peek().is_some_and(|c| c.is_ascii_digit()) {
            self.i += 1;
        }
        self.i - start
    }

    /// `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`
    fn number(&mut self) -> Result<(), Why> {
        if self.peek() == Some(b'-') {
            self.i += 1;
        }
        match self.peek() {
            Some(b'0') => self.i += 1,
            Some(b'1'..=b'9') => {
                self.digits();
            }
            _ => return Err(Why::Malformed),
        }
        if self.peek() == Some(b'.') {
            self.i += 1;
            if self.digits() == 0 {
                return Err(Why::Malformed);
            }
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.i += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.i += 1;
            }
            if self.digits() == 0 {
                return Err(Why::Malformed);
            }
        }
        Ok(())
    }

    /// Skips one value of any kind, starting at its first byte. Containers are followed with
    /// a bit stack (1: object, 0: array) instead of recursion.
    fn value(&mut self) -> Result<(), Why> {
        let mut stack: u128 = 0;
        let mut depth: u32 = 0;
        loop {
            // A value starts here.
            self.ws();
            let mut opened = false;
            match self.peek() {
                Some(c @ (b'{' | b'[')) => {
                    self.i += 1;
                    self.ws();
                    let close = if c == b'{' { b'}' } else { b']' };
                    if self.peek() == Some(close) {
                        self.i += 1;
                    } else {
                        if depth == MAX_DEPTH {
                            return Err(Why::TooDeep);
                        }
                        stack = (stack << 1) | u128::from(c == b'{');
                        depth += 1;
                        if c == b'{' {
                            self.member_key()?;
                        }
                        opened = true;
                    }
                }
                Some(b'"') => {
                    self.string()?;
                }
                Some(b't') => self.literal(b"true")?,
                Some(b'f') => self.literal(b"false")?,
                Some(b'n') => self.literal(b"null")?,
                Some(b'-' | b'0'..=b'9') => self.number()?,
                _ => return Err(Why::Malformed),
            }
            if opened {
                continue;
            }
            // A value ended: close containers until one continues with a comma.
            loop {
                if depth == 0 {
                    return Ok(());
                }
                self.ws();
                let in_object = stack & 1 == 1;
                match self.peek() {
                    Some(b',') => {
                        self.i += 1;
                        if in_object {
                            self.member_key()?;
                        }
                        break;
                    }
                    Some(b'}') if in_object => {}
                    Some(b']') if !in_object => {}
                    _ => return Err(Why::Malformed),
                }
                self.i += 1;
                stack >>= 1;
                depth -= 1;
            }
        }
    }

    /// `"key" :` inside a nested object.
    fn member_key(&mut self) -> Result<(), Why> {
        self.ws();
        self.string()?;
        self.expect(b':')
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(s: &str) -> Socket<'_> {
        Socket::Path(s.as_bytes())
    }

    #[test]
    fn finds_the_top_level_socket() {
        assert_eq!(socket(br#"{"socket":"/a/b.sock"}"#), path("/a/b.sock"));
        assert_eq!(
            socket(
                br#" { "cniVersion" : "1.0.0", "name":"n", "type":"vpcnet",
                  "socket" :	"/run/x.sock" , "mtu": 9001 }
                "#
            ),
            path("/run/x.sock")
        );
        // Non-ASCII bytes are taken as they are.
        assert_eq!(socket("{\"socket\":\"/é\"}".as_bytes()), path("/é"));
    }

    #[test]
    fn absent_or_null_is_the_default() {
        assert_eq!(socket(b"{}"), Socket::Default);
        assert_eq!(socket(b" {\n} \n"), Socket::Default);
        assert_eq!(socket(br#"{"name":"n"}"#), Socket::Default);
        assert_eq!(socket(br#"{"socket":null}"#), Socket::Default);
        assert_eq!(socket(br#"{"Socket":"/x"}"#), Socket::Default);
        assert_eq!(socket(br#"{"sockets":"/x","socke":"/y"}"#), Socket::Default);
    }

    #[test]
    fn nested_socket_keys_do_not_count() {
        let doc = br#"{"prevResult":{"socket":"/no","a":[{"socket":"/no"}]},"x":["socket",":"]}"#;
        assert_eq!(socket(doc), Socket::Default);
        let doc = br#"{"a":{"b":{"socket":"/no"}},"socket":"/yes","c":[[],{},[{}]]}"#;
        assert_eq!(socket(doc), path("/yes"));
        // A string value "socket" is not a key.
        assert_eq!(socket(br#"{"name":"socket"}"#), Socket::Default);
    }

    #[test]
    fn strings_with_escapes_are_skipped_properly() {
        let doc = br#"{"a":"x\"socket\":\"/no","b":"\\","c":"\u0041\/\b\f\n\r\t","socket":"/y"}"#;
        assert_eq!(socket(doc), path("/y"));
        assert_eq!(socket(br#"{"a":"\\\"}","socket":"/y"}"#), path("/y"));
    }

    #[test]
    fn an_unplain_socket_defers() {
        let d = Socket::Defer(Why::Unplain);
        assert_eq!(socket(br#"{"socket":"/a\/b"}"#), d);
        assert_eq!(socket(br#"{"socket":"\u002fa"}"#), d);
        assert_eq!(socket(br#"{"socket":"relative.sock"}"#), d);
        assert_eq!(socket(br#"{"socket":""}"#), d);
        assert_eq!(socket(br#"{"socket":5}"#), d);
        assert_eq!(socket(br#"{"socket":["/x"]}"#), d);
        assert_eq!(socket(br#"{"socket":{"path":"/x"}}"#), d);
        assert_eq!(socket(br#"{"socket":false}"#), d);
        // Malformed after an unplain socket is still malformed.
        assert_eq!(socket(br#"{"socket":5,}"#), Socket::Defer(Why::Malformed));
    }

    #[test]
    fn escaped_top_level_keys_defer() {
        assert_eq!(
            socket(br#"{"soc\u006bet":"/x"}"#),
            Socket::Defer(Why::EscapedKey)
        );
        // Nested escaped keys are fine.
        assert_eq!(socket(br#"{"a":{"k\n":1},"socket":"/x"}"#), path("/x"));
    }

    #[test]
    fn duplicate_top_level_socket_defers() {
        let d = Socket::Defer(Why::Duplicate);
        assert_eq!(socket(br#"{"socket":"/a","socket":"/b"}"#), d);
        assert_eq!(socket(br#"{"socket":null,"socket":"/b"}"#), d);
        assert_eq!(socket(br#"{"socket":"/a","x":1,"socket":null}"#), d);
        // Duplicates of other keys are not the front's business.
        assert_eq!(socket(br#"{"a":1,"a":2,"socket":"/s"}"#), path("/s"));
    }

    #[test]
    fn numbers_and_literals() {
        for v in [
            "0",
            "-0",
            "12",
            "-12",
            "1.5",
            "0.25e3",
            "1E+2",
            "1e-2",
            "true",
            "false",
            "null",
            "[1,2.0,-3e4,true,null,\"s\",{}]",
        ] {
            let doc = format!(r#"{{"v":{v},"socket":"/s"}}"#);
            assert_eq!(socket(doc.as_bytes()), path("/s"), "{v}");
        }
        for v in [
            "01",
            "-",
            "1.",
            ".5",
            "1e",
            "1e+",
            "+1",
            "tru",
            "nul",
            "True",
            "NaN",
            "0x1",
            "1..2",
            "[1,]",
            "[,1]",
            "{\"a\"}",
            "{\"a\":}",
            "{\"a\":1,}",
            "{1:2}",
            "[1 2]",
            "{\"a\":1 \"b\":2}",
            "'s'",
            "\"\\x\"",
            "\"\\u12\"",
            "\"\\u12g4\"",
            "[",
            "{",
            "]",
            "}",
            "",
        ] {
            let doc = format!(r#"{{"v":{v},"socket":"/s"}}"#);
            assert_eq!(socket(doc.as_bytes()), Socket::Defer(Why::Malformed), "{v}");
        }
    }

    #[test]
    fn malformed_documents_defer() {
        let m = Socket::Defer(Why::Malformed);
        for doc in [
            &b""[..],
            b"   ",
            b"[]",
            b"\"socket\"",
            b"null",
            b"{",
            b"{\"socket\":\"/x\"",
            b"{\"socket\":\"/x\"}}",
            b"{\"socket\":\"/x\"} x",
            b"{\"socket\":\"/x\"}{}",
            b"{\"socket\" \"/x\"}",
            b"{\"socket\":\"/x\",}",
            b"{,}",
            b"{\"socket\":\"/x\nnewline\"}",
            b"{\"socket\":\"/x\x00\"}",
            b"{\"socket\":\"/x}",
            b"{\"a\":[1,{\"b\":2]}}",
            b"{\"a\":[1,{\"b\":2}}]",
            b"{\"a\":\"\\\"}",
            b"\xef\xbb\xbf{}",
            b"{\x0b}",
        ] {
            assert_eq!(socket(doc), m, "{}", String::from_utf8_lossy(doc));
        }
    }

    #[test]
    fn depth_is_bounded() {
        let ok = format!(
            r#"{{"a":{}1{},"socket":"/s"}}"#,
            "[".repeat(128),
            "]".repeat(128)
        );
        assert_eq!(socket(ok.as_bytes()), path("/s"));
        let deep = format!(r#"{{"a":{}1{}}}"#, "[".repeat(129), "]".repeat(129));
        assert_eq!(socket(deep.as_bytes()), Socket::Defer(Why::TooDeep));
        let mixed = format!(
            r#"{{"a":{}1{},"socket":"/s"}}"#,
            r#"{"k":["#.repeat(60),
            "]}".repeat(60)
        );
        assert_eq!(socket(mixed.as_bytes()), path("/s"));
    }
}
