//! The UDP messages between two probes (both ends are `mignet probe` of the
//! same image, so the format is ours alone): an echo whose reply has the
//! request's size, and the barrier's "are you done with me?" question.
//!
//! Every datagram starts with [`MAGIC`] and [`VERSION`]; anything else is
//! refused on decode (a stray packet on the port must not count as an echo).

/// First bytes of every probe datagram.
pub const MAGIC: [u8; 4] = *b"MGPB";
pub const VERSION: u8 = 1;
/// Magic, version, kind.
const HEADER: usize = 6;
/// The shortest echo: header and nonce.
pub const MIN_ECHO: usize = HEADER + 8;
/// Node names are DNS subdomains (at most 253 bytes): one length byte.
const MAX_NAME: usize = u8::MAX as usize;

const ECHO: u8 = 1;
const ECHO_REPLY: u8 = 2;
const DONE_QUERY: u8 = 3;
const DONE_REPLY: u8 = 4;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// Answer with an [`Message::EchoReply`] of the same size.
    Echo {
        nonce: u64,
    },
    EchoReply {
        nonce: u64,
    },
    /// From the probe on node `from`, which has finished its checks of the
    /// receiver (it only asks then): has the receiver finished its checks
    /// of `from`?
    DoneQuery {
        from: String,
    },
    /// The answer to `from`'s question.
    DoneReply {
        from: String,
        done: bool,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("{len}-byte datagram is shorter than a probe header")]
    Short { len: usize },
    #[error("not a probe datagram (magic {found:02x?})")]
    Magic { found: [u8; 4] },
    #[error("probe protocol version {found}, this probe speaks {VERSION}")]
    Version { found: u8 },
    #[error("unknown probe message kind {kind}")]
    Kind { kind: u8 },
    #[error("probe message kind {kind} is truncated")]
    Truncated { kind: u8 },
    #[error("node name is not UTF-8")]
    Name,
}

/// `msg` as a datagram; an echo (or its reply) is padded with zeros to
/// `size` bytes when that is more than its content.
pub fn encode(msg: &Message, size: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(size.max(MIN_ECHO));
    out.extend_from_slice(&MAGIC);
    out.push(VERSION);
    let name = |out: &mut Vec<u8>, n: &str| {
        let n = &n.as_bytes()[..n.len().min(MAX_NAME)];
        out.push(n.len() as u8);
        out.extend_from_slice(n);
    };
    match msg {
        Message::Echo { nonce } | Message::EchoReply { nonce } => {
            out.push(if matches!(msg, Message::Echo { .. }) {
                ECHO
            } else {
                ECHO_REPLY
            });
            out.extend_from_slice(&nonce.to_be_bytes());
            if out.len() < size {
                out.resize(size, 0);
            }
        }
        Message::DoneQuery { from } => {
            out.push(DONE_QUERY);
            name(&mut out, from);
        }
        Message::DoneReply { from, done } => {
            out.push(DONE_REPLY);
            out.push(u8::from(*done));
            name(&mut out, from);
        }
    }
    out
}

pub fn decode(b: &[u8]) -> Result<Message, WireError> {
    if b.len() < HEADER {
        return Err(WireError::Short { len: b.len() });
    }
    let magic: [u8; 4] = [b[0], b[1], b[2], b[3]];
    if magic != MAGIC {
        return Err(WireError::Magic { found: magic });
    }
    if b[4] != VERSION {
        return Err(WireError::Version { found: b[4] });
    }
    let kind = b[5];
    let body = &b[HEADER..];
    let truncated = WireError::Truncated { kind };
    let name = |b: &[u8]| -> Result<String, WireError> {
        let (&len, rest) = b.split_first().ok_or(truncated.clone())?;
        let n = rest.get(..len as usize).ok_or(truncated.clone())?;
        String::from_utf8(n.to_vec()).map_err(|_| WireError::Name)
    };
    match kind {
        ECHO | ECHO_REPLY => {
            let n: [u8; 8] = body
                .get(..8)
                .and_then(|n| n.try_into().ok())
                .ok_or(truncated.clone())?;
            let nonce = u64::from_be_bytes(n);
            Ok(if kind == ECHO {
                Message::Echo { nonce }
            } else {
                Message::EchoReply { nonce }
            })
        }
        DONE_QUERY => Ok(Message::DoneQuery { from: name(body)? }),
        DONE_REPLY => {
            let (&done, rest) = body.split_first().ok_or(truncated.clone())?;
            Ok(Message::DoneReply {
                from: name(rest)?,
                done: done != 0,
            })
        }
        kind => Err(WireError::Kind { kind }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_message_round_trips_and_echoes_keep_their_size() {
        for (m, size) in [
            (Message::Echo { nonce: 7 }, 64),
            (Message::EchoReply { nonce: u64::MAX }, 8972),
            (Message::Echo { nonce: 1 }, 0),
            (
                Message::DoneQuery {
                    from: "node-1".into(),
                },
                0,
            ),
            (
                Message::DoneReply {
                    from: "node-2".into(),
                    done: true,
                },
                0,
            ),
            (
                Message::DoneReply {
                    from: String::new(),
                    done: false,
                },
                0,
            ),
        ] {
            let b = encode(&m, size);
            if matches!(m, Message::Echo { .. } | Message::EchoReply { .. }) {
                assert_eq!(b.len(), size.max(MIN_ECHO));
            }
            assert_eq!(decode(&b), Ok(m));
        }
    }

    #[test]
    fn stray_and_broken_datagrams_are_refused() {
        assert_eq!(decode(b"MGP"), Err(WireError::Short { len: 3 }));
        assert!(matches!(
            decode(b"XXXX\x01\x01\0\0\0\0\0\0\0\0"),
            Err(WireError::Magic { .. })
        ));
        assert_eq!(
            decode(b"MGPB\x02\x01\0\0\0\0\0\0\0\0"),
            Err(WireError::Version { found: 2 })
        );
        assert_eq!(decode(b"MGPB\x01\x09"), Err(WireError::Kind { kind: 9 }));
        assert_eq!(
            decode(b"MGPB\x01\x01\0\0"),
            Err(WireError::Truncated { kind: 1 })
        );
        assert_eq!(
            decode(b"MGPB\x01\x03\x05ab"),
            Err(WireError::Truncated { kind: 3 })
        );
        assert_eq!(decode(b"MGPB\x01\x03\x01\xff"), Err(WireError::Name));
    }
}
