//! What QEMU writes to the QMP socket: newline-delimited JSON, split into
//! lines as the client's reader does (`BufReader::lines`: `\n` or `\r\n`,
//! the connection ends at the first line that is not UTF-8), each line
//! classified by `qmp::route` (event, reply by id, or ignored), and a reply
//! decoded as `query-migrate`'s `MigrationSample` (the monitor polls it).
//!
//! Properties:
//! - an event carries the line's `event` name and `data` (null if absent)
//!   and the timestamp in microseconds (saturated, never wrapped);
//! - a reply carries the line's `id`, and its `return` value, or its
//!   error's class (GenericError if missing) and description;
//! - an ignored line is not an event nor a reply with a u64 id;
//! - allocation stays proportional to the input.

use mignet_dataplane::qemu::migration::MigrationSample;
use mignet_dataplane::qemu::qmp::{route, Routed};
use serde_json::Value;

pub fn check(data: &[u8]) {
    crate::alloc_guard::bounded("qmp", data.len(), || {
        for line in data.split(|&b| b == b'\n') {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            let Ok(line) = std::str::from_utf8(line) else {
                return; // the reader ends the connection here
            };
            check_line(line);
        }
    })
}

fn check_line(line: &str) {
    let v: Option<Value> = serde_json::from_str(line).ok();
    match route(line) {
        Some(Routed::Event(ev)) => {
            let v = v.expect("an event is JSON");
            assert_eq!(v.get("event").and_then(Value::as_str), Some(&*ev.name));
            assert_eq!(&ev.data, v.get("data").unwrap_or(&Value::Null));
            let ts = v.get("timestamp");
            let s = ts
                .and_then(|t| t.get("seconds"))
                .and_then(Value::as_u64)
                .unwrap_or(0);
            let us = ts
                .and_then(|t| t.get("microseconds"))
                .and_then(Value::as_u64)
                .unwrap_or(0);
            let want = s
                .checked_mul(1_000_000)
                .and_then(|x| x.checked_add(us))
                .unwrap_or(u64::MAX);
            assert_eq!(ev.timestamp_us, want, "timestamp of {line}");
        }
        Some(Routed::Reply(id, reply)) => {
            let v = v.expect("a reply is JSON");
            assert_eq!(v.get("id").and_then(Value::as_u64), Some(id));
            assert!(v.get("event").and_then(Value::as_str).is_none());
            match reply {
                Ok(ret) => {
                    assert_eq!(Some(&ret), v.get("return"));
                    // The monitor decodes query-migrate replies; any value
                    // must decode or fail, never panic.
                    let _ = MigrationSample::from_value(&ret);
                }
                Err((class, desc)) => {
                    let err = v.get("error").expect("an error reply has error");
                    assert_eq!(
                        class,
                        err.get("class")
                            .and_then(Value::as_str)
                            .unwrap_or("GenericError")
                    );
                    assert_eq!(desc, err.get("desc").and_then(Value::as_str).unwrap_or(""));
                }
            }
        }
        None => {
            if let Some(v) = v {
                assert!(v.get("event").and_then(Value::as_str).is_none());
                if v.get("id").and_then(Value::as_u64).is_some() {
                    assert!(v.get("return").is_none() && v.get("error").is_none());
                }
            }
        }
    }
}
