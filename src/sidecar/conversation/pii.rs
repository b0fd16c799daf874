//! PII scrubbing as Dapr does it (its `pii-scrubber` dependency's default scrubber): street addresses, credit
//! cards, phone numbers, e-mail addresses, IP addresses, ZIP codes, PO boxes, US SSNs, ISBNs, MAC addresses and
//! IBANs are replaced by `<STREET_ADDRESS>`, `<CREDIT_CARD>`, `<PHONE_NUMBER>`, `<EMAIL_ADDRESS>`, `<IP>`,
//! `<ZIP_CODE>`, `<PO_BOX>`, `<US_SSN>`, `<ISBN>`, `<MAC_ADDRESS>` and `<IBAN>`; text inside a URL or a git
//! repository address is left alone. Matching is ASCII and byte-based, overlaps resolve as Dapr's do (earliest
//! start first, then the longest), so the same text comes out the same.

use std::sync::OnceLock;

use regex::bytes::{Regex, RegexBuilder};

/// A kind of PII: the patterns that find it and the token that replaces it.
struct Entity {
    patterns: Vec<Regex>,
    token: &'static str,
}

struct Scrubber {
    scrubbed: Vec<Entity>,
    /// Matches inside these spans are not scrubbed.
    ignored: Vec<Regex>,
}

fn compile(pattern: &str) -> Regex {
    RegexBuilder::new(pattern)
        .unicode(false)
        .build()
        .unwrap_or_else(|e| panic!("PII pattern {pattern:?}: {e}"))
}

fn entity(token: &'static str, patterns: &[&str]) -> Entity {
    Entity {
        patterns: patterns.iter().map(|p| compile(p)).collect(),
        token,
    }
}

const STREET_ADDRESS: &str = r"(?i)\d{1,4} [\w\s]{1,20}(?:street|st|avenue|ave|road|rd|highway|hwy|square|sq|trail|trl|drive|dr|court|ct|park|parkway|pkwy|circle|cir|boulevard|blvd)\W?";
const CREDIT_CARD: &str = r"(?:(?:(?:\d{4}[- ]?){3}\d{4}|\d{15,16}))";
const PHONE_WITH_EXTENSION: &str = r"(?i)(?:(?:\+?1\s*(?:[.-]\s*)?)?(?:\(\s*(?:[2-9]1[02-9]|[2-9][02-8]1|[2-9][02-8][02-9])\s*\)|(?:[2-9]1[02-9]|[2-9][02-8]1|[2-9][02-8][02-9]))\s*(?:[.-]\s*)?)?(?:[2-9]1[02-9]|[2-9][02-9]1|[2-9][02-9]{2})\s*(?:[.-]\s*)?(?:[0-9]{4})(?:\s*(?:#|x\.?|ext\.?|extension)\s*(?:\d+)?)";
// The slashes are literal, as in the pattern Dapr uses: only the middle alternative matches bare numbers.
const PHONE: &str = r"/(?:(?:\+?\d{1,3}[-.\s*]?)?(?:\d\s?){8,11})|(?:(?:\+?\d{1,3}[-.\s*]?)?(?:\(?\d{2,3}\)?[-.\s*]?)?\d{2,3}[-.\s*]?\d{2,6})|(?:(?:(?:\(\+?\d{1,2}\))|(?:\+?\d{1,2}))\s*\d{2}\s*\d{3}\s*\d{4})/gm";
const EMAIL: &str =
    r"(?i)([A-Za-z0-9!#$%&'*+/=?^_{|.}~-]+@(?:[a-z0-9](?:[a-z0-9-]*[a-z0-9])?\.)+[a-z0-9](?:[a-z0-9-]*[a-z0-9])?)";
const IPV4: &str = r"(?:(?:25[0-5]|2[0-4][0-9]|[01]?[0-9][0-9]?)\.){3}(?:25[0-5]|2[0-4][0-9]|[01]?[0-9][0-9]?)";
const IPV6: &str = r"(?:(?:(?:[0-9A-Fa-f]{1,4}:){7}(?:[0-9A-Fa-f]{1,4}|:))|(?:(?:[0-9A-Fa-f]{1,4}:){6}(?::[0-9A-Fa-f]{1,4}|(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(?:\.(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)){3})|:))|(?:(?:[0-9A-Fa-f]{1,4}:){5}(?:(?:(?::[0-9A-Fa-f]{1,4}){1,2})|:(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(?:\.(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)){3})|:))|(?:(?:[0-9A-Fa-f]{1,4}:){4}(?:(?:(?::[0-9A-Fa-f]{1,4}){1,3})|(?:(?::[0-9A-Fa-f]{1,4})?:(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(?:\.(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)){3}))|:))|(?:(?:[0-9A-Fa-f]{1,4}:){3}(?:(?:(?::[0-9A-Fa-f]{1,4}){1,4})|(?:(?::[0-9A-Fa-f]{1,4}){0,2}:(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(?:\.(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)){3}))|:))|(?:(?:[0-9A-Fa-f]{1,4}:){2}(?:(?:(?::[0-9A-Fa-f]{1,4}){1,5})|(?:(?::[0-9A-Fa-f]{1,4}){0,3}:(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(?:\.(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)){3}))|:))|(?:(?:[0-9A-Fa-f]{1,4}:){1}(?:(?:(?::[0-9A-Fa-f]{1,4}){1,6})|(?:(?::[0-9A-Fa-f]{1,4}){0,4}:(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(?:\.(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)){3}))|:))|(?::(?:(?:(?::[0-9A-Fa-f]{1,4}){1,7})|(?:(?::[0-9A-Fa-f]{1,4}){0,5}:(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(?:\.(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)){3}))|:)))(?:%.+)?\s*";
const ZIP_CODE: &str = r"\b\d{5}(?:[-\s]\d{4})?\b";
const PO_BOX: &str = r"(?i)P\.? ?O\.? Box \d+";
const SSN: &str = r"(?:\d{3}-\d{2}-\d{4})";
const ISBN10: &str = r"(?:[\d]-?){9}[\dxX]";
const ISBN13: &str = r"(?:[\d]-?){12}[\dxX]";
const MAC_ADDRESS: &str = r"(([a-fA-F0-9]{2}[:-]){5}([a-fA-F0-9]{2}))";
const IBAN: &str = r"[A-Z]{2}\d{2}[A-Z0-9]{4}\d{7}([A-Z\d]?){0,16}";
const GIT_REPO: &str = r"((git|ssh|http(s)?)|(git@[\w\.]+))(:(//)?)([\w\.@:/\-~]+)(\.git)(/)?";
const STRICT_LINK: &str = r#"(?:(?:https?://)(?:[a-z0-9.\-]+|www|[a-z0-9.\-])[.](?:[^\s()<>]+|\((?:[^\s()<>]+|(?:\([^\s()<>]+\)))*\))+(?:\((?:[^\s()<>]+|(?:\([^\s()<>]+\)))*\)|[^\s!()\[\]{};:'".,<>?]))"#;

fn scrubber() -> &'static Scrubber {
    static SCRUBBER: OnceLock<Scrubber> = OnceLock::new();
    SCRUBBER.get_or_init(|| Scrubber {
        scrubbed: vec![
            entity("<STREET_ADDRESS>", &[STREET_ADDRESS]),
            entity("<CREDIT_CARD>", &[CREDIT_CARD]),
            entity("<PHONE_NUMBER>", &[PHONE_WITH_EXTENSION, PHONE]),
            entity("<EMAIL_ADDRESS>", &[EMAIL]),
            entity("<IP>", &[&format!("{IPV4}|{IPV6}")]),
            entity("<ZIP_CODE>", &[ZIP_CODE]),
            entity("<PO_BOX>", &[PO_BOX]),
            entity("<US_SSN>", &[SSN]),
            entity("<ISBN>", &[ISBN10, ISBN13]),
            entity("<MAC_ADDRESS>", &[MAC_ADDRESS]),
            entity("<IBAN>", &[IBAN]),
        ],
        ignored: vec![compile(STRICT_LINK), compile(GIT_REPO)],
    })
}

/// A found span and the token replacing it.
#[derive(Clone, Copy)]
struct Span {
    start: usize,
    end: usize,
    token: &'static str,
}

/// Earliest start first; of two starting together, the longer first (the order is stable otherwise).
fn sort_spans(spans: &mut [Span]) {
    spans.sort_by(|a, b| a.start.cmp(&b.start).then(b.end.cmp(&a.end)));
}

/// `text` with its PII replaced.
pub fn scrub(text: &str) -> String {
    let s = scrubber();
    let bytes = text.as_bytes();
    let mut spans: Vec<Span> = vec![];
    for e in &s.scrubbed {
        for re in &e.patterns {
            spans.extend(re.find_iter(bytes).filter(|m| m.start() < m.end()).map(|m| Span {
                start: m.start(),
                end: m.end(),
                token: e.token,
            }));
        }
    }
    if spans.is_empty() {
        return text.to_owned();
    }
    sort_spans(&mut spans);
    // Overlaps: a span inside the one before it goes; one that reaches past it starts after it.
    let mut kept: Vec<Span> = vec![spans[0]];
    for i in 1..spans.len() {
        let prev = spans[i - 1];
        if spans[i].start <= prev.end {
            if prev.end >= spans[i].end {
                continue;
            }
            spans[i].start = prev.end + 1;
        }
        kept.push(spans[i]);
    }
    let mut ignored: Vec<Span> = s
        .ignored
        .iter()
        .flat_map(|re| re.find_iter(bytes))
        .map(|m| Span {
            start: m.start(),
            end: m.end(),
            token: "",
        })
        .collect();
    sort_spans(&mut ignored);
    let mut scrubbable = vec![];
    let mut i = 0;
    for ig in &ignored {
        if i >= kept.len() {
            break;
        }
        while i < kept.len() && kept[i].end < ig.start {
            scrubbable.push(kept[i]);
            i += 1;
        }
        while i < kept.len() && kept[i].start <= ig.end {
            i += 1;
        }
    }
    scrubbable.extend_from_slice(&kept[i..]);

    let mut out = Vec::with_capacity(bytes.len());
    let (mut at, mut next) = (0, 0);
    while at < bytes.len() {
        if next < scrubbable.len() && at == scrubbable[next].start {
            out.extend_from_slice(scrubbable[next].token.as_bytes());
            at = scrubbable[next].end.max(at);
            next += 1;
            continue;
        }
        out.push(bytes[at]);
        at += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::scrub;

    #[test]
    fn scrubs_what_dapr_scrubs() {
        let cases = [
            (
                "well hello there, my phone number is +2222222222",
                "well hello there, my phone number is <PHONE_NUMBER>",
            ),
            (
                "well hello there, my email is test@test.com",
                "well hello there, my email is <EMAIL_ADDRESS>",
            ),
            ("well hello there from 10.8.9.1", "well hello there from <IP>"),
            ("well hello there", "well hello there"),
            ("card 4111 1111 1111 1111 ok", "card <CREDIT_CARD> ok"),
            // An SSN is also a phone number, found first (as in Dapr, where phone numbers come first).
            ("ssn 123-45-6789.", "ssn <PHONE_NUMBER>."),
            ("mac 00:1B:44:11:3A:B7 here", "mac <MAC_ADDRESS> here"),
            ("send to PO Box 1234 please", "send to <PO_BOX> please"),
            ("iban DE89370400440532013000 end", "iban <IBAN> end"),
        ];
        for (input, want) in cases {
            assert_eq!(scrub(input), want, "{input}");
        }
    }

    #[test]
    fn urls_are_left_alone() {
        let text = "see https://example.com/a/1234567890 now";
        assert_eq!(scrub(text), text);
    }

    #[test]
    fn non_ascii_text_survives() {
        assert_eq!(scrub("héllo wörld ✓"), "héllo wörld ✓");
        assert_eq!(scrub("é test@test.com ✓"), "é <EMAIL_ADDRESS> ✓");
    }
}
