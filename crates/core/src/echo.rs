//! [`echo`]: a client's string as it may appear in an error message.
//!
//! Errors name what the client sent (a path, a job id) so the client can
//! tell which request failed, but a string is echoed at most
//! [`MAX_ECHO_BYTES`] long: a 1 MiB id would otherwise come back whole, and
//! gRPC carries the message in a header whose size is limited (a message
//! past it reaches the client as a protocol error instead of its status).

use std::borrow::Cow;

/// Longest client string echoed whole, in bytes.
pub const MAX_ECHO_BYTES: usize = 256;

/// `s` when at most [`MAX_ECHO_BYTES`] long; else its start (cut on a
/// character boundary) followed by `…` and the original length.
pub fn echo(s: &str) -> Cow<'_, str> {
    if s.len() <= MAX_ECHO_BYTES {
        return Cow::Borrowed(s);
    }
    let mut end = MAX_ECHO_BYTES;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    Cow::Owned(format!("{}… ({} bytes)", &s[..end], s.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_strings_are_echoed_whole_long_ones_are_cut_and_measured() {
        assert_eq!(echo("a/b"), "a/b");
        let exact = "x".repeat(MAX_ECHO_BYTES);
        assert_eq!(echo(&exact), exact);
        let long = "é".repeat(1 << 19); // 1 MiB of two-byte characters
        let shown = echo(&long);
        assert!(shown.len() < MAX_ECHO_BYTES + 32, "{}", shown.len());
        assert!(shown.starts_with("éé") && shown.ends_with("… (1048576 bytes)"));
    }
}
