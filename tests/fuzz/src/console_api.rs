//! HTTP requests to the web console, served by the real router
//! (`console::router`) in-process (`tower::ServiceExt::oneshot`), over a
//! `LocalBackend` on a temporary store holding one running VM (`lab/vm`)
//! and a token file with an administrator and a viewer.
//!
//! Input: a request as text, the way it reads on the wire without the
//! version: `METHOD PATH`, header lines `Name: value`, an empty line, the
//! body. `{admin}`, `{viewer}`, `{session}` and `{csrf}` stand for the
//! administrator's and the viewer's tokens, an administrator's session id
//! and its CSRF token, so the fuzzer gets past authentication and mutates
//! what lies behind it. Requests the HTTP layer could not carry (a method,
//! URI or header that does not parse) are skipped.
//!
//! Properties:
//! - no handler panics and no bad input gets a 5xx: every answer is one of
//!   the statuses the API documents (or axum's 4xx for a malformed body);
//! - every answer carries the security headers (CSP, no framing, nosniff);
//! - no answer contains a token, nor the session id outside its Set-Cookie,
//!   unless the request's own path carried it (names are echoed);
//! - a migration is created or cancelled only by a request that carried
//!   the administrator's token or session (with that session's CSRF token);
//! - a JSON API error is `{"error": "<sentence>"}`.

use std::sync::{Arc, OnceLock};

use axum::body::Body;
use axum::http::{HeaderName, HeaderValue, Method, Request, StatusCode, Uri};
use mignet::api::{VirtualMachine, VirtualMachineInstance, VirtualMachineInstanceMigration};
use mignet::backend::{Backend, LocalBackend};
use mignet::console::{router, App, TokenFile, User};
use mignet::store::Store;
use tower::ServiceExt;

const ADMIN: &str = "fuzz-admin-token-0123456789";
const VIEWER: &str = "fuzz-viewer-token-9876543210";
const HOST: &str = "console.test";

struct World {
    rt: tokio::runtime::Runtime,
    app: Arc<App<LocalBackend>>,
    _dir: TempDir,
}

struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn world() -> &'static World {
    static WORLD: OnceLock<World> = OnceLock::new();
    WORLD.get_or_init(|| {
        // /dev/shm when there is one: the store writes on every migration.
        let base = ["/dev/shm", "/tmp"]
            .iter()
            .map(std::path::PathBuf::from)
            .find(|p| p.is_dir())
            .unwrap_or_else(std::env::temp_dir);
        // Statics are never dropped, and AFL++ starts a fresh process every
        // so many inputs: remove the stores of processes that are gone.
        remove_stale_stores(&base);
        let dir = TempDir(base.join(format!("{STORE_PREFIX}{}", std::process::id())));
        let _ = std::fs::remove_dir_all(&dir.0);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let app = rt.block_on(async {
            let store = Arc::new(Store::open(&dir.0).expect("store"));
            let backend = LocalBackend::new(store);
            seed(&backend).await;
            let tokens = TokenFile::parse(&format!("{ADMIN},alice,admins\n{VIEWER},bob,viewers\n"))
                .expect("token file");
            Arc::new(App::new(backend, Arc::new(tokens)))
        });
        World { rt, app, _dir: dir }
    })
}

const STORE_PREFIX: &str = "mignet-fuzz-console-";

fn remove_stale_stores(base: &std::path::Path) {
    let Ok(entries) = std::fs::read_dir(base) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.strip_prefix(STORE_PREFIX)) else {
            continue;
        };
        if !std::path::Path::new("/proc").join(pid).exists() {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

async fn seed(b: &LocalBackend) {
    let vm: VirtualMachine = serde_json::from_value(serde_json::json!({
        "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine",
        "metadata": {"name": "vm", "namespace": "lab"},
        "spec": {"running": true, "template": {"spec": {"domain": {"memory": {"guest": "1Gi"}}}}}
    }))
    .expect("VM");
    b.create(&vm).await.expect("create VM");
    let vmi: VirtualMachineInstance = serde_json::from_value(serde_json::json!({
        "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance",
        "metadata": {"name": "vm", "namespace": "lab"},
        "spec": {"domain": {"memory": {"guest": "1Gi"}}}
    }))
    .expect("VMI");
    let mut vmi = b.create(&vmi).await.expect("create VMI");
    vmi.status = Some(
        serde_json::from_value(serde_json::json!({"nodeName": "node-a", "phase": "Running"}))
            .expect("VMI status"),
    );
    b.replace_status(&vmi).await.expect("VMI status");
}

/// The request's parts, before they become an HTTP request.
struct Raw<'a> {
    method: &'a str,
    path: String,
    headers: Vec<(&'a str, String)>,
    body: &'a [u8],
}

fn split_request<'a>(data: &'a [u8], subst: &dyn Fn(&str) -> String) -> Option<Raw<'a>> {
    let (head, body) = match data.windows(2).position(|w| w == b"\n\n") {
        Some(i) => (&data[..i], &data[i + 2..]),
        None => (data, &b""[..]),
    };
    let head = std::str::from_utf8(head).ok()?;
    let mut lines = head.lines();
    let (method, path) = lines.next()?.split_once(' ')?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim(), subst(v.trim())))
        .collect();
    Some(Raw {
        method,
        path: subst(path.trim()),
        headers,
        body,
    })
}

fn migrations(w: &World) -> Vec<String> {
    w.rt.block_on(w.app.backend.list::<VirtualMachineInstanceMigration>(None))
        .expect("list VMIMs")
        .into_iter()
        .filter_map(|m| m.metadata.name)
        .collect()
}

pub fn check(data: &[u8]) {
    let w = world();
    // A fresh administrator session per request (a logout may end one).
    let admin = User {
        name: "alice".into(),
        groups: vec!["admins".into()],
        admin: true,
    };
    let session = w.app.sessions.create(admin).expect("session");
    let csrf = w.app.sessions.get(&session).expect("session exists").csrf;
    let subst = |s: &str| {
        s.replace("{admin}", ADMIN)
            .replace("{viewer}", VIEWER)
            .replace("{session}", &session)
            .replace("{csrf}", &csrf)
            .replace("{host}", HOST)
    };
    let Some(raw) = split_request(data, &subst) else {
        return;
    };
    let Ok(method) = Method::from_bytes(raw.method.as_bytes()) else {
        return;
    };
    let Ok(uri) = raw.path.parse::<Uri>() else {
        return;
    };
    if uri.scheme().is_some() || !raw.path.starts_with('/') {
        return; // hyper hands the router origin-form targets only
    }
    let mut req = Request::builder().method(method).uri(uri);
    for (k, v) in &raw.headers {
        let (Ok(k), Ok(v)) = (
            HeaderName::from_bytes(k.as_bytes()),
            HeaderValue::from_bytes(v.as_bytes()),
        ) else {
            return;
        };
        req = req.header(k, v);
    }
    let Ok(req) = req.body(Body::from(raw.body.to_vec())) else {
        return;
    };

    let before = migrations(w);
    let (status, headers, body) = w.rt.block_on(async {
        let res = router(w.app.clone())
            .oneshot(req)
            .await
            .expect("infallible");
        let (parts, body) = res.into_parts();
        let body = axum::body::to_bytes(body, 16 << 20).await.expect("body");
        (parts.status, parts.headers, body)
    });
    let after = migrations(w);
    w.app.sessions.remove(&session);

    let text = String::from_utf8_lossy(&body);
    let what = format!("{} {} -> {status}: {text}", raw.method, raw.path);
    assert!(!status.is_server_error(), "{what}");
    assert!(
        [
            StatusCode::OK,
            StatusCode::CREATED,
            StatusCode::NO_CONTENT,
            StatusCode::SEE_OTHER,
            StatusCode::BAD_REQUEST,
            StatusCode::UNAUTHORIZED,
            StatusCode::FORBIDDEN,
            StatusCode::NOT_FOUND,
            StatusCode::METHOD_NOT_ALLOWED,
            StatusCode::CONFLICT,
            StatusCode::PAYLOAD_TOO_LARGE,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            StatusCode::UNPROCESSABLE_ENTITY,
            StatusCode::TOO_MANY_REQUESTS,
        ]
        .contains(&status),
        "{what}"
    );
    for h in [
        "content-security-policy",
        "x-frame-options",
        "x-content-type-options",
    ] {
        assert!(headers.contains_key(h), "{what}: no {h}");
    }
    // A secret may come back only where the request itself put it in the
    // path (messages name the VM the URL named); never from a header, the
    // body or the server's state, except the CSRF token from /api/session.
    for secret in [ADMIN, VIEWER, session.as_str()] {
        assert!(
            !text.contains(secret) || raw.path.contains(secret),
            "{what}: a secret in the body"
        );
    }
    let csrf_ok = raw.path == "/api/session" || raw.path.contains(&csrf);
    assert!(
        csrf_ok || !text.contains(&csrf),
        "{what}: the CSRF token in the body"
    );
    for (k, v) in &headers {
        if k != "set-cookie" {
            let v = String::from_utf8_lossy(v.as_bytes());
            assert!(
                !v.contains(ADMIN) && !v.contains(&session),
                "{what}: a secret in {k}"
            );
        }
    }

    let request_text = format!("{} {:?}", raw.path, raw.headers);
    if before != after {
        let by_token = request_text.contains(ADMIN);
        let by_session = request_text.contains(&session) && request_text.contains(&csrf);
        assert!(
            by_token || by_session,
            "{what}: changed migrations without the admin's credentials"
        );
    }
    if status.is_client_error() && raw.path.starts_with("/api/vms/") && text.starts_with('{') {
        let v: serde_json::Value = serde_json::from_str(&text).expect("JSON error body");
        assert!(
            v.get("error")
                .and_then(|e| e.as_str())
                .is_some_and(|e| !e.is_empty()),
            "{what}"
        );
    }

    // Back to the seed: no migration survives into the next input.
    w.rt.block_on(async {
        for name in after {
            let _ = w
                .app
                .backend
                .delete::<VirtualMachineInstanceMigration>("lab", &name)
                .await;
        }
    });
}
