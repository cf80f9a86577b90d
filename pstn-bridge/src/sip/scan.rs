//! Character classes of RFC 3261 §25 and a small cursor the value parsers share.
//!
//! Header values reach the cursor already unfolded (every `CRLF 1*WSP` became one SP) and
//! trimmed, so linear white space inside a value is just a run of SP / HTAB.

/// `token` characters (RFC 3261 §25.1).
pub(crate) fn is_token(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-.!%*_+`'~".contains(&b)
}

/// `unreserved` = alphanum / mark.
pub(crate) fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-_.!~*'()".contains(&b)
}

/// `word` characters (Call-ID).
pub(crate) fn is_word(b: u8) -> bool {
    is_token(b) || b"()<>:\\\"/[]?{}".contains(&b)
}

/// SP or HTAB.
pub(crate) fn is_ws(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

/// True when `s` is a non-empty `token`.
pub(crate) fn is_token_str(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(is_token)
}

/// Parses `1*DIGIT` into a `u64`, `None` on an empty string, a non-digit or overflow.
pub(crate) fn parse_digits(s: &[u8]) -> Option<u64> {
    if s.is_empty() {
        return None;
    }
    let mut n: u64 = 0;
    for &b in s {
        if !b.is_ascii_digit() {
            return None;
        }
        n = n.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
    }
    Some(n)
}

/// A read position in a header value. All methods stop at byte boundaries of ASCII
/// delimiters, so slices taken between two positions are valid `str`s.
#[derive(Debug, Clone)]
pub(crate) struct Cursor<'a> {
    s: &'a str,
    pos: usize,
}

impl<'a> Cursor<'a> {
    pub(crate) fn new(s: &'a str) -> Self {
        Self { s, pos: 0 }
    }

    pub(crate) fn pos(&self) -> usize {
        self.pos
    }

    pub(crate) fn rest(&self) -> &'a str {
        self.s.get(self.pos..).unwrap_or("")
    }

    pub(crate) fn slice(&self, from: usize, to: usize) -> &'a str {
        self.s.get(from..to).unwrap_or("")
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.pos >= self.s.len()
    }

    pub(crate) fn peek(&self) -> Option<u8> {
        self.s.as_bytes().get(self.pos).copied()
    }

    /// Moves `n` bytes on (never past the end). Callers only skip ASCII delimiters and
    /// what they have just matched, so the position stays on a character boundary.
    pub(crate) fn advance(&mut self, n: usize) {
        self.pos = (self.pos + n).min(self.s.len());
    }

    /// Consumes `b` if it is next.
    pub(crate) fn eat(&mut self, b: u8) -> bool {
        if self.peek() == Some(b) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    pub(crate) fn skip_ws(&mut self) {
        while self.peek().is_some_and(is_ws) {
            self.pos += 1;
        }
    }

    /// `SWS b SWS`: consumes optional white space, `b` and optional white space, or
    /// nothing at all when `b` does not follow.
    pub(crate) fn sep(&mut self, b: u8) -> bool {
        let save = self.pos;
        self.skip_ws();
        if self.eat(b) {
            self.skip_ws();
            true
        } else {
            self.pos = save;
            false
        }
    }

    /// Consumes the longest run of ASCII bytes matching `f` (never splits a UTF-8
    /// sequence, since `f` only accepts ASCII in every caller).
    pub(crate) fn take_while(&mut self, f: impl Fn(u8) -> bool) -> &'a str {
        let start = self.pos;
        while self.peek().is_some_and(|b| b.is_ascii() && f(b)) {
            self.pos += 1;
        }
        self.slice(start, self.pos)
    }

    /// A non-empty token.
    pub(crate) fn token(&mut self) -> Option<&'a str> {
        let t = self.take_while(is_token);
        (!t.is_empty()).then_some(t)
    }

    /// A `quoted-string` including its quotes, or `None` (position unchanged) when there
    /// is none or it is unterminated or contains a control character outside a
    /// quoted-pair.
    pub(crate) fn quoted_string(&mut self) -> Option<&'a str> {
        let bytes = self.s.as_bytes();
        let start = self.pos;
        if bytes.get(start) != Some(&b'"') {
            return None;
        }
        let mut i = start + 1;
        while let Some(&b) = bytes.get(i) {
            match b {
                b'"' => {
                    self.pos = i + 1;
                    return self.s.get(start..self.pos);
                }
                b'\\' => match bytes.get(i + 1) {
                    // quoted-pair = "\" (%x00-09 / %x0B-0C / %x0E-7F)
                    Some(&n) if n <= 0x7f && n != b'\r' && n != b'\n' => i += 2,
                    _ => return None,
                },
                // qdtext excludes controls other than SP / HTAB; non-ASCII is UTF-8.
                b if b < 0x20 && b != b'\t' => return None,
                0x7f => return None,
                _ => i += 1,
            }
        }
        None
    }
}

/// Removes the quotes and quoted-pair backslashes of a `quoted-string` (as returned by
/// [`Cursor::quoted_string`]).
pub(crate) fn unquote(raw: &str) -> std::borrow::Cow<'_, str> {
    let inner = raw
        .strip_prefix('"')
        .and_then(|r| r.strip_suffix('"'))
        .unwrap_or(raw);
    if !inner.contains('\\') {
        return std::borrow::Cow::Borrowed(inner);
    }
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(n) = chars.next() {
                out.push(n);
            }
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}

/// Quotes `text` as a `quoted-string`, escaping `"` and `\`; CR and LF (which no
/// quoted-string may carry) become SP.
pub(crate) fn quote(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            '\r' | '\n' => out.push(' '),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                out.push('\\');
                out.push(c);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digits_overflow_is_none_not_a_wrap() {
        assert_eq!(parse_digits(b"0009"), Some(9));
        assert_eq!(parse_digits(b"18446744073709551615"), Some(u64::MAX));
        assert_eq!(parse_digits(b"18446744073709551616"), None);
        assert_eq!(parse_digits(b""), None);
        assert_eq!(parse_digits(b"-1"), None);
    }

    #[test]
    fn a_quoted_string_keeps_escaped_quotes_and_rejects_an_open_end() {
        let mut c = Cursor::new(r#""J Rosenberg \\\"" <sip:x>"#);
        assert_eq!(c.quoted_string(), Some(r#""J Rosenberg \\\"""#));
        assert_eq!(unquote(r#""J Rosenberg \\\"""#), r#"J Rosenberg \""#);
        let mut open = Cursor::new("\"Mr. J. User <sip:j.user@example.com>");
        assert_eq!(open.quoted_string(), None);
        assert_eq!(open.pos(), 0);
    }

    #[test]
    fn quoting_round_trips_through_unquote() {
        for text in ["plain", "with \"quotes\"", "back\\slash", "bel\u{7}"] {
            let q = quote(text);
            let mut c = Cursor::new(&q);
            assert_eq!(c.quoted_string(), Some(q.as_str()), "{q}");
            assert_eq!(unquote(&q), text);
        }
    }
}
