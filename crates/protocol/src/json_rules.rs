//! The one rule for JSON that clients hand the mesh to store or relay (`data` of `publish`
//! and `send`, `value` of `state_set`): strict RFC 8259 JSON in the I-JSON subset
//! (RFC 7493) that every standard parser reads the same way, nested at most [`MAX_DEPTH`]
//! levels. Size is bounded by the frame limit (`limits.max_frame_bytes`, 64 KiB by default).
//!
//! Why each part:
//! - *Strict grammar* (no `NaN`, `Infinity`, comments, trailing commas, control characters in
//!   strings): a node forwards `data` byte for byte, so whatever it accepts reaches browsers'
//!   `JSON.parse`, Python's `json` and every other region.
//! - *No lone surrogates* (`"\ud800"`): they decode to no Unicode scalar; strict decoders
//!   (serde_json, Go, Java's strict mode) refuse the whole frame.
//! - *Finite numbers* (`1e999` is refused): they overflow an IEEE double, so `JSON.parse`
//!   gives `Infinity` and re-encoding gives `null`.
//! - *Depth ≤ 32*: serde_json (the node, the relay) refuses to parse JSON nested deeper than
//!   128 levels, and recursive decoders elsewhere overflow their stacks; 32 is far more than a
//!   signaling payload needs.
//!
//! The validator is a single pass without recursion (its stack is the depth bound), so it is
//! safe on any input; `fuzz/` drives it directly.

use std::fmt;

/// Deepest nesting of arrays and objects a client value may have (`[]` and `{}` are 1 level,
/// a scalar 0).
pub const MAX_DEPTH: usize = 32;

/// Why a text breaks the rule. `at` is a byte offset into the checked text.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum JsonRuleError {
    /// Not JSON by RFC 8259's grammar (includes `NaN`, `Infinity`, trailing garbage).
    Syntax {
        /// Byte offset of the first offending byte.
        at: usize,
    },
    /// A number too large for an IEEE double (`1e999`).
    NotFinite {
        /// Byte offset of the number.
        at: usize,
    },
    /// A `\u` escape of a UTF-16 surrogate without its pair.
    LoneSurrogate {
        /// Byte offset of the escape.
        at: usize,
    },
    /// Arrays and objects nested deeper than the limit.
    TooDeep {
        /// The limit.
        max: usize,
    },
}

impl fmt::Display for JsonRuleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Syntax { at } => write!(
                f,
                "not RFC 8259 JSON at byte {at} (NaN, Infinity, comments and trailing commas are not JSON)"
            ),
            Self::NotFinite { at } => write!(
                f,
                "number at byte {at} does not fit an IEEE double (numbers must be finite)"
            ),
            Self::LoneSurrogate { at } => write!(
                f,
                "unpaired UTF-16 surrogate escape at byte {at} (strings must be valid Unicode)"
            ),
            Self::TooDeep { max } => {
                write!(f, "nested deeper than {max} levels of arrays and objects")
            }
        }
    }
}

impl std::error::Error for JsonRuleError {}

/// Checks one JSON text (a whole value, surrounding whitespace allowed) against the rule with
/// the depth limit [`MAX_DEPTH`].
pub fn check(text: &str) -> Result<(), JsonRuleError> {
    check_with_depth(text, MAX_DEPTH)
}

/// [`check`] with another depth limit (a request frame is one level deeper than its `data`).
pub fn check_with_depth(text: &str, max_depth: usize) -> Result<(), JsonRuleError> {
    Checker {
        b: text.as_bytes(),
        i: 0,
    }
    .run(max_depth)
}

/// Bytes a string may hold as they are: all but `"`, `\\` and control characters.
const PLAIN: [bool; 256] = {
    let mut t = [true; 256];
    let mut c = 0;
    while c < 0x20 {
        t[c] = false;
        c += 1;
    }
    t[b'"' as usize] = false;
    t[b'\\' as usize] = false;
    t
};

#[derive(Clone, Copy, PartialEq, Eq)]
enum Container {
    Array,
    Object,
}

struct Checker<'a> {
    b: &'a [u8],
    i: usize,
}

impl Checker<'_> {
    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    fn ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.i += 1;
        }
    }

    fn syntax(&self) -> JsonRuleError {
        JsonRuleError::Syntax { at: self.i }
    }

    fn expect(&mut self, c: u8) -> Result<(), JsonRuleError> {
        if self.peek() == Some(c) {
            self.i += 1;
            Ok(())
        } else {
            Err(self.syntax())
        }
    }

    fn run(mut self, max_depth: usize) -> Result<(), JsonRuleError> {
        let mut stack: Vec<Container> = Vec::new();
        self.ws();
        // Each turn reads one value; containers push and the loop reads their first member.
        'value: loop {
            self.ws();
            match self.peek() {
                Some(b'{') | Some(b'[') => {
                    let kind = if self.peek() == Some(b'{') {
                        Container::Object
                    } else {
                        Container::Array
                    };
                    if stack.len() >= max_depth {
                        return Err(JsonRuleError::TooDeep { max: max_depth });
                    }
                    self.i += 1;
                    self.ws();
                    let close = if kind == Container::Object {
                        b'}'
                    } else {
                        b']'
                    };
                    if self.peek() == Some(close) {
                        // Empty container: a complete value; fall through to "after value".
                        self.i += 1;
                    } else {
                        stack.push(kind);
                        if kind == Container::Object {
                            self.key()?;
                        }
                        continue 'value;
                    }
                }
                Some(b'"') => self.string()?,
                Some(b'-' | b'0'..=b'9') => self.number()?,
                Some(b't') => self.literal(b"true")?,
                Some(b'f') => self.literal(b"false")?,
                Some(b'n') => self.literal(b"null")?,
                _ => return Err(self.syntax()),
            }
            // After a complete value: close containers or go on to the next member.
            loop {
                self.ws();
                let Some(&top) = stack.last() else {
                    return if self.i == self.b.len() {
                        Ok(())
                    } else {
                        Err(self.syntax())
                    };
                };
                match (self.peek(), top) {
                    (Some(b','), Container::Array) => {
                        self.i += 1;
                        continue 'value;
                    }
                    (Some(b','), Container::Object) => {
                        self.i += 1;
                        self.ws();
                        self.key()?;
                        continue 'value;
                    }
                    (Some(b']'), Container::Array) | (Some(b'}'), Container::Object) => {
                        self.i += 1;
                        stack.pop();
                    }
                    _ => return Err(self.syntax()),
                }
            }
        }
    }

    /// An object member's name and its colon.
    fn key(&mut self) -> Result<(), JsonRuleError> {
        if self.peek() != Some(b'"') {
            return Err(self.syntax());
        }
        self.string()?;
        self.ws();
        self.expect(b':')
    }

    fn literal(&mut self, word: &[u8]) -> Result<(), JsonRuleError> {
        if self.b[self.i..].starts_with(word) {
            self.i += word.len();
            Ok(())
        } else {
            Err(self.syntax())
        }
    }

    fn hex4(&mut self) -> Result<u16, JsonRuleError> {
        let digits = self
            .b
            .get(self.i..self.i + 4)
            .ok_or_else(|| self.syntax())?;
        let mut v: u16 = 0;
        for &d in digits {
            let n = match d {
                b'0'..=b'9' => d - b'0',
                b'a'..=b'f' => d - b'a' + 10,
                b'A'..=b'F' => d - b'A' + 10,
                _ => return Err(self.syntax()),
            };
            v = (v << 4) | u16::from(n);
        }
        self.i += 4;
        Ok(v)
    }

    fn string(&mut self) -> Result<(), JsonRuleError> {
        self.expect(b'"')?;
        loop {
            // Skip plain bytes in one tight loop: only a quote, a backslash or a control
            // character needs a look (any other byte is part of the &str's valid UTF-8).
            let rest = &self.b[self.i..];
            let plain = rest.iter().take_while(|&&c| PLAIN[usize::from(c)]).count();
            self.i += plain;
            let Some(c) = self.peek() else {
                return Err(self.syntax());
            };
            match c {
                b'"' => {
                    self.i += 1;
                    return Ok(());
                }
                0x00..=0x1f => return Err(self.syntax()),
                b'\\' => {
                    let at = self.i;
                    self.i += 1;
                    match self.peek() {
                        Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => self.i += 1,
                        Some(b'u') => {
                            self.i += 1;
                            let unit = self.hex4()?;
                            match unit {
                                0xD800..=0xDBFF => {
                                    // A high surrogate must be followed by `\u` + a low one.
                                    if self.b.get(self.i..self.i + 2) != Some(b"\\u") {
                                        return Err(JsonRuleError::LoneSurrogate { at });
                                    }
                                    self.i += 2;
                                    let low = self.hex4()?;
                                    if !(0xDC00..=0xDFFF).contains(&low) {
                                        return Err(JsonRuleError::LoneSurrogate { at });
                                    }
                                }
                                0xDC00..=0xDFFF => return Err(JsonRuleError::LoneSurrogate { at }),
                                _ => {}
                            }
                        }
                        _ => return Err(self.syntax()),
                    }
                }
                // The input is a &str: any other byte is part of valid UTF-8.
                _ => self.i += 1,
            }
        }
    }

    fn digits(&mut self) -> usize {
        let start = self.i;
        while matches!(self.peek(), Some(b'0'..=b'9')) {
            self.i += 1;
        }
        self.i - start
    }

    fn number(&mut self) -> Result<(), JsonRuleError> {
        let start = self.i;
        if self.peek() == Some(b'-') {
            self.i += 1;
        }
        match self.peek() {
            Some(b'0') => self.i += 1,
            Some(b'1'..=b'9') => {
                self.digits();
            }
            _ => return Err(self.syntax()),
        }
        if self.peek() == Some(b'.') {
            self.i += 1;
            if self.digits() == 0 {
                return Err(self.syntax());
            }
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            self.i += 1;
            if matches!(self.peek(), Some(b'+' | b'-')) {
                self.i += 1;
            }
            if self.digits() == 0 {
                return Err(self.syntax());
            }
        }
        // The slice is ASCII digits and signs, so it is valid UTF-8 and Rust's float grammar.
        let finite = std::str::from_utf8(&self.b[start..self.i])
            .ok()
            .and_then(|s| s.parse::<f64>().ok())
            .is_some_and(f64::is_finite);
        if finite {
            Ok(())
        } else {
            Err(JsonRuleError::NotFinite { at: start })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nested(depth: usize) -> String {
        format!("{}{}", "[".repeat(depth), "]".repeat(depth))
    }

    #[test]
    fn accepts_rfc8259_values() {
        for ok in [
            "0",
            "-0.5e+10",
            "1E-3",
            " true ",
            "null",
            "\"\"",
            r#""a\"\\\/\b\f\n\r\t\u00e9\ud83d\ude00 é""#,
            "[]",
            "{}",
            r#"{"a":[1,{"b":null}],"c":"d"}"#,
            "[ 1 , 2 ]\n",
            "123456789012345678901234567890",
            "1.7976931348623157e308",
        ] {
            assert_eq!(check(ok), Ok(()), "{ok}");
            // serde_json agrees that it is JSON.
            assert!(
                serde_json::from_str::<serde_json::Value>(ok).is_ok(),
                "{ok}"
            );
        }
        assert_eq!(check(&nested(MAX_DEPTH)), Ok(()));
    }

    #[test]
    fn refuses_what_parsers_disagree_on() {
        for bad in [
            "NaN",
            "Infinity",
            "-Infinity",
            "[1,]",
            "{\"a\":1,}",
            "01",
            "1.",
            ".5",
            "+1",
            "[1] 2",
            "",
            " ",
            "\"\u{1}\"",
            "'a'",
            "{a:1}",
            "[1 2]",
            "{\"a\" 1}",
            "\"\\x\"",
            "\"\\u12\"",
            "tru",
            "nul",
            "/* */1",
            "[",
            "{\"a\":",
            "\"abc",
        ] {
            assert!(
                matches!(check(bad), Err(JsonRuleError::Syntax { .. })),
                "{bad:?}: {:?}",
                check(bad)
            );
        }
        assert_eq!(check("1e999"), Err(JsonRuleError::NotFinite { at: 0 }));
        assert_eq!(check("[-1e400]"), Err(JsonRuleError::NotFinite { at: 1 }));
        for lone in [
            r#""\ud800""#,
            r#""\udc00""#,
            r#""\ud800\u0041""#,
            r#""\ud800x""#,
            r#"{"k":"\uDBFF"}"#,
        ] {
            assert!(
                matches!(check(lone), Err(JsonRuleError::LoneSurrogate { .. })),
                "{lone}"
            );
        }
        assert_eq!(
            check(&nested(MAX_DEPTH + 1)),
            Err(JsonRuleError::TooDeep { max: MAX_DEPTH })
        );
        // The 129-deep value of the finding, and far deeper: no recursion, no stack overflow.
        assert!(check(&nested(129)).is_err());
        assert!(check(&"[".repeat(1_000_000)).is_err());
        let deep_obj = format!("{}1{}", "{\"a\":".repeat(40), "}".repeat(40));
        assert_eq!(
            check(&deep_obj),
            Err(JsonRuleError::TooDeep { max: MAX_DEPTH })
        );
    }

    #[test]
    fn messages_name_the_rule() {
        assert!(check("NaN").unwrap_err().to_string().contains("NaN"));
        assert!(check("1e999").unwrap_err().to_string().contains("finite"));
        assert!(check(r#""\ud800""#)
            .unwrap_err()
            .to_string()
            .contains("surrogate"));
        assert!(check(&nested(33))
            .unwrap_err()
            .to_string()
            .contains("deeper than 32"));
    }
}
