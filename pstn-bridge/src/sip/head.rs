//! Byte-level scanning of a message head, shared by the parser, the stream framer and the
//! salvage path, so all three agree on where a header line ends, what is folded and what
//! the Content-Length is.

use super::header::HeaderName;
use super::scan::{is_token, is_ws, parse_digits};

/// Largest Content-Length accepted at all (4 GiB - 1); anything larger is invalid rather
/// than "too large", since no SIP message comes near it.
const MAX_CONTENT_LENGTH: u64 = u32::MAX as u64;

/// Offset of the first byte that does not belong to a run of leading CRLFs (RFC 3261
/// §7.5: CRLFs before a start line are ignored; RFC 5626 keep-alives look the same).
pub(crate) fn skip_leading_crlf(data: &[u8]) -> usize {
    let mut i = 0;
    while data.get(i..i + 2) == Some(b"\r\n") {
        i += 2;
    }
    i
}

/// Index of the first `\r\n\r\n` at or after `from`.
pub(crate) fn find_crlfcrlf(data: &[u8], from: usize) -> Option<usize> {
    let hay = data.get(from..)?;
    hay.windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| i + from)
}

/// Index of the first `\r\n` at or after `from`.
pub(crate) fn find_crlf(data: &[u8], from: usize) -> Option<usize> {
    let hay = data.get(from..)?;
    hay.windows(2).position(|w| w == b"\r\n").map(|i| i + from)
}

/// One logical header line of a header section.
pub(crate) struct RawLine<'a> {
    /// Byte offset of the line in the section.
    pub(crate) offset: usize,
    /// `Some((name, raw value))` when the line is `token *WSP ":" value`; the raw value
    /// still holds its folds (`CRLF 1*WSP`).
    pub(crate) field: Option<(&'a str, &'a [u8])>,
}

/// Iterates the logical lines of a header section: the bytes after the start line's
/// CRLF, each line ending in CRLF (the last may lack it when salvaging a truncated head).
pub(crate) struct RawLines<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> RawLines<'a> {
    pub(crate) fn new(section: &'a [u8]) -> Self {
        Self {
            data: section,
            pos: 0,
        }
    }
}

impl<'a> Iterator for RawLines<'a> {
    type Item = RawLine<'a>;

    fn next(&mut self) -> Option<RawLine<'a>> {
        let data = self.data;
        if self.pos >= data.len() {
            return None;
        }
        let start = self.pos;
        let mut from = start;
        let end = loop {
            match find_crlf(data, from) {
                Some(j) if data.get(j + 2).copied().is_some_and(is_ws) => from = j + 2,
                Some(j) => {
                    self.pos = j + 2;
                    break j;
                }
                None => {
                    self.pos = data.len();
                    break data.len();
                }
            }
        };
        let line = data.get(start..end).unwrap_or(&[]);
        let field = (|| {
            if line.first().copied().is_some_and(is_ws) {
                return None;
            }
            let colon = line.iter().position(|&b| b == b':')?;
            let (mut name, value) = line.split_at(colon);
            while let Some((&last, rest)) = name.split_last() {
                if is_ws(last) {
                    name = rest;
                } else {
                    break;
                }
            }
            if name.is_empty() || !name.iter().all(|&b| is_token(b)) {
                return None;
            }
            // Token bytes are ASCII, so this cannot fail; `ok()` keeps it panic-free.
            let name = std::str::from_utf8(name).ok()?;
            Some((name, value.get(1..).unwrap_or(&[])))
        })();
        Some(RawLine {
            offset: start,
            field,
        })
    }
}

/// Appends the unfolded, trimmed value to `out`: each `CRLF 1*WSP` becomes one SP. A
/// bare CR or LF is an error (it would let a value inject lines when written back).
pub(crate) fn unfold_into(raw: &str, out: &mut String) -> Result<(), ()> {
    let base = out.len();
    for (k, seg) in raw.split("\r\n").enumerate() {
        if seg.contains(['\r', '\n']) {
            out.truncate(base);
            return Err(());
        }
        if k > 0 {
            out.push(' ');
            out.push_str(seg.trim_start_matches([' ', '\t']));
        } else {
            out.push_str(seg);
        }
    }
    let trimmed_end = base + out[base..].trim_end_matches([' ', '\t']).len();
    out.truncate(trimmed_end);
    let lead = out[base..].len() - out[base..].trim_start_matches([' ', '\t']).len();
    if lead > 0 {
        out.drain(base..base + lead);
    }
    Ok(())
}

/// Why the Content-Length of a head cannot frame its body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ClError {
    /// Not `1*DIGIT` (negative, non-numeric, empty) or above 2^32-1.
    Invalid,
    /// Several Content-Length fields with different values.
    Conflicting,
}

/// Parses one raw (possibly folded) Content-Length value.
fn parse_cl(raw: &[u8]) -> Option<u64> {
    let lws = |b: &u8| matches!(b, b' ' | b'\t' | b'\r' | b'\n');
    let start = raw.iter().position(|b| !lws(b))?;
    let end = raw.iter().rposition(|b| !lws(b))? + 1;
    parse_digits(raw.get(start..end)?).filter(|&n| n <= MAX_CONTENT_LENGTH)
}

/// The Content-Length of a header section: `Ok(None)` when absent; every field must be
/// valid, and repeated fields must agree.
pub(crate) fn content_length(section: &[u8]) -> Result<Option<u64>, ClError> {
    let mut found = None;
    for line in RawLines::new(section) {
        let Some((name, raw)) = line.field else {
            continue;
        };
        if HeaderName::lookup(name) != Some(HeaderName::ContentLength) {
            continue;
        }
        let n = parse_cl(raw).ok_or(ClError::Invalid)?;
        match found {
            Some(m) if m != n => return Err(ClError::Conflicting),
            _ => found = Some(n),
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folded_lines_join_with_one_space_and_are_trimmed() {
        let mut out = String::from("prefix");
        unfold_into(
            "   SIP  /   2.0\r\n /UDP\r\n    192.0.2.2;branch=390skdjuw  ",
            &mut out,
        )
        .unwrap();
        assert_eq!(out, "prefixSIP  /   2.0 /UDP 192.0.2.2;branch=390skdjuw");
        let mut empty = String::new();
        unfold_into("\r\n   ", &mut empty).unwrap();
        assert_eq!(empty, "");
        assert!(unfold_into("a\nb", &mut String::new()).is_err());
        assert!(unfold_into("a\rb", &mut String::new()).is_err());
    }

    #[test]
    fn raw_lines_follow_folds_and_flag_lines_without_a_colon() {
        let section =
            b"TO :\r\n sip:a@b ;tag=1\r\nFoobar roobar\r\n bad fold\r\nContent-Length   : 5\r\n";
        let lines: Vec<_> = RawLines::new(section).collect();
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[0].field.map(|f| f.0), Some("TO"));
        assert!(lines[1].field.is_none());
        assert_eq!(lines[2].field.map(|f| f.0), Some("Content-Length"));
        assert_eq!(content_length(section), Ok(Some(5)));
    }

    #[test]
    fn content_length_must_be_digits_agree_and_fit_32_bits() {
        assert_eq!(content_length(b"l: 0150\r\n"), Ok(Some(150)));
        assert_eq!(
            content_length(b"Content-Length: -999\r\n"),
            Err(ClError::Invalid)
        );
        assert_eq!(
            content_length(b"Content-Length: five\r\n"),
            Err(ClError::Invalid)
        );
        assert_eq!(
            content_length(b"Content-Length: 18446744073709551615\r\n"),
            Err(ClError::Invalid)
        );
        assert_eq!(
            content_length(b"Content-Length: 4294967296\r\n"),
            Err(ClError::Invalid)
        );
        assert_eq!(
            content_length(b"Content-Length: 13\r\nl: 5\r\n"),
            Err(ClError::Conflicting)
        );
        assert_eq!(
            content_length(b"Content-Length: 5\r\nL: 5\r\n"),
            Ok(Some(5))
        );
        assert_eq!(content_length(b"Content-Length:\r\n 7\r\n"), Ok(Some(7)));
        assert_eq!(content_length(b"Subject: x\r\n"), Ok(None));
    }
}
