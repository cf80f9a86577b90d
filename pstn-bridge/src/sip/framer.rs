//! Message framing on stream transports (TCP, TLS, RFC 3261 §18.3).
//!
//! A [`StreamFramer`] owns the receive buffer of one connection. The drive contract:
//!
//! 1. after every read, [`push`](StreamFramer::push) the bytes;
//! 2. call [`next_message`](StreamFramer::next_message) (or
//!    [`next_frame`](StreamFramer::next_frame) for raw bytes) until it returns
//!    `Ok(None)`;
//! 3. on an error for which [`FrameError::is_fatal`] is true, close the connection: the
//!    framer stays failed and returns the same error forever. A
//!    [`FrameError::Malformed`] message is not fatal: its bytes were framed and consumed,
//!    the caller may answer it (see [`inspect`](super::inspect)) and carry on;
//! 4. answer [`take_pings`](StreamFramer::take_pings) RFC 5626 pings with one CRLF each;
//! 5. at end of stream call [`finish`](StreamFramer::finish): a half-received message is
//!    an error (RFC 4475 `clerr` over TCP). A caller that wants to bound slow senders arms
//!    a timer while [`is_mid_message`](StreamFramer::is_mid_message) is true; the framer
//!    never reads the clock.
//!
//! Framing depends only on the bytes, never on how they were split across reads: CRLFs
//! between messages are skipped, the head ends at the first CRLFCRLF, and exactly
//! Content-Length octets follow. Every message must carry a Content-Length; a missing,
//! negative, non-numeric, overflowing or conflicting one (`ncl`, `mcl01`) is fatal,
//! because the next message's start can no longer be found (and a smuggled second
//! message must never be read out of a body). A message larger than the configured
//! maximum is fatal too, found as soon as the head or the declared length says so,
//! without buffering the rest.

use bytes::{Buf, Bytes, BytesMut};

use super::head::{ClError, content_length, find_crlf, find_crlfcrlf};
use super::message::{Message, ParseError, parse_bytes};

/// Default largest message (head and body) a framer accepts: 64 KiB.
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 64 * 1024;

/// Why a stream could not be framed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// A message on a stream has no Content-Length (RFC 3261 §18.3 MUST). Fatal.
    #[error("message without Content-Length on a stream transport")]
    MissingContentLength,
    /// A Content-Length is not `1*DIGIT` below 2^32. Fatal.
    #[error("invalid Content-Length")]
    InvalidContentLength,
    /// Content-Length fields disagree. Fatal.
    #[error("conflicting Content-Length values")]
    ConflictingContentLength,
    /// The message exceeds the maximum size. Fatal.
    #[error("message larger than {limit} octets")]
    TooLarge {
        /// The configured maximum.
        limit: usize,
    },
    /// The stream ended inside a message. Fatal.
    #[error("stream ended inside a message")]
    TruncatedAtEof,
    /// A framed message did not parse. Not fatal: it has been consumed.
    #[error("malformed message: {error}")]
    Malformed {
        /// Why it did not parse.
        error: ParseError,
        /// Its bytes, e.g. to answer it with a 400.
        frame: Bytes,
    },
}

impl FrameError {
    /// True when the connection must be closed.
    pub fn is_fatal(&self) -> bool {
        !matches!(self, FrameError::Malformed { .. })
    }
}

impl From<ClError> for FrameError {
    fn from(e: ClError) -> Self {
        match e {
            ClError::Invalid => FrameError::InvalidContentLength,
            ClError::Conflicting => FrameError::ConflictingContentLength,
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum State {
    /// Waiting for a complete head.
    Head,
    /// Head seen; the frame is `total` octets from the buffer start.
    Body { total: usize },
}

/// Splits one connection's byte stream into SIP messages. See the module documentation
/// for the drive contract.
#[derive(Debug)]
pub struct StreamFramer {
    buf: BytesMut,
    max_message_size: usize,
    state: State,
    /// Where the CRLFCRLF search resumes, so byte-at-a-time input stays linear.
    scan_from: usize,
    crlf_run: u64,
    pings: u32,
    crlfs_skipped: u64,
    failed: Option<FrameError>,
}

impl Default for StreamFramer {
    fn default() -> Self {
        Self::new()
    }
}

impl StreamFramer {
    /// A framer with the default maximum message size.
    pub fn new() -> Self {
        Self::with_max_message_size(DEFAULT_MAX_MESSAGE_SIZE)
    }

    /// A framer that fails on messages larger than `max` octets.
    pub fn with_max_message_size(max: usize) -> Self {
        Self {
            buf: BytesMut::new(),
            max_message_size: max,
            state: State::Head,
            scan_from: 0,
            crlf_run: 0,
            pings: 0,
            crlfs_skipped: 0,
            failed: None,
        }
    }

    /// Appends received bytes. Ignored once the framer has failed.
    pub fn push(&mut self, data: &[u8]) {
        if self.failed.is_none() {
            self.buf.extend_from_slice(data);
        }
    }

    fn fail(&mut self, e: FrameError) -> FrameError {
        self.failed = Some(e.clone());
        self.buf.clear();
        e
    }

    /// The next complete message's bytes, `Ok(None)` when more input is needed.
    pub fn next_frame(&mut self) -> Result<Option<Bytes>, FrameError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        loop {
            match self.state {
                State::Head => {
                    while self.buf.starts_with(b"\r\n") {
                        self.buf.advance(2);
                        self.scan_from = 0;
                        self.crlfs_skipped += 1;
                        self.crlf_run += 1;
                        if self.crlf_run.is_multiple_of(2) {
                            self.pings = self.pings.saturating_add(1);
                        }
                    }
                    if self.buf.is_empty() || &self.buf[..] == b"\r" {
                        return Ok(None);
                    }
                    self.crlf_run = 0;
                    let Some(head_end) = find_crlfcrlf(&self.buf, self.scan_from.saturating_sub(3))
                    else {
                        if self.buf.len() > self.max_message_size {
                            return Err(self.fail(FrameError::TooLarge {
                                limit: self.max_message_size,
                            }));
                        }
                        self.scan_from = self.buf.len();
                        return Ok(None);
                    };
                    let head_len = head_end + 4;
                    if head_len > self.max_message_size {
                        return Err(self.fail(FrameError::TooLarge {
                            limit: self.max_message_size,
                        }));
                    }
                    // A CRLF exists at or before `head_end`, so this always finds one.
                    let start_line_end = find_crlf(&self.buf, 0).unwrap_or(head_end);
                    let section = self
                        .buf
                        .get(start_line_end + 2..head_end + 2)
                        .unwrap_or(&[]);
                    let declared = match content_length(section) {
                        Ok(Some(n)) => n,
                        Ok(None) => return Err(self.fail(FrameError::MissingContentLength)),
                        Err(e) => return Err(self.fail(e.into())),
                    };
                    let total = usize::try_from(declared)
                        .ok()
                        .and_then(|n| n.checked_add(head_len))
                        .filter(|&t| t <= self.max_message_size);
                    let Some(total) = total else {
                        return Err(self.fail(FrameError::TooLarge {
                            limit: self.max_message_size,
                        }));
                    };
                    self.state = State::Body { total };
                }
                State::Body { total } => {
                    if self.buf.len() < total {
                        return Ok(None);
                    }
                    let frame = self.buf.split_to(total).freeze();
                    self.state = State::Head;
                    self.scan_from = 0;
                    return Ok(Some(frame));
                }
            }
        }
    }

    /// The next complete message, `Ok(None)` when more input is needed. The body shares
    /// the frame's buffer (no copy).
    pub fn next_message(&mut self) -> Result<Option<Message>, FrameError> {
        let Some(frame) = self.next_frame()? else {
            return Ok(None);
        };
        match parse_bytes(frame.clone()) {
            Ok(m) => Ok(Some(m)),
            Err(error) => Err(FrameError::Malformed { error, frame }),
        }
    }

    /// Call at end of stream, after `next_message` returned `Ok(None)`: an error when
    /// the stream stopped inside a message.
    pub fn finish(&mut self) -> Result<(), FrameError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let rest = &self.buf[..];
        let only_crlf = rest.chunks(2).all(|c| c == b"\r\n" || c == b"\r");
        if only_crlf {
            Ok(())
        } else {
            Err(self.fail(FrameError::TruncatedAtEof))
        }
    }

    /// RFC 5626 keep-alive pings (CRLFCRLF between messages) seen since the last call;
    /// a server answers each with one CRLF (a "pong").
    pub fn take_pings(&mut self) -> u32 {
        std::mem::take(&mut self.pings)
    }

    /// CRLFs skipped between messages since the framer was made; a client that sent a
    /// ping sees the pong as an increase.
    pub fn crlfs_skipped(&self) -> u64 {
        self.crlfs_skipped
    }

    /// Octets buffered and not yet returned.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// True when part of a message is buffered (the moment to arm an idle timer).
    pub fn is_mid_message(&self) -> bool {
        matches!(self.state, State::Body { .. })
            || self.buf.iter().any(|&b| b != b'\r' && b != b'\n')
    }

    /// The fatal error the framer stopped on, if any.
    pub fn error(&self) -> Option<&FrameError> {
        self.failed.as_ref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &[u8] = b"OPTIONS sip:a@example.com SIP/2.0\r\nVia: SIP/2.0/TCP h;branch=z9hG4bK1\r\nContent-Length: 5\r\n\r\nhello";
    const B: &[u8] =
        b"BYE sip:a@example.com SIP/2.0\r\nVia: SIP/2.0/TCP h;branch=z9hG4bK2\r\nl: 0\r\n\r\n";

    fn drain(f: &mut StreamFramer) -> Vec<Result<Bytes, FrameError>> {
        let mut out = Vec::new();
        loop {
            match f.next_frame() {
                Ok(Some(fr)) => out.push(Ok(fr)),
                Ok(None) => return out,
                Err(e) => {
                    out.push(Err(e));
                    return out;
                }
            }
        }
    }

    fn stream() -> Vec<u8> {
        [
            b"\r\n\r\n".as_slice(),
            A,
            b"\r\n",
            B,
            b"\r\n\r\n\r\n\r\n",
            A,
        ]
        .concat()
    }

    #[test]
    fn every_two_way_split_gives_the_same_frames() {
        let data = stream();
        let mut whole = StreamFramer::new();
        whole.push(&data);
        let expected = drain(&mut whole);
        assert_eq!(expected.len(), 3);
        assert_eq!(whole.take_pings(), 3);
        for cut in 0..=data.len() {
            let mut f = StreamFramer::new();
            f.push(&data[..cut]);
            let mut got = drain(&mut f);
            f.push(&data[cut..]);
            got.extend(drain(&mut f));
            assert_eq!(got, expected, "cut at {cut}");
            assert_eq!(f.take_pings(), 3, "cut at {cut}");
            assert_eq!(f.finish(), Ok(()));
        }
    }

    #[test]
    fn a_missing_or_bad_length_is_fatal_and_sticks() {
        let mut f = StreamFramer::new();
        f.push(b"OPTIONS sip:a@b SIP/2.0\r\nVia: x\r\n\r\n");
        assert_eq!(f.next_frame(), Err(FrameError::MissingContentLength));
        f.push(A);
        assert_eq!(f.next_frame(), Err(FrameError::MissingContentLength));
        let mut g = StreamFramer::new();
        g.push(b"OPTIONS sip:a@b SIP/2.0\r\nContent-Length: 18446744073709551616\r\n\r\n");
        assert_eq!(g.next_frame(), Err(FrameError::InvalidContentLength));
        assert!(g.next_frame().unwrap_err().is_fatal());
    }

    #[test]
    fn an_oversized_message_fails_without_being_buffered() {
        let mut f = StreamFramer::with_max_message_size(200);
        f.push(b"MESSAGE sip:a@b SIP/2.0\r\nContent-Length: 100000\r\n\r\n");
        assert_eq!(f.next_frame(), Err(FrameError::TooLarge { limit: 200 }));
        let mut g = StreamFramer::with_max_message_size(200);
        for _ in 0..300 {
            g.push(b"X");
            if g.next_frame().is_err() {
                break;
            }
        }
        assert_eq!(g.error(), Some(&FrameError::TooLarge { limit: 200 }));
        assert!(g.buffered() <= 201);
    }

    #[test]
    fn the_end_of_stream_inside_a_message_is_an_error() {
        let mut f = StreamFramer::new();
        f.push(&A[..A.len() - 1]);
        assert_eq!(f.next_frame(), Ok(None));
        assert!(f.is_mid_message());
        assert_eq!(f.finish(), Err(FrameError::TruncatedAtEof));
        let mut g = StreamFramer::new();
        g.push(b"\r\n\r\n\r");
        assert_eq!(g.next_frame(), Ok(None));
        assert!(!g.is_mid_message());
        assert_eq!(g.finish(), Ok(()));
    }

    #[test]
    fn a_malformed_but_framed_message_is_skipped_not_fatal() {
        let mut f = StreamFramer::new();
        f.push(b"INVITE <sip:a@b> SIP/2.0\r\nl: 0\r\n\r\n");
        f.push(B);
        let err = f.next_message().unwrap_err();
        assert!(!err.is_fatal());
        assert!(matches!(f.next_message(), Ok(Some(Message::Request(_)))));
    }
}
