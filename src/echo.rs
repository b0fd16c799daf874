//! Bounded echoes of user input: what a key, store name, body or metadata value may show of itself in an error
//! message or a log line. A 10 MB key is named by its first bytes and its length, never repeated whole.

use std::fmt;

/// How many bytes of one piece of user input an error or log line repeats.
pub const ECHO_LIMIT: usize = 256;

/// `s` for an error message or log field: whole when it is at most [`ECHO_LIMIT`] bytes, else its first bytes
/// (cut on a character boundary) and how many bytes were left out. `{}` shows the text, `{:?}` quotes it.
pub fn echo(s: &str) -> Echo<'_> {
    Echo(s)
}

/// See [`echo`].
#[derive(Clone, Copy)]
pub struct Echo<'a>(&'a str);

impl Echo<'_> {
    /// The shown prefix and the number of bytes left out.
    fn split(&self) -> (&str, usize) {
        let head = prefix(self.0, ECHO_LIMIT);
        (head, self.0.len() - head.len())
    }
}

impl fmt::Display for Echo<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.split() {
            (head, 0) => f.write_str(head),
            (head, rest) => write!(f, "{head}…(+{rest} bytes)"),
        }
    }
}

impl fmt::Debug for Echo<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.split() {
            (head, 0) => write!(f, "{head:?}"),
            (head, rest) => write!(f, "{head:?}…(+{rest} bytes)"),
        }
    }
}

impl From<Echo<'_>> for String {
    fn from(e: Echo<'_>) -> String {
        e.to_string()
    }
}

/// The longest prefix of `s` that is at most `max` bytes and ends on a character boundary.
pub fn prefix(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut cut = max;
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    &s[..cut]
}

/// Cuts an owned message down to `max` bytes (on a character boundary), marking the cut.
pub fn bound(mut message: String, max: usize) -> String {
    let kept = prefix(&message, max).len();
    if kept < message.len() {
        let rest = message.len() - kept;
        message.truncate(kept);
        message.push_str(&format!("…(+{rest} bytes)"));
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_input_is_shown_whole() {
        assert_eq!(echo("mykey").to_string(), "mykey");
        assert_eq!(format!("{:?}", echo("a\"b")), r#""a\"b""#);
    }

    #[test]
    fn long_input_is_cut_and_counted() {
        let long = "k".repeat(10 * 1024 * 1024);
        let shown = echo(&long).to_string();
        assert!(shown.len() < ECHO_LIMIT + 32, "{} bytes", shown.len());
        assert!(shown.starts_with(&"k".repeat(ECHO_LIMIT)));
        assert!(
            shown.ends_with(&format!("…(+{} bytes)", long.len() - ECHO_LIMIT)),
            "{shown}"
        );
    }

    #[test]
    fn cuts_fall_on_character_boundaries() {
        // 3-byte characters: 256 is not a boundary (85 * 3 = 255 is).
        let wide = "€".repeat(1000);
        let shown = echo(&wide).to_string();
        assert!(shown.starts_with(&"€".repeat(85)));
        assert!(shown.contains(&format!("(+{} bytes)", 3000 - 255)), "{shown}");
        assert_eq!(prefix("é", 1), "");
        assert_eq!(bound("ab€".to_owned(), 3), "ab…(+3 bytes)");
        assert_eq!(bound("short".to_owned(), 10), "short");
    }
}
