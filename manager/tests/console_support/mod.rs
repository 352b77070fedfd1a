//! Support for the console tests: headless Chromium through chromedriver,
//! a raw HTTP client, and, for the HTTP-level tests (`console_http`), a
//! lab-like setup on a local store (the migration controller and the
//! simulated agents of `control_common` in-process, so migrations really
//! go through the protocol) with the console served in-process. The
//! browser tests use the real lab instead: `lab.rs` (included by
//! `console_browser.rs` with `#[path]`, as only it needs `lab_common`).

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::os::unix::process::CommandExt as _;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use k8s_openapi::jiff;
use kube::ResourceExt;
use mignet::api::{MigrationPhase, VirtualMachineInstanceMigration};
use mignet::backend::protocol::{self, Progress};
use mignet::backend::{Backend, LocalBackend};
use mignet::console::{Console, TokenFile};
use mignet::store::Store;

use crate::control_common::*;

pub const NS: &str = "lab";
pub const ADMIN_TOKEN: &str = "admin-token-0123456789";
pub const VIEWER_TOKEN: &str = "viewer-token-9876543210";
pub const TIMEOUT: Duration = Duration::from_secs(60);

static COUNTER: AtomicU32 = AtomicU32::new(0);

fn unique(tag: &str) -> String {
    format!(
        "mignet-console-{tag}-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// A temporary directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        let p = std::env::temp_dir().join(unique(tag));
        std::fs::create_dir_all(&p).expect("create temp dir");
        Self(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        // A store write already on the blocking pool when its task was
        // aborted can recreate a file mid-removal: retry for a moment.
        for _ in 0..40 {
            if std::fs::remove_dir_all(&self.0).is_ok() || !self.0.exists() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        eprintln!("could not remove {}", self.0.display());
    }
}

/// The store, controller, simulated agents, a progress writer and the
/// console. Field order = drop order: tasks stop before the store goes.
pub struct Lab {
    pub console: Console,
    _tasks: Vec<Task>,
    pub backend: LocalBackend,
    pub nodes: Vec<String>,
    pub base: String,
    _dir: TempDir,
}

impl Lab {
    /// Two nodes, VMI `vm` Running on the first; simulated migrations take
    /// `duration` once Running.
    pub async fn start(tag: &str, duration: Duration) -> Self {
        let dir = TempDir::new(tag);
        let store = Arc::new(Store::open(dir.0.join("store")).expect("open store"));
        let b = LocalBackend::new(store);
        let test = format!("c{}{}", tag, COUNTER.fetch_add(1, Ordering::Relaxed));
        let nodes = node_names(&test, 2);
        for n in &nodes {
            create_node(&b, &node(n, &test, None)).await;
        }
        create_running_vmi(&b, NS, "vm", &nodes[0], VmiOpts::default()).await;
        let tasks = vec![
            spawn_controller(&b, NS, &test),
            spawn_sim(&b, NS, &nodes, duration),
            spawn_progress(&b),
        ];
        let tokens = dir.0.join("tokens.csv");
        std::fs::write(
            &tokens,
            format!(
                "# token,user,groups\n{ADMIN_TOKEN},alice,admins\n{VIEWER_TOKEN},bob,viewers\n"
            ),
        )
        .unwrap();
        let auth = Arc::new(TokenFile::load(&tokens).expect("tokens file"));
        let console = mignet::console::serve("127.0.0.1:0".parse().unwrap(), b.clone(), auth)
            .await
            .expect("serve console");
        let base = format!("http://{}", console.addr);
        Self {
            console,
            _tasks: tasks,
            backend: b,
            nodes,
            base,
            _dir: dir,
        }
    }

    pub async fn vmims(&self) -> Vec<VirtualMachineInstanceMigration> {
        self.backend
            .list::<VirtualMachineInstanceMigration>(Some(NS))
            .await
            .expect("list VMIMs")
    }

    pub async fn vmi_node(&self, name: &str) -> String {
        self.backend
            .get::<mignet::api::VirtualMachineInstance>(NS, name)
            .await
            .unwrap()
            .unwrap()
            .status
            .unwrap()
            .node_name
            .unwrap()
    }
}

/// The simulated agent writes progress only at start and end; this plays
/// a source agent's periodic samples (every 200 ms, 64 MiB more each) so
/// the chart has a curve.
fn spawn_progress(b: &LocalBackend) -> Task {
    let b = b.clone();
    Task(tokio::spawn(async move {
        let mut sent: BTreeMap<String, u64> = BTreeMap::new();
        loop {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let Ok(ms) = b.list::<VirtualMachineInstanceMigration>(Some(NS)).await else {
                continue;
            };
            for m in ms {
                // Start after the simulated source agent's first sample
                // (0 bytes), so the series has a single writer order.
                if phase_of(&m) != Some(MigrationPhase::Running)
                    || !m.annotations().contains_key(protocol::PROGRESS_ANNOTATION)
                {
                    continue;
                }
                let uid = m.uid().unwrap_or_default();
                let total = 1u64 << 30;
                let n = sent.entry(uid).or_default();
                *n = (*n + (64 << 20)).min(total - (1 << 20));
                let p = Progress {
                    transferred_bytes: *n,
                    remaining_bytes: total - *n,
                    total_bytes: total,
                    bytes_per_second: (300 << 20) + (*n / 16),
                    updated: jiff::Timestamp::now().to_string(),
                };
                let v = serde_json::to_string(&p).unwrap();
                let _ = mignet::backend::modify::<_, VirtualMachineInstanceMigration>(
                    &b,
                    NS,
                    &m.name_any(),
                    move |m| {
                        // Never overwrite the final sample after the end.
                        if phase_of(m) != Some(MigrationPhase::Running) {
                            return false;
                        }
                        m.annotations_mut()
                            .insert(protocol::PROGRESS_ANNOTATION.to_owned(), v.clone());
                        true
                    },
                )
                .await;
            }
        }
    }))
}

// ------------------------------------------------------------- browser

/// chromedriver (in its own process group, with the Chromium it starts)
/// and a WebDriver session; the group is killed on drop, also on panic.
pub struct Browser {
    pub client: Client,
    driver: Child,
    _profile: TempDir,
}

impl Browser {
    pub async fn start() -> Self {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let mut driver = Command::new("/usr/bin/chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("start /usr/bin/chromedriver (apt-get install chromium-driver)");
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(st)) = driver.try_wait() {
                panic!("chromedriver exited: {st}");
            }
            assert!(Instant::now() < deadline, "chromedriver did not listen");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let profile = TempDir::new("chromium");
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            serde_json::json!({
                "binary": "/usr/bin/chromium",
                "args": [
                    "--headless", "--no-sandbox", "--disable-gpu",
                    "--disable-background-networking", "--disable-component-update",
                    "--disable-sync", "--no-first-run", "--disable-quic",
                    "--window-size=1280,800",
                    format!("--user-data-dir={}", profile.0.display()),
                ]
            }),
        );
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let client = match ClientBuilder::new(connector)
            .capabilities(caps)
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
        {
            Ok(c) => c,
            Err(e) => {
                kill_group(&mut driver);
                panic!("WebDriver session: {e}");
            }
        };
        Self {
            client,
            driver,
            _profile: profile,
        }
    }

    /// Log in through the form.
    pub async fn login(&self, base: &str, token: &str) {
        self.client.goto(&format!("{base}/login")).await.unwrap();
        let field = self.client.find(Locator::Css("#token")).await.unwrap();
        field.send_keys(token).await.unwrap();
        self.client
            .find(Locator::Css("#login"))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        self.wait_text("#whoami", |t| !t.is_empty()).await;
    }

    pub async fn click(&self, css: &str) {
        // The page re-renders values in place, not elements, but retry a
        // stale/intercepted click for robustness.
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let r = match self.client.find(Locator::Css(css)).await {
                Ok(e) => e.click().await,
                Err(e) => Err(e),
            };
            match r {
                Ok(()) => return,
                Err(e) => {
                    assert!(Instant::now() < deadline, "clicking {css}: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    /// Wait until the text of `css` satisfies `ok`; returns it.
    pub async fn wait_text(&self, css: &str, ok: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + TIMEOUT;
        let mut last = String::new();
        loop {
            if let Ok(e) = self.client.find(Locator::Css(css)).await {
                if let Ok(t) = e.text().await {
                    if ok(&t) {
                        return t;
                    }
                    last = t;
                }
            }
            if Instant::now() >= deadline {
                let url = self.client.current_url().await.map(|u| u.to_string());
                let src = self.client.source().await.unwrap_or_default();
                panic!("timed out waiting for {css}; last text {last:?}; at {url:?}; page:\n{src}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn attr(&self, css: &str, name: &str) -> Option<String> {
        self.client
            .find(Locator::Css(css))
            .await
            .ok()?
            .attr(name)
            .await
            .ok()?
    }

    pub async fn finish(self) {
        // End the session politely (Chromium exits); Drop kills the rest.
        let _ = self.client.clone().close().await;
    }
}

fn kill_group(driver: &mut Child) {
    // chromedriver leaves Chromium running when killed: kill its whole
    // process group (it was started as the group's leader).
    let pid = nix::unistd::Pid::from_raw(driver.id() as i32);
    let _ = nix::sys::signal::killpg(pid, nix::sys::signal::Signal::SIGKILL);
    let _ = driver.wait();
}

impl Drop for Browser {
    fn drop(&mut self) {
        kill_group(&mut self.driver);
    }
}

/// Cookie-authenticated POST headers that must each be refused (403) by the
/// CSRF protection: no token, a wrong one, a foreign Origin, no Origin.
pub fn forged_post_headers<'a>(
    cookie: &'a str,
    origin: &'a str,
    csrf: &'a str,
) -> [(&'static str, Vec<(&'static str, &'a str)>); 4] {
    [
        (
            "no CSRF token",
            vec![("Cookie", cookie), ("Origin", origin)],
        ),
        (
            "wrong CSRF token",
            vec![
                ("Cookie", cookie),
                ("Origin", origin),
                ("X-CSRF-Token", "0000"),
            ],
        ),
        (
            "foreign Origin",
            vec![
                ("Cookie", cookie),
                ("Origin", "http://evil.example"),
                ("X-CSRF-Token", csrf),
            ],
        ),
        (
            "no Origin",
            vec![("Cookie", cookie), ("X-CSRF-Token", csrf)],
        ),
    ]
}

pub fn artifacts_dir() -> PathBuf {
    let d = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"))
        .join("console-artifacts");
    std::fs::create_dir_all(&d).unwrap();
    d
}

// ----------------------------------------------------------- raw HTTP

#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// One HTTP/1.1 request over a fresh connection (`Connection: close`).
pub async fn http(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Reply {
    let s = tokio::net::TcpStream::connect(addr).await.unwrap();
    http_on(s, addr, method, path, headers, body).await
}

/// [`http`] from the source address `from` (any 127.0.0.0/8 address works
/// on loopback): the console sees a different client.
pub async fn http_from(
    from: std::net::IpAddr,
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Reply {
    let sock = match from {
        std::net::IpAddr::V4(_) => tokio::net::TcpSocket::new_v4(),
        std::net::IpAddr::V6(_) => tokio::net::TcpSocket::new_v6(),
    }
    .unwrap();
    sock.bind(std::net::SocketAddr::new(from, 0)).unwrap();
    let s = sock.connect(addr).await.unwrap();
    http_on(s, addr, method, path, headers, body).await
}

async fn http_on(
    mut s: tokio::net::TcpStream,
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Reply {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await.unwrap();
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    Reply {
        status,
        headers,
        body: body.to_owned(),
    }
}

/// Everything the process logs (mignet at debug), to check that no secret
/// is logged. Installed before anything else logs (once per test binary).
pub fn captured_logs() -> std::sync::Arc<std::sync::Mutex<Vec<u8>>> {
    use std::sync::{Arc, Mutex, OnceLock};
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let w = buf.clone();
        tracing_subscriber::fmt()
            .with_env_filter("mignet=debug")
            .with_ansi(false)
            .with_writer(move || LogWriter(w.clone()))
            .init();
        buf
    })
    .clone()
}

struct LogWriter(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for LogWriter {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
