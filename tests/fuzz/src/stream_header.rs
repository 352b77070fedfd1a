//! What a target agent reads from a migration connection before the
//! payload, after rustls' handshake: TLS records (framed by
//! `record::complete_record`, opened by `DirectionKeys::open`), the
//! post-handshake messages inside handshake records
//! (`record::parse_post_handshake`), and the first 8 plaintext bytes, the
//! stream header (`proxy::parse_stream_header`). The harness walks them in
//! the order `session.rs`' `Downstream::open_records` does.
//!
//! Input: byte 0 picks the protocol version and suite (bit 7: append the
//! rest as raw wire bytes, i.e. hostile ciphertext and headers); otherwise
//! the rest is a sequence of `(content type, u16 length, plaintext)`
//! records the harness seals with known keys, so the fuzzer reaches the
//! parsers behind the AEAD.
//!
//! Properties:
//! - framing never announces more than `MAX_RECORD` and never claims a
//!   record the buffer does not hold; nothing allocates in proportion to a
//!   length field (only to the input);
//! - a sealed record opens to the same type and plaintext (round trip);
//! - post-handshake parsing yields at most one message per 4 bytes and
//!   KeyUpdates re-encode to the bytes they came from;
//! - a stream header parses iff it starts with the magic, and then
//!   `stream_header(seq)` gives back the same 8 bytes.

use mignet_dataplane::proxy::{parse_stream_header, stream_header, STREAM_MAGIC};
use mignet_dataplane::record::{
    complete_record, key_update_message, parse_post_handshake, DirectionKeys, PostHandshake,
    RecordError, CONTENT_ALERT, CONTENT_APPLICATION_DATA, CONTENT_HANDSHAKE, HEADER_LEN,
    MAX_FRAGMENT, MAX_RECORD,
};
use rustls::crypto::cipher::{AeadKey, Iv};
use rustls::{ConnectionTrafficSecrets, ProtocolVersion};

fn keys(selector: u8) -> (ProtocolVersion, DirectionKeys) {
    let key = AeadKey::from([0x42u8; 32]);
    let iv = Iv::from([7u8; 12]);
    let secrets = if selector & 1 == 0 {
        ConnectionTrafficSecrets::Aes256Gcm { key, iv }
    } else {
        ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv }
    };
    let version = if selector & 2 == 0 {
        ProtocolVersion::TLSv1_3
    } else {
        ProtocolVersion::TLSv1_2
    };
    let k = DirectionKeys::new(version, 0, secrets).expect("fixed keys are valid");
    (version, k)
}

fn check_header(h: &[u8; 8]) {
    match parse_stream_header(h) {
        Ok(seq) => {
            assert_eq!(h[..4], STREAM_MAGIC);
            assert_eq!(&stream_header(seq), h);
        }
        Err(reason) => {
            assert_ne!(h[..4], STREAM_MAGIC);
            assert!(reason.contains("magic"), "{reason}");
        }
    }
}

fn check_post_handshake(msg: &[u8]) -> bool {
    match parse_post_handshake(msg) {
        Ok(msgs) => {
            assert!(msgs.len() <= msg.len() / 4);
            if msgs
                .iter()
                .all(|m| matches!(m, PostHandshake::KeyUpdate { .. }))
            {
                let again: Vec<u8> = msgs
                    .iter()
                    .flat_map(|m| match m {
                        PostHandshake::KeyUpdate { update_requested } => {
                            key_update_message(*update_requested)
                        }
                        PostHandshake::Ignore => unreachable!(),
                    })
                    .collect();
                assert_eq!(again, msg, "KeyUpdates do not re-encode");
            }
            // A KeyUpdate switches the receive key, which only rustls' key
            // schedule can derive: the walk stops there.
            !msgs
                .iter()
                .any(|m| matches!(m, PostHandshake::KeyUpdate { .. }))
        }
        Err(_) => false,
    }
}

pub fn check(data: &[u8]) {
    crate::alloc_guard::bounded("stream_header", data.len(), || walk(data));
}

fn walk(data: &[u8]) {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    // The pure parsers on the raw bytes too.
    if let Some(h) = rest.first_chunk::<8>() {
        check_header(h);
    }
    check_post_handshake(rest);

    let (version, mut tx) = keys(selector);
    let (_, mut rx) = keys(selector);
    let mut wire = Vec::new();
    // What each sealed record should open to, in order.
    let mut sent: Vec<(u8, Vec<u8>)> = Vec::new();
    if selector & 0x80 != 0 {
        wire.extend_from_slice(rest);
    } else {
        let mut input = rest;
        while let [typ, l0, l1, tail @ ..] = input {
            let len = usize::from(u16::from_be_bytes([*l0, *l1])).min(tail.len());
            let (plain, next) = tail.split_at(len);
            input = next;
            if *typ == 0 {
                continue; // no content type: TLS 1.3 would read it as padding
            }
            let p = tx.prefix_len();
            let mut slot = vec![0u8; p + plain.len() + tx.suffix_len()];
            slot[p..p + plain.len()].copy_from_slice(plain);
            match tx.seal(*typ, &mut slot, plain.len()) {
                Ok(n) => {
                    assert!(n <= MAX_RECORD);
                    wire.extend_from_slice(&slot[..n]);
                    sent.push((*typ, plain.to_vec()));
                }
                Err(e) => assert!(plain.len() > MAX_FRAGMENT, "seal: {e:?}"),
            }
        }
    }

    // The receiving side.
    let mut at = 0;
    let mut early = Vec::new();
    let mut opened = 0;
    loop {
        let buf = &wire[at..];
        let len = match complete_record(buf) {
            Ok(Some(len)) => len,
            Ok(None) => {
                if buf.len() >= HEADER_LEN {
                    let body = usize::from(u16::from_be_bytes([buf[3], buf[4]]));
                    assert!(buf.len() < HEADER_LEN + body, "a whole record was not seen");
                }
                break;
            }
            Err(e) => {
                assert!(
                    matches!(e, RecordError::TooLarge { len } if len > MAX_RECORD),
                    "{e:?}"
                );
                break;
            }
        };
        assert!((HEADER_LEN..=MAX_RECORD).contains(&len) && len <= buf.len());
        let mut record = wire[at..at + len].to_vec();
        at += len;
        let (typ, range) = match rx.open(&mut record) {
            Ok(x) => x,
            Err(_) => {
                // Only raw (forged) bytes may fail to open.
                assert!(opened >= sent.len(), "a sealed record did not open");
                break;
            }
        };
        if let Some((want_typ, want)) = sent.get(opened) {
            assert_eq!((typ, &record[range.clone()]), (*want_typ, &want[..]));
        }
        opened += 1;
        let plain = &record[range];
        match typ {
            CONTENT_APPLICATION_DATA => {
                if early.len() < 8 {
                    early.extend_from_slice(plain);
                    if let Some(h) = early.first_chunk::<8>() {
                        check_header(h);
                    }
                }
            }
            CONTENT_ALERT => break,
            CONTENT_HANDSHAKE if version == ProtocolVersion::TLSv1_3 => {
                if !check_post_handshake(plain) {
                    break;
                }
            }
            _ => break,
        }
    }
}
