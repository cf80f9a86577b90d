//! The SIP message layer of confer's sans-IO SIP core: parsing, typed header access,
//! serialization, stream framing, and the UAS decision of what to do with a received
//! message. Transactions (RFC 3261 §17), dialogs and the B2BUA build on this API.
//!
//! # Drive contract
//!
//! - **UDP**: hand each datagram to [`inspect`] (or [`parse_datagram`] for the message
//!   alone). The result is a [`Disposition`]: a checked request or response to pass on,
//!   a [`Rejection`] to answer with (build it with [`Rejection::response`] and a To tag
//!   from the injected RNG), or a silent drop.
//! - **TCP/TLS**: one [`StreamFramer`] per connection: [`StreamFramer::push`] the bytes
//!   read, then take frames with [`StreamFramer::next_frame`] (and [`inspect`] each) or
//!   messages with [`StreamFramer::next_message`] until `Ok(None)`; close the connection
//!   on a fatal [`FrameError`]; call [`StreamFramer::finish`] at end of stream.
//! - **Sending**: build a [`Request`] or [`Response`] (headers through [`Headers::push`],
//!   which refuses CR/LF injection), then [`Message::write_to`]. Content-Length is always
//!   written from the body.
//!
//! Nothing here reads a clock, touches a socket or keeps state across messages, except
//! the framer's per-connection buffer.
//!
//! ```
//! use confer_pstn_bridge::sip::{Capabilities, Disposition, Message, StreamFramer, inspect};
//!
//! let caps = Capabilities::default();
//! let datagram = b"OPTIONS sip:bob@example.com SIP/7.0\r\n\
//!     Via: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK776\r\n\
//!     From: <sip:alice@example.com>;tag=1\r\n\
//!     To: <sip:bob@example.com>\r\n\
//!     Call-ID: a84b4c76e66710\r\n\
//!     CSeq: 1 OPTIONS\r\n\
//!     Content-Length: 0\r\n\r\n";
//! let Disposition::Reject { rejection, basis } = inspect(datagram, &caps) else {
//!     panic!("SIP/7.0 is answered")
//! };
//! let answer = rejection.response(&basis, Some("f81d4fae")); // tag from the injected RNG
//! assert_eq!(answer.status.as_u16(), 505);
//! assert_eq!(answer.headers.to().unwrap().tag(), Some("f81d4fae"));
//! let wire: Vec<u8> = Message::from(answer).to_vec();
//! assert!(wire.starts_with(b"SIP/2.0 505 Version Not Supported\r\nVia: "));
//!
//! // Over TCP, the same bytes in any pieces.
//! let mut framer = StreamFramer::new();
//! framer.push(&datagram[..10]);
//! assert_eq!(framer.next_message(), Ok(None));
//! framer.push(&datagram[10..]);
//! assert!(matches!(framer.next_message(), Ok(Some(Message::Request(_)))));
//! ```
//!
//! # Design
//!
//! - **Faithful first, typed on demand.** A parsed [`Message`] keeps every header field
//!   in order, with its received name and unfolded value ([`Headers`]); typed values
//!   ([`Via`], [`NameAddr`], [`CSeq`], [`Contacts`], [`MediaType`], option tags) are parsed
//!   when asked for, each accessor returning a typed [`HeaderError`] (`Missing`,
//!   `Duplicate` for repeated single-value headers, `Malformed`). So an unknown or
//!   malformed header that nobody asks about never stops a message, and a proxy-style
//!   re-serialisation keeps it byte for byte.
//! - **Escapes decoded only where the grammar has them**: URI user, password,
//!   parameters and headers ([`Escaped`] keeps the wire form and decodes on demand);
//!   never in methods, header names, tokens, Call-IDs or display names.
//! - **Framing is strict**: the body is exactly Content-Length octets (or the rest of a
//!   datagram without one); invalid or conflicting lengths are errors; on streams a
//!   missing length is fatal. Framer and parser share one head scanner, so they cannot
//!   disagree about where a header line ends or what the length is.
//! - **No panics on input**: every index is checked, integers are parsed with overflow
//!   checks, and the torture and mutation tests in `tests/torture.rs` feed all RFC 4475
//!   and RFC 5118 messages, split at every byte and randomly mutated, through both
//!   parsers.
//!
//! # Allocation
//!
//! Owned values, so messages and typed headers outlive the receive buffer and move
//! freely between the transaction and dialog layers without lifetimes. Parsing a message
//! allocates its header section once (one `String` for all names and values plus one
//! index `Vec`), the Request-URI's parts, and, for datagrams, one body copy (frames from
//! the [`StreamFramer`] and [`parse_bytes`] share the receive buffer instead). Typed
//! accessors allocate only what they return; option-tag lists and Call-IDs borrow from
//! the message. SIP signalling runs at thousands of messages per second, not the media
//! path's rates, so this is the trade: a handful of small allocations per message for an
//! API without lifetimes.
//!
//! # Deliberate choices where RFC 4475 leaves room
//!
//! - Malformed start lines (`lwsstart`, `trws`, `lwsruri`, `ltgtruri`), spaces inside
//!   `<>` (`badaspec`), unquoted display names with commas (`baddn`) and addr-spec URIs
//!   with `?` (`regbadct`) are rejected with 400, not repaired.
//! - A header section that is not UTF-8 is malformed (RFC 3261 TEXT-UTF8), so a peer
//!   sending Latin-1 display names is answered 400.
//! - `Max-Forwards` absent is accepted; present but invalid (`> 255`) is a 400.
//! - A Request-URI with headers (`escruri`) is a 400.

mod check;
pub mod dialog;
mod framer;
mod head;
mod header;
mod message;
mod scan;
pub mod transaction;
mod uri;
mod value;

pub use check::{
    Capabilities, Disposition, DropReason, RejectCause, Rejection, ResponseBasis, build_response,
    check_request, check_response, inspect,
};
pub use framer::{DEFAULT_MAX_MESSAGE_SIZE, FrameError, StreamFramer};
pub use header::{HeaderError, HeaderField, HeaderKey, HeaderName, Headers, InvalidHeader};
pub use message::{
    Message, Method, ParseError, Request, Response, StatusCode, Version, parse_bytes,
    parse_datagram,
};
pub use uri::{
    AbsoluteUri, Escaped, Host, HostName, SipUri, TelUri, Uri, UriError, UriHeader, UriParam,
    UriPart,
};
pub use value::{
    BRANCH_MAGIC_COOKIE, CSeq, Contacts, DisplayName, MediaType, NameAddr, Param, ParamValue,
    Params, Token, Transport, ValueError, Via,
};
