//! A QMP (QEMU Machine Protocol) client over a unix socket.
//!
//! QMP is line-delimited JSON: on connect QEMU sends a greeting
//! (`{"QMP": {...}}`), the client must send `qmp_capabilities` before any
//! other command, then each request `{"execute": ..., "id": ...}` gets exactly
//! one reply `{"return": ...}` or `{"error": {"class", "desc"}}` carrying the
//! same `id`. Asynchronous events (`{"event": ...}`) can arrive at any time,
//! also between a request and its reply, so one reader task routes every line:
//! replies to the waiting caller by id, events to a broadcast channel that
//! ends (`Closed`) when the connection does.
//!
//! QEMU serves one QMP client per socket at a time; a second connection waits
//! until the first closes.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::OwnedWriteHalf;
use tokio::net::UnixStream;
use tokio::sync::{broadcast, oneshot};

/// Per-command timeout unless the caller asks for another.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    #[error("cannot connect to QMP socket {path:?}")]
    Connect {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("QMP socket {path:?}: bad greeting: {detail}")]
    Greeting { path: PathBuf, detail: String },
    #[error("QMP {command}: write failed")]
    Write {
        command: String,
        #[source]
        source: std::io::Error,
    },
    #[error("QMP {command}: no reply within {after:?}")]
    Timeout { command: String, after: Duration },
    #[error("QMP {command} failed: {class}: {desc}")]
    Command {
        command: String,
        class: String,
        desc: String,
    },
    #[error("QMP {command}: connection closed before the reply")]
    Disconnected { command: String },
    #[error("QMP {command}: cannot decode reply: {detail}")]
    Decode { command: String, detail: String },
}

/// An asynchronous QMP event, e.g. `MIGRATION`, `STOP`, `RESUME`.
#[derive(Debug, Clone, PartialEq)]
pub struct QmpEvent {
    pub name: String,
    pub data: Value,
    /// QEMU's `timestamp` as microseconds since the epoch (0 if absent).
    pub timestamp_us: u64,
}

/// A reply: the `return` value, or the error's `(class, desc)`.
pub type Reply = Result<Value, (String, String)>;
type Pending = Arc<Mutex<PendingMap>>;

#[derive(Default)]
struct PendingMap {
    waiters: HashMap<u64, oneshot::Sender<Reply>>,
    /// Set by the reader when the connection is gone: new requests fail at
    /// once instead of waiting for their timeout.
    closed: bool,
}

/// A connected, capabilities-negotiated QMP session.
pub struct QmpClient {
    path: PathBuf,
    writer: tokio::sync::Mutex<OwnedWriteHalf>,
    pending: Pending,
    next_id: AtomicU64,
    /// Weak: the reader task holds the only strong sender, so subscribers
    /// see `Closed` once the connection is gone (QEMU exited) rather than
    /// waiting forever.
    events: broadcast::WeakSender<QmpEvent>,
    greeting: Value,
    reader: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for QmpClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QmpClient")
            .field("path", &self.path)
            .finish()
    }
}

impl QmpClient {
    /// Connects, reads the greeting and negotiates capabilities.
    pub async fn connect(path: &Path) -> Result<QmpClient, QmpError> {
        let stream = UnixStream::connect(path)
            .await
            .map_err(|source| QmpError::Connect {
                path: path.to_path_buf(),
                source,
            })?;
        let (read, write) = stream.into_split();
        let mut lines = BufReader::new(read).lines();
        let greeting_line = tokio::time::timeout(DEFAULT_TIMEOUT, lines.next_line())
            .await
            .map_err(|_| QmpError::Greeting {
                path: path.to_path_buf(),
                detail: format!("none within {DEFAULT_TIMEOUT:?}"),
            })?
            .map_err(|e| QmpError::Greeting {
                path: path.to_path_buf(),
                detail: e.to_string(),
            })?
            .ok_or_else(|| QmpError::Greeting {
                path: path.to_path_buf(),
                detail: "connection closed".into(),
            })?;
        let greeting: Value =
            serde_json::from_str(&greeting_line).map_err(|e| QmpError::Greeting {
                path: path.to_path_buf(),
                detail: format!("{e}: {greeting_line}"),
            })?;
        if greeting.get("QMP").is_none() {
            return Err(QmpError::Greeting {
                path: path.to_path_buf(),
                detail: format!("no QMP key: {greeting_line}"),
            });
        }
        let pending: Pending = Arc::default();
        let (events, _) = broadcast::channel(256);
        let weak_events = events.downgrade();
        let reader = tokio::spawn(read_loop(lines, pending.clone(), events));
        let client = QmpClient {
            path: path.to_path_buf(),
            writer: tokio::sync::Mutex::new(write),
            pending,
            next_id: AtomicU64::new(1),
            events: weak_events,
            greeting,
            reader,
        };
        client.execute("qmp_capabilities", None).await?;
        Ok(client)
    }

    /// Connects, retrying while the socket is not there yet or refuses
    /// (QEMU still starting, or a previous client still attached).
    pub async fn connect_retry(path: &Path, timeout: Duration) -> Result<QmpClient, QmpError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match QmpClient::connect(path).await {
                Ok(c) => return Ok(c),
                Err(e) if tokio::time::Instant::now() >= deadline => return Err(e),
                Err(QmpError::Connect { .. }) => {
                    tokio::time::sleep(Duration::from_millis(50)).await
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// The greeting QEMU sent (`{"QMP": {"version": ..., "capabilities": ...}}`).
    pub fn greeting(&self) -> &Value {
        &self.greeting
    }

    /// QEMU's version as (major, minor, micro), from the greeting.
    pub fn qemu_version(&self) -> Option<(u64, u64, u64)> {
        let v = self.greeting.pointer("/QMP/version/qemu")?;
        Some((
            v.get("major")?.as_u64()?,
            v.get("minor")?.as_u64()?,
            v.get("micro")?.as_u64()?,
        ))
    }

    /// Events from now on. A receiver that falls more than 256 events behind
    /// sees `Lagged` and skips ahead; it sees `Closed` after the last event
    /// once the connection is gone (at once if it already is).
    pub fn subscribe(&self) -> broadcast::Receiver<QmpEvent> {
        match self.events.upgrade() {
            Some(tx) => tx.subscribe(),
            None => broadcast::channel(1).1,
        }
    }

    /// Runs a command with the default timeout and returns its `return` value.
    pub async fn execute(
        &self,
        command: &str,
        arguments: Option<Value>,
    ) -> Result<Value, QmpError> {
        self.execute_timeout(command, arguments, DEFAULT_TIMEOUT)
            .await
    }

    /// Runs a command and returns its `return` value. On timeout the command
    /// may still complete inside QEMU; its late reply is dropped.
    pub async fn execute_timeout(
        &self,
        command: &str,
        arguments: Option<Value>,
        timeout: Duration,
    ) -> Result<Value, QmpError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut request = json!({ "execute": command, "id": id });
        if let Some(args) = arguments {
            request["arguments"] = args;
        }
        let mut line = request.to_string();
        line.push('\n');

        let (tx, rx) = oneshot::channel();
        {
            let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            if p.closed {
                return Err(QmpError::Disconnected {
                    command: command.into(),
                });
            }
            p.waiters.insert(id, tx);
        }
        let written = {
            let mut w = self.writer.lock().await;
            w.write_all(line.as_bytes()).await
        };
        if let Err(source) = written {
            self.forget(id);
            return Err(QmpError::Write {
                command: command.into(),
                source,
            });
        }
        match tokio::time::timeout(timeout, rx).await {
            Err(_) => {
                self.forget(id);
                Err(QmpError::Timeout {
                    command: command.into(),
                    after: timeout,
                })
            }
            Ok(Err(_)) => Err(QmpError::Disconnected {
                command: command.into(),
            }),
            Ok(Ok(Ok(v))) => Ok(v),
            Ok(Ok(Err((class, desc)))) => Err(QmpError::Command {
                command: command.into(),
                class,
                desc,
            }),
        }
    }

    /// `query-status`: the run state, e.g. "running", "paused", "inmigrate",
    /// "postmigrate".
    pub async fn run_state(&self) -> Result<String, QmpError> {
        let v = self.execute("query-status", None).await?;
        v.get("status")
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| QmpError::Decode {
                command: "query-status".into(),
                detail: format!("no status in {v}"),
            })
    }

    fn forget(&self, id: u64) {
        let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        p.waiters.remove(&id);
    }
}

impl Drop for QmpClient {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

async fn read_loop(
    mut lines: tokio::io::Lines<BufReader<tokio::net::unix::OwnedReadHalf>>,
    pending: Pending,
    events: broadcast::Sender<QmpEvent>,
) {
    loop {
        let line = match lines.next_line().await {
            Ok(Some(l)) => l,
            Ok(None) | Err(_) => break,
        };
        match route(&line) {
            Some(Routed::Event(ev)) => {
                // No subscriber is fine: events nobody listens to are dropped.
                let _ = events.send(ev);
            }
            Some(Routed::Reply(id, reply)) => {
                let waiter = {
                    let mut p = pending.lock().unwrap_or_else(|e| e.into_inner());
                    p.waiters.remove(&id)
                };
                if let Some(tx) = waiter {
                    let _ = tx.send(reply);
                }
            }
            None => tracing::debug!(%line, "ignoring unexpected QMP line"),
        }
    }
    // Dropping the senders wakes every waiter with `Disconnected`.
    let mut p = pending.lock().unwrap_or_else(|e| e.into_inner());
    p.closed = true;
    p.waiters.clear();
}

/// One line from QEMU, classified by [`route`].
#[doc(hidden)]
#[derive(Debug, PartialEq)]
pub enum Routed {
    Event(QmpEvent),
    Reply(u64, Reply),
}

/// Classifies one line from QEMU. Pure, so the protocol rules are unit-tested
/// (and fuzzed: `tests/fuzz`, target `qmp`).
#[doc(hidden)]
pub fn route(line: &str) -> Option<Routed> {
    let v: Value = serde_json::from_str(line).ok()?;
    if let Some(name) = v.get("event").and_then(Value::as_str) {
        let ts = v
            .get("timestamp")
            .map(|t| {
                let s = t.get("seconds").and_then(Value::as_u64).unwrap_or(0);
                let us = t.get("microseconds").and_then(Value::as_u64).unwrap_or(0);
                // Saturating: a bogus timestamp must not kill the reader
                // task (overflow checks) nor wrap to an early time.
                s.saturating_mul(1_000_000).saturating_add(us)
            })
            .unwrap_or(0);
        return Some(Routed::Event(QmpEvent {
            name: name.to_string(),
            data: v.get("data").cloned().unwrap_or(Value::Null),
            timestamp_us: ts,
        }));
    }
    let id = v.get("id")?.as_u64()?;
    if let Some(ret) = v.get("return") {
        return Some(Routed::Reply(id, Ok(ret.clone())));
    }
    let err = v.get("error")?;
    let class = err
        .get("class")
        .and_then(Value::as_str)
        .unwrap_or("GenericError")
        .to_string();
    let desc = err
        .get("desc")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    Some(Routed::Reply(id, Err((class, desc))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_event_with_timestamp() {
        let r = route(
            r#"{"timestamp": {"seconds": 2, "microseconds": 5}, "event": "MIGRATION", "data": {"status": "active"}}"#,
        );
        assert_eq!(
            r,
            Some(Routed::Event(QmpEvent {
                name: "MIGRATION".into(),
                data: json!({"status": "active"}),
                timestamp_us: 2_000_005,
            }))
        );
        // Found by tests/fuzz (qmp): seconds * 10^6 overflowed and the
        // panic ended the reader task. Saturated now.
        let r = route(
            r#"{"timestamp": {"seconds": 1764900000000000002, "microseconds": 0}, "event": "STOP"}"#,
        );
        assert!(matches!(r, Some(Routed::Event(e)) if e.timestamp_us == u64::MAX));
    }

    #[test]
    fn routes_return_and_error_by_id() {
        assert_eq!(
            route(r#"{"return": {}, "id": 7}"#),
            Some(Routed::Reply(7, Ok(json!({}))))
        );
        assert_eq!(
            route(r#"{"id": 8, "error": {"class": "GenericError", "desc": "nope"}}"#),
            Some(Routed::Reply(
                8,
                Err(("GenericError".into(), "nope".into()))
            ))
        );
    }

    #[test]
    fn ignores_replies_without_our_id_and_garbage() {
        assert_eq!(route(r#"{"return": {}}"#), None);
        assert_eq!(route("not json"), None);
        assert_eq!(route(r#"{"QMP": {}}"#), None);
    }

    /// A fake QEMU on a socketpair: checks the handshake, that an event between
    /// request and reply goes to subscribers, replies out of order, an error
    /// reply, a timeout, and that a closed connection fails requests at once.
    #[tokio::test]
    async fn client_against_fake_server() {
        let dir = std::env::temp_dir().join(format!("mignet-qmp-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let sock = dir.join("q.sock");
        let _ = std::fs::remove_file(&sock);
        let listener = tokio::net::UnixListener::bind(&sock).unwrap();
        let (close_tx, close_rx) = oneshot::channel::<()>();
        let server = tokio::spawn(async move {
            let (s, _) = listener.accept().await.unwrap();
            let (r, mut w) = s.into_split();
            let mut lines = BufReader::new(r).lines();
            w.write_all(b"{\"QMP\": {\"version\": {\"qemu\": {\"micro\": 0, \"minor\": 2, \"major\": 7}}, \"capabilities\": []}}\n").await.unwrap();
            let caps: Value =
                serde_json::from_str(&lines.next_line().await.unwrap().unwrap()).unwrap();
            assert_eq!(caps["execute"], "qmp_capabilities");
            w.write_all(format!("{{\"return\": {{}}, \"id\": {}}}\n", caps["id"]).as_bytes())
                .await
                .unwrap();
            // Two requests; answer the second first, with an event in between.
            let a: Value =
                serde_json::from_str(&lines.next_line().await.unwrap().unwrap()).unwrap();
            let b: Value =
                serde_json::from_str(&lines.next_line().await.unwrap().unwrap()).unwrap();
            w.write_all(
                b"{\"event\": \"STOP\", \"timestamp\": {\"seconds\": 1, \"microseconds\": 0}}\n",
            )
            .await
            .unwrap();
            w.write_all(format!("{{\"id\": {}, \"error\": {{\"class\": \"GenericError\", \"desc\": \"bad\"}}}}\n", b["id"]).as_bytes()).await.unwrap();
            w.write_all(
                format!(
                    "{{\"return\": {{\"status\": \"running\"}}, \"id\": {}}}\n",
                    a["id"]
                )
                .as_bytes(),
            )
            .await
            .unwrap();
            // A request we never answer (timeout), then close.
            let _c = lines.next_line().await.unwrap().unwrap();
            let _ = close_rx.await;
        });
        let client = QmpClient::connect(&sock).await.unwrap();
        assert_eq!(client.qemu_version(), Some((7, 2, 0)));
        let mut events = client.subscribe();
        let (a, b) = tokio::join!(client.execute("query-status", None), async {
            // Make sure "a" is written first.
            tokio::time::sleep(Duration::from_millis(50)).await;
            client.execute("bogus", Some(json!({"x": 1}))).await
        });
        assert_eq!(a.unwrap(), json!({"status": "running"}));
        match b {
            Err(QmpError::Command {
                command,
                class,
                desc,
            }) => {
                assert_eq!(
                    (command.as_str(), class.as_str(), desc.as_str()),
                    ("bogus", "GenericError", "bad")
                );
            }
            other => panic!("expected a command error, got {other:?}"),
        }
        assert_eq!(events.recv().await.unwrap().name, "STOP");
        let mut events_until_close = client.subscribe();
        let t = client
            .execute_timeout("slow", None, Duration::from_millis(100))
            .await;
        assert!(matches!(t, Err(QmpError::Timeout { .. })), "{t:?}");
        close_tx.send(()).unwrap();
        server.await.unwrap();
        // The server is gone: the next request must fail promptly.
        let started = std::time::Instant::now();
        let r = client.execute("query-status", None).await;
        assert!(
            matches!(
                r,
                Err(QmpError::Disconnected { .. }) | Err(QmpError::Write { .. })
            ),
            "{r:?}"
        );
        assert!(started.elapsed() < Duration::from_secs(5));
        // Event receivers end with the connection, old and new ones alike.
        let closed = tokio::time::timeout(Duration::from_secs(5), events_until_close.recv()).await;
        assert!(
            matches!(closed, Ok(Err(broadcast::error::RecvError::Closed))),
            "{closed:?}"
        );
        assert!(matches!(
            client.subscribe().try_recv(),
            Err(broadcast::error::TryRecvError::Closed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
