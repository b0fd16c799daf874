//! The `dapr.io/enc/v1` encryption scheme (dapr/kit `schemes/enc/v1`), byte for byte: a text header (scheme name,
//! JSON manifest, HMAC of both) then the payload in 64 KiB segments, each sealed with AES-GCM or
//! ChaCha20-Poly1305 under a key derived from a random file key. Push-based, so memory stays at one segment
//! whatever the message's size; key wrapping is the caller's (an async call to a crypto provider).

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ring::{aead, hkdf, hmac};

use crate::components::crypto::WrapAlgorithm;

pub const SCHEME_NAME: &str = "dapr.io/enc/v1";
/// Plaintext bytes per segment.
pub const SEGMENT_SIZE: usize = 64 << 10;
/// The AEAD tag each segment carries.
pub const TAG_SIZE: usize = 16;
pub const NONCE_PREFIX_LEN: usize = 7;
pub const FILE_KEY_LEN: usize = 32;

/// The cipher sealing the segments.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cipher {
    AesGcm,
    ChaCha20Poly1305,
}

impl Cipher {
    /// The cipher a user names (`dapr-data-encryption-cipher`, case-insensitive).
    pub fn parse(name: &str) -> Option<Self> {
        match name.to_ascii_uppercase().as_str() {
            "AES-GCM" => Some(Cipher::AesGcm),
            "CHACHA20-POLY1305" => Some(Cipher::ChaCha20Poly1305),
            _ => None,
        }
    }

    /// The ID in the manifest's `cph` field.
    pub fn id(self) -> u8 {
        match self {
            Cipher::AesGcm => 1,
            Cipher::ChaCha20Poly1305 => 2,
        }
    }

    pub fn from_id(id: i64) -> Option<Self> {
        match id {
            1 => Some(Cipher::AesGcm),
            2 => Some(Cipher::ChaCha20Poly1305),
            _ => None,
        }
    }

    fn algorithm(self) -> &'static aead::Algorithm {
        match self {
            Cipher::AesGcm => &aead::AES_256_GCM,
            Cipher::ChaCha20Poly1305 => &aead::CHACHA20_POLY1305,
        }
    }
}

/// Why a message could not be encrypted or decrypted; the texts are dapr/kit's.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SchemeError {
    #[error("invalid header: {0}")]
    Header(&'static str),
    #[error("document's manifest does not contain a key name, and no key name was provided")]
    KeyNameMissing,
    #[error("failed to validate the document's signature")]
    Signature,
    #[error("error processing segment {0}: failed to decrypt segment")]
    Segment(u32),
    #[error("unexpected EOF")]
    UnexpectedEof,
    #[error("input stream is too large")]
    TooLarge,
    #[error("{0}")]
    Other(String),
}

/// The manifest: the header's second line.
#[derive(Clone, Debug, PartialEq)]
pub struct Manifest {
    /// The key to decrypt with (empty: the caller must name one).
    pub key_name: String,
    pub key_wrap: WrapAlgorithm,
    /// The wrapped file key.
    pub wfk: Vec<u8>,
    pub cipher: Cipher,
    pub nonce_prefix: [u8; NONCE_PREFIX_LEN],
}

impl Manifest {
    /// Compact JSON exactly as Go's `encoding/json` writes dapr/kit's manifest struct (field order, `k` omitted when
    /// empty, byte slices as padded standard base64, Go's string escapes).
    pub fn to_json(&self) -> String {
        let mut s = String::from("{");
        if !self.key_name.is_empty() {
            s.push_str("\"k\":");
            go_json_string(&self.key_name, &mut s);
            s.push(',');
        }
        s.push_str(&format!(
            "\"kw\":{},\"wfk\":\"{}\",\"cph\":{},\"np\":\"{}\"}}",
            self.key_wrap.id(),
            STANDARD.encode(&self.wfk),
            self.cipher.id(),
            STANDARD.encode(self.nonce_prefix)
        ));
        s
    }

    /// Parses and validates a manifest line.
    pub fn parse(line: &[u8]) -> Result<Manifest, SchemeError> {
        #[derive(serde::Deserialize)]
        struct Raw {
            #[serde(default)]
            k: Option<String>,
            kw: i64,
            #[serde(default)]
            wfk: Option<String>,
            cph: i64,
            #[serde(default)]
            np: Option<String>,
        }
        let invalid = SchemeError::Header("invalid manifest");
        let raw: Raw = serde_json::from_slice(line).map_err(|_| SchemeError::Header("invalid manifest"))?;
        let decode = |v: Option<String>| v.map(|v| STANDARD.decode(v)).transpose();
        let wfk = decode(raw.wfk)
            .map_err(|_| SchemeError::Header("invalid manifest"))?
            .unwrap_or_default();
        let np = decode(raw.np)
            .map_err(|_| SchemeError::Header("invalid manifest"))?
            .unwrap_or_default();
        let (Some(key_wrap), Some(cipher), Ok(nonce_prefix)) = (
            WrapAlgorithm::from_id(raw.kw),
            Cipher::from_id(raw.cph),
            <[u8; NONCE_PREFIX_LEN]>::try_from(np.as_slice()),
        ) else {
            return Err(invalid);
        };
        if wfk.is_empty() {
            return Err(invalid);
        }
        Ok(Manifest {
            key_name: raw.k.unwrap_or_default(),
            key_wrap,
            wfk,
            cipher,
            nonce_prefix,
        })
    }
}

/// A JSON string as Go's `encoding/json` escapes it (HTML-safe: `<`, `>` and `&` escaped, U+2028/U+2029 too).
fn go_json_string(v: &str, out: &mut String) {
    out.push('"');
    for c in v.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '<' | '>' | '&' | '\u{2028}' | '\u{2029}' => out.push_str(&format!("\\u{:04x}", c as u32)),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

/// HKDF output length for ring.
struct Len(usize);

impl hkdf::KeyType for Len {
    fn len(&self) -> usize {
        self.0
    }
}

/// A message's file key and what derives from it: the header's MAC key and the payload key.
pub struct FileKey {
    file_key: [u8; FILE_KEY_LEN],
    nonce_prefix: [u8; NONCE_PREFIX_LEN],
    cipher: Cipher,
    header_key: hmac::Key,
    payload: aead::LessSafeKey,
}

impl FileKey {
    /// A fresh random file key and nonce prefix.
    pub fn generate(cipher: Cipher) -> Result<FileKey, SchemeError> {
        use ring::rand::SecureRandom;
        let mut rnd = [0u8; FILE_KEY_LEN + NONCE_PREFIX_LEN];
        ring::rand::SystemRandom::new()
            .fill(&mut rnd)
            .map_err(|_| SchemeError::Other("failed to generate file key".into()))?;
        let (fk, np) = rnd.split_at(FILE_KEY_LEN);
        Ok(FileKey::import(
            fk.try_into().expect("32 bytes"),
            np.try_into().expect("7 bytes"),
            cipher,
        ))
    }

    /// The file key `file_key` with nonce prefix `nonce_prefix`.
    pub fn import(file_key: [u8; FILE_KEY_LEN], nonce_prefix: [u8; NONCE_PREFIX_LEN], cipher: Cipher) -> FileKey {
        let header_key = derive(&file_key, &[], b"header");
        let payload_key = derive(&file_key, &nonce_prefix, b"payload");
        let payload = aead::LessSafeKey::new(
            aead::UnboundKey::new(cipher.algorithm(), &payload_key).expect("a 32-byte key fits both ciphers"),
        );
        FileKey {
            file_key,
            nonce_prefix,
            cipher,
            header_key: hmac::Key::new(hmac::HMAC_SHA256, &header_key),
            payload,
        }
    }

    pub fn file_key(&self) -> &[u8; FILE_KEY_LEN] {
        &self.file_key
    }

    pub fn nonce_prefix(&self) -> [u8; NONCE_PREFIX_LEN] {
        self.nonce_prefix
    }

    pub fn cipher(&self) -> Cipher {
        self.cipher
    }

    /// The whole header for `manifest`: scheme name, manifest and MAC lines.
    pub fn header(&self, manifest: &str) -> Result<Vec<u8>, SchemeError> {
        let mut out = header_message(manifest.as_bytes());
        let mac = hmac::sign(&self.header_key, &out);
        out.extend_from_slice(STANDARD.encode(mac.as_ref()).as_bytes());
        out.push(b'\n');
        if out.len() > SEGMENT_SIZE {
            return Err(SchemeError::Other("header is too long".into()));
        }
        Ok(out)
    }

    /// Checks the header's MAC line against the manifest line as it was read.
    pub fn verify_header(&self, manifest: &[u8], mac_b64: &[u8]) -> Result<(), SchemeError> {
        let mac = STANDARD
            .decode(mac_b64)
            .map_err(|e| SchemeError::Other(format!("failed to decode header's signature: {e}")))?;
        hmac::verify(&self.header_key, &header_message(manifest), &mac).map_err(|_| SchemeError::Signature)
    }

    fn nonce(&self, seq: u32, last: bool) -> aead::Nonce {
        let mut n = [0u8; aead::NONCE_LEN];
        n[..NONCE_PREFIX_LEN].copy_from_slice(&self.nonce_prefix);
        n[NONCE_PREFIX_LEN..NONCE_PREFIX_LEN + 4].copy_from_slice(&seq.to_be_bytes());
        n[NONCE_PREFIX_LEN + 4] = u8::from(last);
        aead::Nonce::assume_unique_for_key(n)
    }
}

fn header_message(manifest: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(SCHEME_NAME.len() + manifest.len() + 100);
    m.extend_from_slice(SCHEME_NAME.as_bytes());
    m.push(b'\n');
    m.extend_from_slice(manifest);
    m.push(b'\n');
    m
}

fn derive(ikm: &[u8], salt: &[u8], info: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    hkdf::Salt::new(hkdf::HKDF_SHA256, salt)
        .extract(ikm)
        .expand(&[info], Len(32))
        .and_then(|okm| okm.fill(&mut out))
        .expect("32 bytes is a valid HKDF-SHA-256 output length");
    out
}

/// Which way [`Segments`] runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    Encrypt,
    Decrypt,
}

/// The payload as a stream: push input as it arrives, take sealed (or opened) segments out. A segment is
/// processed once at least one byte after it has arrived (or the input ended), so the last one is known.
pub struct Segments {
    key: FileKey,
    direction: Direction,
    buf: Vec<u8>,
    seq: u32,
}

impl Segments {
    pub fn new(key: FileKey, direction: Direction) -> Segments {
        Segments {
            key,
            direction,
            buf: Vec::new(),
            seq: 0,
        }
    }

    /// Input bytes per segment.
    fn segment_len(&self) -> usize {
        match self.direction {
            Direction::Encrypt => SEGMENT_SIZE,
            Direction::Decrypt => SEGMENT_SIZE + TAG_SIZE,
        }
    }

    /// Takes `data`, appending every segment it completes to `out`.
    pub fn push(&mut self, data: &[u8], out: &mut Vec<u8>) -> Result<(), SchemeError> {
        self.buf.extend_from_slice(data);
        let n = self.segment_len();
        if self.buf.len() <= n {
            return Ok(());
        }
        let mut done = 0;
        while self.buf.len() - done > n {
            let mut segment = self.buf[done..done + n].to_vec();
            self.process(&mut segment, false)?;
            out.extend_from_slice(&segment);
            done += n;
        }
        self.buf.drain(..done);
        Ok(())
    }

    /// Ends the input, appending the last segment to `out`.
    pub fn finish(&mut self, out: &mut Vec<u8>) -> Result<(), SchemeError> {
        if self.buf.is_empty() {
            // An empty message has no segment; otherwise a segment is always held back for here.
            return if self.seq == 0 {
                Ok(())
            } else {
                Err(SchemeError::UnexpectedEof)
            };
        }
        let mut segment = std::mem::take(&mut self.buf);
        self.process(&mut segment, true)?;
        out.extend_from_slice(&segment);
        Ok(())
    }

    fn process(&mut self, segment: &mut Vec<u8>, last: bool) -> Result<(), SchemeError> {
        let seq = self.seq;
        let nonce = self.key.nonce(seq, last);
        match self.direction {
            Direction::Encrypt => self
                .key
                .payload
                .seal_in_place_append_tag(nonce, aead::Aad::empty(), segment)
                .map_err(|_| SchemeError::Other(format!("error processing segment {seq}: encryption failed")))?,
            Direction::Decrypt => {
                let len = self
                    .key
                    .payload
                    .open_in_place(nonce, aead::Aad::empty(), segment)
                    .map_err(|_| SchemeError::Segment(seq))?
                    .len();
                segment.truncate(len);
            }
        }
        if !last {
            self.seq = seq.checked_add(1).ok_or(SchemeError::TooLarge)?;
        }
        Ok(())
    }
}

/// A parsed header: its manifest and MAC lines as read, and the payload bytes read past it.
#[derive(Debug)]
pub struct Header {
    pub manifest: Vec<u8>,
    pub mac: Vec<u8>,
    pub rest: Vec<u8>,
}

/// Collects a message's header from its first bytes (at most one segment's worth).
#[derive(Default)]
pub struct HeaderReader {
    buf: Vec<u8>,
    /// Where the next line starts, and the lines found so far.
    line_start: usize,
    lines: Vec<(usize, usize)>,
}

impl HeaderReader {
    /// Takes `data`; the header once its third line is complete.
    pub fn push(&mut self, data: &[u8]) -> Result<Option<Header>, SchemeError> {
        let scanned = self.buf.len();
        self.buf.extend_from_slice(data);
        let mut i = scanned;
        while i < self.buf.len() && self.lines.len() < 3 {
            if self.buf[i] == b'\n' {
                if i == self.line_start {
                    return Err(SchemeError::Header("invalid format"));
                }
                if self.lines.is_empty() && &self.buf[self.line_start..i] != SCHEME_NAME.as_bytes() {
                    return Err(SchemeError::Header("unsupported scheme"));
                }
                self.lines.push((self.line_start, i));
                self.line_start = i + 1;
            }
            i += 1;
        }
        if self.lines.len() == 3 {
            let (m, c) = (self.lines[1], self.lines[2]);
            return Ok(Some(Header {
                manifest: self.buf[m.0..m.1].to_vec(),
                mac: self.buf[c.0..c.1].to_vec(),
                rest: self.buf[self.line_start..].to_vec(),
            }));
        }
        if self.buf.len() >= SEGMENT_SIZE {
            return Err(self.incomplete());
        }
        Ok(None)
    }

    /// The input ended before the header did.
    pub fn incomplete(&self) -> SchemeError {
        match self.lines.len() {
            0 => SchemeError::Header("scheme name not found"),
            1 => SchemeError::Header("manifest not found"),
            _ => SchemeError::Header("message authentication code not found"),
        }
    }
}

/// Encrypts a whole message in memory (tests, and the Subtle-free callers that hold all of it).
pub fn encrypt_all(key: FileKey, manifest: &Manifest, plaintext: &[u8]) -> Result<Vec<u8>, SchemeError> {
    let mut out = key.header(&manifest.to_json())?;
    let mut segments = Segments::new(key, Direction::Encrypt);
    segments.push(plaintext, &mut out)?;
    segments.finish(&mut out)?;
    Ok(out)
}

/// Decrypts a whole message in memory with `unwrap` turning the manifest's wrapped key into the file key.
pub fn decrypt_all(message: &[u8], unwrap: impl FnOnce(&Manifest) -> Option<Vec<u8>>) -> Result<Vec<u8>, SchemeError> {
    let mut reader = HeaderReader::default();
    let header = reader.push(message)?.ok_or_else(|| reader.incomplete())?;
    let manifest = Manifest::parse(&header.manifest)?;
    let key = open_key(&manifest, &header, unwrap(&manifest))?;
    let mut out = vec![];
    let mut segments = Segments::new(key, Direction::Decrypt);
    segments.push(&header.rest, &mut out)?;
    segments.finish(&mut out)?;
    Ok(out)
}

/// The file key of a message from its unwrapped key (`None` when unwrapping failed), once the header's MAC proves
/// it right. As in Dapr, a key that failed to unwrap is not told apart from a wrong one: both fail the MAC.
pub fn open_key(manifest: &Manifest, header: &Header, unwrapped: Option<Vec<u8>>) -> Result<FileKey, SchemeError> {
    let file_key = unwrapped
        .and_then(|k| <[u8; FILE_KEY_LEN]>::try_from(k.as_slice()).ok())
        .unwrap_or([0; FILE_KEY_LEN]);
    let key = FileKey::import(file_key, manifest.nonce_prefix, manifest.cipher);
    key.verify_header(&header.manifest, &header.mac)?;
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(key: &FileKey, name: &str) -> Manifest {
        Manifest {
            key_name: name.into(),
            key_wrap: WrapAlgorithm::A256Kw,
            wfk: key.file_key().to_vec(),
            cipher: key.cipher(),
            nonce_prefix: key.nonce_prefix(),
        }
    }

    #[test]
    fn round_trips_every_size_around_segment_edges() {
        for cipher in [Cipher::AesGcm, Cipher::ChaCha20Poly1305] {
            for len in [
                0,
                1,
                SEGMENT_SIZE - 1,
                SEGMENT_SIZE,
                SEGMENT_SIZE + 1,
                2 * SEGMENT_SIZE,
                150_000,
            ] {
                let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
                let key = FileKey::generate(cipher).unwrap();
                let m = manifest(&key, "k");
                let enc = encrypt_all(key, &m, &data).unwrap();
                let segments = len.div_ceil(SEGMENT_SIZE);
                let header_len = enc.len() - len - segments * TAG_SIZE;
                assert!(header_len < 300, "{len}: header {header_len}");
                let dec = decrypt_all(&enc, |m| Some(m.wfk.clone())).unwrap();
                assert_eq!(dec, data, "{cipher:?} {len}");
            }
        }
    }

    #[test]
    fn pushing_byte_by_byte_matches_pushing_at_once() {
        let key = FileKey::import([3; 32], [4; 7], Cipher::AesGcm);
        let data = vec![9u8; SEGMENT_SIZE + 10];
        let mut a = vec![];
        let mut s = Segments::new(key, Direction::Encrypt);
        for b in &data {
            s.push(std::slice::from_ref(b), &mut a).unwrap();
        }
        s.finish(&mut a).unwrap();
        let key = FileKey::import([3; 32], [4; 7], Cipher::AesGcm);
        let mut b = vec![];
        let mut s = Segments::new(key, Direction::Encrypt);
        s.push(&data, &mut b).unwrap();
        s.finish(&mut b).unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn go_escapes_in_the_manifest() {
        let mut s = String::new();
        go_json_string("a<b>&\"\\\n\u{1}é\u{2028}", &mut s);
        assert_eq!(s, r#""a\u003cb\u003e\u0026\"\\\n\u0001é\u2028""#);
    }

    #[test]
    fn bad_headers_are_named() {
        let mut r = HeaderReader::default();
        assert_eq!(
            r.push(b"dapr.io/enc/v2\n").unwrap_err(),
            SchemeError::Header("unsupported scheme")
        );
        let mut r = HeaderReader::default();
        assert_eq!(
            r.push(b"dapr.io/enc/v1\n\n").unwrap_err(),
            SchemeError::Header("invalid format")
        );
        let mut r = HeaderReader::default();
        assert!(r.push(b"dapr.io/enc/v1\n{}").unwrap().is_none());
        assert_eq!(r.incomplete(), SchemeError::Header("manifest not found"));
        let mut r = HeaderReader::default();
        assert_eq!(
            r.push(&vec![b'a'; SEGMENT_SIZE]).unwrap_err(),
            SchemeError::Header("scheme name not found")
        );
        assert_eq!(
            Manifest::parse(b"{\"kw\":1,\"cph\":1}").unwrap_err(),
            SchemeError::Header("invalid manifest")
        );
    }

    #[test]
    fn wrong_key_and_tampering_fail() {
        let key = FileKey::generate(Cipher::AesGcm).unwrap();
        let m = manifest(&key, "k");
        let enc = encrypt_all(key, &m, &[5u8; 100_000]).unwrap();
        assert_eq!(
            decrypt_all(&enc, |_| Some(vec![0; 32])).unwrap_err(),
            SchemeError::Signature
        );
        assert_eq!(decrypt_all(&enc, |_| None).unwrap_err(), SchemeError::Signature);
        let mut t = enc.clone();
        let n = t.len();
        t[n - 1] ^= 1;
        assert_eq!(
            decrypt_all(&t, |m| Some(m.wfk.clone())).unwrap_err(),
            SchemeError::Segment(1)
        );
        // Dropping the last segment turns segment 0 into a "last" one, which its nonce does not match.
        let cut = &enc[..n - (100_000 - SEGMENT_SIZE) - TAG_SIZE];
        assert_eq!(
            decrypt_all(cut, |m| Some(m.wfk.clone())).unwrap_err(),
            SchemeError::Segment(0)
        );
    }
}
