//! Message framing: where does the next message in a buffer start and end?
//!
//! A regular message is `tag: u8, length: i32 (counts itself, not the tag), body`. The length is
//! checked before anything is allocated for it: a negative, too small or too large length is a
//! protocol violation, never an allocation of the claimed size.

use thiserror::Error;

/// The location of one complete message at the start of a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame {
    /// The message type byte.
    pub tag: u8,
    /// The message's size in bytes, tag and length field included.
    pub total: usize,
}

impl Frame {
    /// The message body inside `buf`, which starts with this frame.
    pub fn body<'a>(&self, buf: &'a [u8]) -> &'a [u8] {
        &buf[5..self.total]
    }
}

/// Why the bytes at the start of a buffer cannot be a message.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum FrameError {
    /// The length field is below 4 (it counts itself) or negative.
    #[error("invalid message length {0}")]
    BadLength(i32),
    /// The length is valid but above the configured `max_message_size`.
    #[error("message of {len} bytes exceeds max_message_size ({max} bytes)")]
    TooLarge { len: usize, max: usize },
}

/// Reads the header at the start of `buf`.
///
/// Returns `Ok(None)` while fewer than five bytes are there, `Ok(Some((tag, total)))` once the
/// header is readable (the body may still be incomplete), or an error for a length that no valid
/// message has.
pub fn header(buf: &[u8], max: usize) -> Result<Option<Frame>, FrameError> {
    if buf.len() < 5 {
        return Ok(None);
    }
    let len = i32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]);
    if len < 4 {
        return Err(FrameError::BadLength(len));
    }
    let len = len as usize;
    if len > max {
        return Err(FrameError::TooLarge { len, max });
    }
    Ok(Some(Frame {
        tag: buf[0],
        total: len + 1,
    }))
}

/// Returns the first message of `buf` once it is complete.
pub fn complete(buf: &[u8], max: usize) -> Result<Option<Frame>, FrameError> {
    match header(buf, max)? {
        Some(f) if buf.len() >= f.total => Ok(Some(f)),
        _ => Ok(None),
    }
}

/// Reads a NUL-terminated string at the start of `buf`: the string and the rest after the NUL.
pub fn cstr(buf: &[u8]) -> Option<(&[u8], &[u8])> {
    // memchr: SQL text is found this way for every routed query, and a byte loop costs
    // several instructions per byte.
    let nul = memchr::memchr(0, buf)?;
    Some((&buf[..nul], &buf[nul + 1..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn incomplete_header_needs_more() {
        assert_eq!(header(b"Q\0\0", 100), Ok(None));
    }

    #[test]
    fn complete_message_is_found() {
        let msg = b"Q\0\0\0\x09abcd\0rest";
        let f = complete(msg, 100).unwrap().unwrap();
        assert_eq!(
            f,
            Frame {
                tag: b'Q',
                total: 10
            }
        );
        assert_eq!(f.body(msg), b"abcd\0");
    }

    #[test]
    fn partial_body_is_not_complete() {
        assert_eq!(complete(b"Q\0\0\0\x09ab", 100), Ok(None));
        assert!(header(b"Q\0\0\0\x09ab", 100).unwrap().is_some());
    }

    #[test]
    fn negative_and_tiny_lengths_are_rejected() {
        assert_eq!(
            header(b"Q\xff\xff\xff\xff", 100),
            Err(FrameError::BadLength(-1))
        );
        assert_eq!(header(b"Q\0\0\0\x03", 100), Err(FrameError::BadLength(3)));
    }

    #[test]
    fn oversized_length_is_rejected_before_allocation() {
        assert_eq!(
            header(b"Q\x7f\xff\xff\xff", 1024),
            Err(FrameError::TooLarge {
                len: i32::MAX as usize,
                max: 1024
            })
        );
    }

    #[test]
    fn cstr_splits_at_nul() {
        assert_eq!(cstr(b"ab\0cd"), Some((&b"ab"[..], &b"cd"[..])));
        assert_eq!(cstr(b"ab"), None);
    }
}
