//! TLS record protection done in place, in the proxy's own buffers.
//!
//! Why: rustls' buffered connection copies every byte three to four times on
//! its way through (plaintext into a fresh record `Vec`, ciphertext through its
//! deframer, decrypted plaintext into a queue and out again); on two shared
//! cores those copies cost as much as the AES-GCM itself. kTLS would move the
//! record layer into the kernel, but the kernel we run on is built without it.
//! So rustls still does the whole handshake (certificates, role check,
//! version and suite negotiation), hands over the traffic secrets through its
//! kTLS interface (`rustls::kernel`), and this module seals and opens the
//! records exactly as RFC 8446 section 5 (TLS 1.3) and RFC 5288 / RFC 7905
//! (TLS 1.2 AES-GCM / ChaCha20-Poly1305) define them, with ring's AEADs.
//! Plaintext is read straight into the record's payload slot and encrypted
//! there; ciphertext is decrypted where it was received.
//!
//! Pure: no I/O. Sequence numbers live here and nowhere else, so a nonce is
//! never used twice; a sealer refuses to go past the suite's confidentiality
//! limit (the caller updates the keys or ends the connection before that).

use ring::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey, NONCE_LEN};
use rustls::{ConnectionTrafficSecrets, ProtocolVersion};

/// Record header: type, legacy version, length.
pub const HEADER_LEN: usize = 5;
/// Largest plaintext fragment (RFC 8446 5.1, RFC 5246 6.2.1).
pub const MAX_FRAGMENT: usize = 1 << 14;
/// AEAD tag of every suite we support.
pub const TAG_LEN: usize = 16;
/// TLS 1.2 AES-GCM carries 8 bytes of explicit nonce per record.
pub const GCM_EXPLICIT_LEN: usize = 8;
/// Largest ciphertext we accept: TLS 1.3 allows 2^14 + 256, TLS 1.2 2^14 + 2048.
pub const MAX_CIPHERTEXT: usize = MAX_FRAGMENT + 2048;
/// Largest whole record on the wire.
pub const MAX_RECORD: usize = HEADER_LEN + MAX_CIPHERTEXT;

pub const CONTENT_ALERT: u8 = 21;
pub const CONTENT_HANDSHAKE: u8 = 22;
pub const CONTENT_APPLICATION_DATA: u8 = 23;

/// Key updates start this many records before the suite's confidentiality
/// limit, so the update is never late (the limit is 2^24 records for AES-GCM,
/// about 256 GiB of full records).
pub const KEY_UPDATE_MARGIN: u64 = 1 << 16;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("unsupported protocol version {0:?} for in-place records")]
    UnsupportedVersion(ProtocolVersion),
    #[error("unsupported traffic secrets (cipher suite) for in-place records")]
    UnsupportedSuite,
    #[error("record of {len} bytes exceeds the limit")]
    TooLarge { len: usize },
    #[error("record of {len} bytes is too short for its protection")]
    TooShort { len: usize },
    #[error("record has unexpected outer content type {0}")]
    UnexpectedType(u8),
    #[error("record failed authentication (bad_record_mac)")]
    BadRecordMac,
    #[error("record holds no content type (all padding)")]
    NoContentType,
    #[error("sequence number reached the confidentiality limit without a key update")]
    ConfidentialityLimit,
}

/// How records are protected: which version's construction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Construction {
    /// RFC 8446 5.2: nonce = iv ^ seq, AAD = header, inner content type.
    Tls13,
    /// RFC 5288: nonce = salt || explicit (sent), AAD = seq || type || version || length.
    Tls12Gcm,
    /// RFC 7905: nonce = iv ^ seq, AAD as for GCM, nothing explicit.
    Tls12Chacha,
}

/// Keys and sequence number for one direction.
pub struct DirectionKeys {
    key: LessSafeKey,
    iv: [u8; NONCE_LEN],
    seq: u64,
    construction: Construction,
    /// Records this key may protect (the suite's confidentiality limit).
    limit: u64,
}

impl std::fmt::Debug for DirectionKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material.
        f.debug_struct("DirectionKeys")
            .field("seq", &self.seq)
            .field("construction", &self.construction)
            .finish_non_exhaustive()
    }
}

impl DirectionKeys {
    /// Keys for `version` from rustls' extracted `(seq, secrets)`.
    pub fn new(
        version: ProtocolVersion,
        seq: u64,
        secrets: ConnectionTrafficSecrets,
    ) -> Result<Self, RecordError> {
        let (alg, key, iv, limit) = match &secrets {
            ConnectionTrafficSecrets::Aes128Gcm { key, iv } => {
                (&aead::AES_128_GCM, key, iv, 1 << 24)
            }
            ConnectionTrafficSecrets::Aes256Gcm { key, iv } => {
                (&aead::AES_256_GCM, key, iv, 1 << 24)
            }
            ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv } => {
                (&aead::CHACHA20_POLY1305, key, iv, u64::MAX)
            }
            _ => return Err(RecordError::UnsupportedSuite),
        };
        Self::from_raw(version, seq, alg, key.as_ref(), iv.as_ref(), limit)
    }

    fn from_raw(
        version: ProtocolVersion,
        seq: u64,
        alg: &'static aead::Algorithm,
        key: &[u8],
        iv: &[u8],
        limit: u64,
    ) -> Result<Self, RecordError> {
        let construction = match version {
            ProtocolVersion::TLSv1_3 => Construction::Tls13,
            ProtocolVersion::TLSv1_2 if alg == &aead::CHACHA20_POLY1305 => {
                Construction::Tls12Chacha
            }
            ProtocolVersion::TLSv1_2 => Construction::Tls12Gcm,
            other => return Err(RecordError::UnsupportedVersion(other)),
        };
        let key = UnboundKey::new(alg, key).map_err(|_| RecordError::UnsupportedSuite)?;
        let iv: [u8; NONCE_LEN] = iv.try_into().map_err(|_| RecordError::UnsupportedSuite)?;
        Ok(DirectionKeys {
            key: LessSafeKey::new(key),
            iv,
            seq,
            construction,
            limit,
        })
    }

    /// Pretend the confidentiality limit is `limit` records (tests make key
    /// updates happen early with it).
    pub fn set_limit(&mut self, limit: u64) {
        self.limit = limit;
    }

    #[cfg(test)]
    fn with_limit(mut self, limit: u64) -> Self {
        self.limit = limit;
        self
    }

    pub fn seq(&self) -> u64 {
        self.seq
    }

    pub fn is_tls13(&self) -> bool {
        self.construction == Construction::Tls13
    }

    /// TLS 1.3: the key should be updated before sealing another record.
    pub fn wants_key_update(&self) -> bool {
        self.is_tls13() && self.seq.saturating_add(KEY_UPDATE_MARGIN) >= self.limit
    }

    fn nonce(&self) -> [u8; NONCE_LEN] {
        let mut n = self.iv;
        for (b, s) in n[4..].iter_mut().zip(self.seq.to_be_bytes()) {
            *b ^= s;
        }
        n
    }

    /// Bytes in front of the plaintext in a record slot.
    pub fn prefix_len(&self) -> usize {
        match self.construction {
            Construction::Tls12Gcm => HEADER_LEN + GCM_EXPLICIT_LEN,
            _ => HEADER_LEN,
        }
    }

    /// Bytes after the plaintext (inner content type, tag).
    pub fn suffix_len(&self) -> usize {
        match self.construction {
            Construction::Tls13 => 1 + TAG_LEN,
            _ => TAG_LEN,
        }
    }

    /// Seal one record in place. `slot` is `prefix_len()` bytes of room, then
    /// `len` plaintext bytes, then at least `suffix_len()` bytes of room.
    /// Returns the record's length on the wire (from `slot[0]`).
    pub fn seal(&mut self, typ: u8, slot: &mut [u8], len: usize) -> Result<usize, RecordError> {
        if len > MAX_FRAGMENT {
            return Err(RecordError::TooLarge { len });
        }
        if self.seq >= self.limit {
            return Err(RecordError::ConfidentialityLimit);
        }
        let prefix = self.prefix_len();
        let total = prefix + len + self.suffix_len();
        if slot.len() < total {
            return Err(RecordError::TooShort { len: slot.len() });
        }
        let nonce = self.nonce();
        let wire_len = total - HEADER_LEN;
        let (outer, aad) = match self.construction {
            Construction::Tls13 => {
                slot[prefix + len] = typ;
                let header = header(CONTENT_APPLICATION_DATA, wire_len);
                (CONTENT_APPLICATION_DATA, Aad13::Header(header))
            }
            Construction::Tls12Gcm | Construction::Tls12Chacha => {
                (typ, Aad13::Tls12(tls12_aad(self.seq, typ, len)))
            }
        };
        slot[..HEADER_LEN].copy_from_slice(&header(outer, wire_len));
        if self.construction == Construction::Tls12Gcm {
            slot[HEADER_LEN..prefix].copy_from_slice(&nonce[4..]);
        }
        let body_end = match self.construction {
            Construction::Tls13 => prefix + len + 1,
            _ => prefix + len,
        };
        let tag = self
            .key
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                aad.as_aad(),
                &mut slot[prefix..body_end],
            )
            .map_err(|_| RecordError::BadRecordMac)?;
        slot[body_end..body_end + TAG_LEN].copy_from_slice(tag.as_ref());
        self.seq += 1;
        Ok(total)
    }

    /// Open one whole record in place (`record` = header + body). Returns the
    /// inner content type and the plaintext's range within `record`.
    pub fn open(&mut self, record: &mut [u8]) -> Result<(u8, std::ops::Range<usize>), RecordError> {
        let body_len = record.len().saturating_sub(HEADER_LEN);
        if record.len() < HEADER_LEN || body_len > MAX_CIPHERTEXT {
            return Err(RecordError::TooLarge { len: record.len() });
        }
        if self.seq >= self.limit {
            return Err(RecordError::ConfidentialityLimit);
        }
        let outer = record[0];
        let mut nonce = self.nonce();
        let (start, aad) = match self.construction {
            Construction::Tls13 => {
                // Every protected TLS 1.3 record claims to be application data.
                if outer != CONTENT_APPLICATION_DATA {
                    return Err(RecordError::UnexpectedType(outer));
                }
                if body_len < TAG_LEN + 1 {
                    return Err(RecordError::TooShort { len: body_len });
                }
                let mut h = [0u8; HEADER_LEN];
                h.copy_from_slice(&record[..HEADER_LEN]);
                (HEADER_LEN, Aad13::Header(h))
            }
            Construction::Tls12Gcm => {
                if body_len < GCM_EXPLICIT_LEN + TAG_LEN {
                    return Err(RecordError::TooShort { len: body_len });
                }
                nonce[4..].copy_from_slice(&record[HEADER_LEN..HEADER_LEN + GCM_EXPLICIT_LEN]);
                let plain = body_len - GCM_EXPLICIT_LEN - TAG_LEN;
                (
                    HEADER_LEN + GCM_EXPLICIT_LEN,
                    Aad13::Tls12(tls12_aad(self.seq, outer, plain)),
                )
            }
            Construction::Tls12Chacha => {
                if body_len < TAG_LEN {
                    return Err(RecordError::TooShort { len: body_len });
                }
                (
                    HEADER_LEN,
                    Aad13::Tls12(tls12_aad(self.seq, outer, body_len - TAG_LEN)),
                )
            }
        };
        let plain_len = self
            .key
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                aad.as_aad(),
                &mut record[start..],
            )
            .map_err(|_| RecordError::BadRecordMac)?
            .len();
        self.seq += 1;
        match self.construction {
            Construction::Tls13 => {
                // Strip zero padding; the last non-zero byte is the real type.
                let inner = &record[start..start + plain_len];
                let end = inner
                    .iter()
                    .rposition(|&b| b != 0)
                    .ok_or(RecordError::NoContentType)?;
                Ok((inner[end], start..start + end))
            }
            _ => Ok((outer, start..start + plain_len)),
        }
    }
}

enum Aad13 {
    Header([u8; HEADER_LEN]),
    Tls12([u8; 13]),
}

impl Aad13 {
    fn as_aad(&self) -> Aad<&[u8]> {
        match self {
            Aad13::Header(h) => Aad::from(&h[..]),
            Aad13::Tls12(a) => Aad::from(&a[..]),
        }
    }
}

fn header(typ: u8, len: usize) -> [u8; HEADER_LEN] {
    let l = (len as u16).to_be_bytes();
    [typ, 0x03, 0x03, l[0], l[1]]
}

fn tls12_aad(seq: u64, typ: u8, len: usize) -> [u8; 13] {
    let mut a = [0u8; 13];
    a[..8].copy_from_slice(&seq.to_be_bytes());
    a[8] = typ;
    a[9] = 0x03;
    a[10] = 0x03;
    a[11..].copy_from_slice(&(len as u16).to_be_bytes());
    a
}

/// Length of the first whole record in `buf`, if it is all there; an error
/// for a header announcing more than any record may hold.
pub fn complete_record(buf: &[u8]) -> Result<Option<usize>, RecordError> {
    if buf.len() < HEADER_LEN {
        return Ok(None);
    }
    let body = u16::from_be_bytes([buf[3], buf[4]]) as usize;
    if body > MAX_CIPHERTEXT {
        return Err(RecordError::TooLarge {
            len: HEADER_LEN + body,
        });
    }
    Ok((buf.len() >= HEADER_LEN + body).then_some(HEADER_LEN + body))
}

/// A TLS 1.3 KeyUpdate handshake message (RFC 8446 4.6.3).
pub fn key_update_message(update_requested: bool) -> [u8; 5] {
    [24, 0, 0, 1, update_requested as u8]
}

/// What a post-handshake handshake record asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PostHandshake {
    /// KeyUpdate: switch the receive key; `true` = the peer asks us to update ours too.
    KeyUpdate { update_requested: bool },
    /// NewSessionTicket: resumption is off here, so nothing to keep.
    Ignore,
}

/// Parse the handshake messages of one decrypted record.
pub fn parse_post_handshake(msg: &[u8]) -> Result<Vec<PostHandshake>, String> {
    let mut out = Vec::new();
    let mut rest = msg;
    while !rest.is_empty() {
        if rest.len() < 4 {
            return Err("truncated handshake message header".into());
        }
        let len = u32::from_be_bytes([0, rest[1], rest[2], rest[3]]) as usize;
        if rest.len() < 4 + len {
            return Err("handshake message split across records".into());
        }
        let body = &rest[4..4 + len];
        match rest[0] {
            24 => match body {
                [0] => out.push(PostHandshake::KeyUpdate {
                    update_requested: false,
                }),
                [1] => out.push(PostHandshake::KeyUpdate {
                    update_requested: true,
                }),
                _ => return Err("malformed KeyUpdate".into()),
            },
            4 => out.push(PostHandshake::Ignore),
            other => return Err(format!("unexpected post-handshake message type {other}")),
        }
        rest = &rest[4 + len..];
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(v: ProtocolVersion, kind: u8) -> (DirectionKeys, DirectionKeys) {
        let (alg, key_len): (&'static aead::Algorithm, usize) = match kind {
            0 => (&aead::AES_128_GCM, 16),
            1 => (&aead::AES_256_GCM, 32),
            _ => (&aead::CHACHA20_POLY1305, 32),
        };
        let key = vec![1u8; key_len];
        let make = || DirectionKeys::from_raw(v, 0, alg, &key, &[7u8; 12], u64::MAX).unwrap();
        (make(), make())
    }

    #[test]
    fn seal_then_open_round_trips_for_every_version_and_suite() {
        for v in [ProtocolVersion::TLSv1_3, ProtocolVersion::TLSv1_2] {
            for kind in 0..3 {
                let (mut tx, mut rx) = pair(v, kind);
                for len in [0usize, 1, 1000, MAX_FRAGMENT] {
                    let mut slot = vec![0u8; tx.prefix_len() + len + tx.suffix_len()];
                    let p = tx.prefix_len();
                    for (i, b) in slot[p..p + len].iter_mut().enumerate() {
                        *b = (i % 251) as u8;
                    }
                    let n = tx.seal(CONTENT_APPLICATION_DATA, &mut slot, len).unwrap();
                    assert_eq!(complete_record(&slot).unwrap(), Some(n));
                    let (typ, range) = rx.open(&mut slot[..n]).unwrap();
                    assert_eq!(typ, CONTENT_APPLICATION_DATA);
                    assert_eq!(range.len(), len, "{v:?} suite {kind}");
                    assert!(slot[range]
                        .iter()
                        .enumerate()
                        .all(|(i, &b)| b == (i % 251) as u8));
                }
                assert_eq!((tx.seq(), rx.seq()), (4, 4));
            }
        }
    }

    #[test]
    fn tampering_reordering_and_wrong_type_are_refused() {
        let (mut tx, mut rx) = pair(ProtocolVersion::TLSv1_3, 0);
        let mut a = vec![0u8; 5 + 10 + 17];
        let mut b = a.clone();
        tx.seal(CONTENT_APPLICATION_DATA, &mut a, 10).unwrap();
        tx.seal(CONTENT_APPLICATION_DATA, &mut b, 10).unwrap();
        // Out of order: b was sealed with seq 1, the receiver expects 0.
        assert_eq!(rx.open(&mut b.clone()), Err(RecordError::BadRecordMac));
        let mut flipped = a.clone();
        flipped[9] ^= 1;
        let (_, mut rx2) = pair(ProtocolVersion::TLSv1_3, 0);
        assert_eq!(rx2.open(&mut flipped), Err(RecordError::BadRecordMac));
        let mut retyped = a.clone();
        retyped[0] = CONTENT_HANDSHAKE;
        assert_eq!(
            rx.open(&mut retyped),
            Err(RecordError::UnexpectedType(CONTENT_HANDSHAKE))
        );
        // The header is authenticated too (the length is part of the AAD).
        let mut bad_version = a.clone();
        bad_version[2] = 1;
        assert_eq!(rx.open(&mut bad_version), Err(RecordError::BadRecordMac));
        assert!(rx.open(&mut a).is_ok());
    }

    #[test]
    fn tls13_inner_type_and_padding() {
        let (mut tx, mut rx) = pair(ProtocolVersion::TLSv1_3, 2);
        let mut slot = vec![0u8; 5 + 2 + 17];
        slot[5..7].copy_from_slice(&[1, 0]);
        let n = tx.seal(CONTENT_ALERT, &mut slot, 2).unwrap();
        assert_eq!(
            slot[0], CONTENT_APPLICATION_DATA,
            "outer type hides the inner one"
        );
        let (typ, range) = rx.open(&mut slot[..n]).unwrap();
        assert_eq!((typ, &slot[range]), (CONTENT_ALERT, &[1u8, 0][..]));
    }

    #[test]
    fn confidentiality_limit_is_enforced_and_announced() {
        let (tx, _) = pair(ProtocolVersion::TLSv1_3, 0);
        let mut tx = tx.with_limit(KEY_UPDATE_MARGIN + 1);
        assert!(!tx.wants_key_update());
        let mut slot = vec![0u8; 5 + 17];
        tx.seal(CONTENT_APPLICATION_DATA, &mut slot, 0).unwrap();
        assert!(tx.wants_key_update());
        let mut tiny = pair(ProtocolVersion::TLSv1_3, 0).0.with_limit(1);
        tiny.seal(CONTENT_APPLICATION_DATA, &mut slot, 0).unwrap();
        assert_eq!(
            tiny.seal(CONTENT_APPLICATION_DATA, &mut slot, 0),
            Err(RecordError::ConfidentialityLimit)
        );
    }

    #[test]
    fn oversized_headers_and_post_handshake_messages() {
        assert_eq!(complete_record(&[23, 3, 3, 0]).unwrap(), None);
        assert_eq!(complete_record(&[23, 3, 3, 0, 2, 9]).unwrap(), None);
        assert_eq!(complete_record(&[23, 3, 3, 0, 1, 9]).unwrap(), Some(6));
        assert!(complete_record(&[23, 3, 3, 0xff, 0xff]).is_err());
        assert_eq!(
            parse_post_handshake(&key_update_message(true)).unwrap(),
            vec![PostHandshake::KeyUpdate {
                update_requested: true
            }]
        );
        assert!(parse_post_handshake(&[24, 0, 0, 1, 2]).is_err());
        assert!(parse_post_handshake(&[24, 0, 0, 2, 0]).is_err());
        assert!(parse_post_handshake(&[20, 0, 0, 0]).is_err());
        assert_eq!(
            parse_post_handshake(&[4, 0, 0, 1, 9]).unwrap(),
            vec![PostHandshake::Ignore]
        );
    }
}
