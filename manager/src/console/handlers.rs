//! HTTP edge of the console: routes, the authentication extractor, CSRF
//! and Origin checks, and the JSON API the pages poll. Decisions about
//! what to show live in [`super::view`].

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use axum::extract::{ConnectInfo, FromRequestParts, Path, State};
use axum::http::request::Parts;
use axum::http::{header, Extensions, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Form, Json, Router};
use k8s_openapi::api::core::v1::Node;
use kube::ResourceExt;
use serde::Deserialize;

use super::auth::{constant_time_eq, AuthError, User};
use super::throttle::{Refusal, RefusalReason, Throttle, Verdict};
use super::{log_backend_error, nodes, view, App};
use crate::api::{
    MigrationPhase, NodeMaintenance, VirtualMachine, VirtualMachineInstance,
    VirtualMachineInstanceMigration, VirtualMachineInstanceMigrationSpec, VmiPhase,
};
use crate::backend::{protocol, Backend, BackendError};

const COOKIE: &str = "mignet_session";
const CSRF_HEADER: &str = "x-csrf-token";

const INDEX_HTML: &str = include_str!("assets/index.html");
const LOGIN_HTML: &str = include_str!("assets/login.html");
const APP_JS: &str = include_str!("assets/app.js");
const APP_CSS: &str = include_str!("assets/app.css");

/// The prefix `virtctl migrate` uses (`generateName`); the suffix is made
/// here so the local store, which has no generateName, gets the same.
pub const VMIM_PREFIX: &str = "kubevirt-migrate-vm-";

pub fn router<B: Backend>(app: Arc<App<B>>) -> Router {
    Router::new()
        .route("/login", get(login_page).post(login::<B>))
        .route("/", get(index))
        .route("/vms/{ns}/{name}", get(index))
        .route("/assets/app.js", get(asset_js))
        .route("/assets/app.css", get(asset_css))
        .route("/api/session", get(session))
        .route("/api/logout", post(logout::<B>))
        .route("/api/vms", get(list_vms::<B>))
        .route("/api/nodes", get(list_nodes::<B>))
        .route("/api/vms/{ns}/{name}", get(vm_details::<B>))
        .route("/api/vms/{ns}/{name}/migrate", post(migrate::<B>))
        .route("/api/vms/{ns}/{name}/cancel", post(cancel::<B>))
        .layer(axum::middleware::map_response(security_headers))
        .with_state(app)
}

/// No framing, no inline script, nothing cached (pages carry user data).
async fn security_headers(mut res: Response) -> Response {
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; style-src 'self' 'unsafe-inline'; frame-ancestors 'none'; form-action 'self'",
        ),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    // Not `no-referrer`: with it Chromium sends `Origin: null` even on
    // same-origin form posts, which the Origin check must refuse.
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res
}

// ------------------------------------------------------------ errors

/// An API failure: the status and a sentence the page shows as is.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    /// `Retry-After` seconds (429 from the login throttle).
    pub retry_after: Option<u64>,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            retry_after: None,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut res = (
            self.status,
            Json(serde_json::json!({ "error": self.message })),
        )
            .into_response();
        if let Some(secs) = self.retry_after {
            res.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        res
    }
}

impl From<Refused> for ApiError {
    fn from(r: Refused) -> Self {
        Self {
            status: StatusCode::TOO_MANY_REQUESTS,
            message: r.message(),
            retry_after: Some(r.retry_after_secs()),
        }
    }
}

impl From<BackendError> for ApiError {
    fn from(e: BackendError) -> Self {
        log_backend_error("API request", &e);
        let status = match &e {
            BackendError::NotFound { .. } => StatusCode::NOT_FOUND,
            BackendError::AlreadyExists { .. } | BackendError::Conflict { .. } => {
                StatusCode::CONFLICT
            }
            BackendError::Transient { .. } => StatusCode::SERVICE_UNAVAILABLE,
            BackendError::Permanent { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        };
        let mut message = e.to_string();
        if let Some(src) = std::error::Error::source(&e) {
            message = format!("{message}: {src}");
        }
        ApiError::new(status, message)
    }
}

// ------------------------------------------------------------ throttle

/// The peer address of the connection: [`super::serve_with`] serves the
/// router with connect info. Without it (the router used in-process, as
/// some tests do) there is no client to count and nothing is throttled.
fn peer(extensions: &Extensions) -> Option<IpAddr> {
    extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip())
}

fn lock(t: &Mutex<Throttle>) -> MutexGuard<'_, Throttle> {
    t.lock().unwrap_or_else(|p| p.into_inner())
}

/// A token check the throttle refused (429): the token was not looked at.
#[derive(Debug)]
struct Refused {
    client: IpAddr,
    refusal: Refusal,
}

impl Refused {
    /// Whole seconds, rounded up, at least one.
    fn retry_after_secs(&self) -> u64 {
        let d = self.refusal.retry_after;
        (d.as_secs() + u64::from(d.subsec_nanos() > 0)).max(1)
    }

    /// Why, and until when, in words.
    fn message(&self) -> String {
        let secs = self.retry_after_secs();
        let now = k8s_openapi::jiff::Timestamp::now();
        let until =
            k8s_openapi::jiff::Timestamp::from_second(now.as_second().saturating_add(secs as i64))
                .map_or_else(|_| "later".to_owned(), |t| t.to_string());
        let client = self.client;
        match self.refusal.reason {
            RefusalReason::LockedOut { failures } => format!(
                "Too many failed logins from {client} ({failures} invalid tokens): \
                 locked out until {until} (in {secs} s). Tokens from {client} are not \
                 checked until then."
            ),
            RefusalReason::Busy => format!(
                "Too many login attempts at once from {client} after failed logins: \
                 try again in {secs} s, one at a time."
            ),
        }
    }
}

/// Check `token` under the throttle of `peer`: wait first when it has
/// failed before (sleeping outside the lock), refuse without checking
/// when it is locked out; count the outcome.
async fn authenticate<B: Backend>(
    app: &App<B>,
    peer: Option<IpAddr>,
    token: &str,
) -> Result<Result<Option<User>, AuthError>, Refused> {
    if let Some(client) = peer {
        let verdict = lock(&app.throttle).check(client, Instant::now());
        match verdict {
            Verdict::Go => {}
            Verdict::Wait(delay) => {
                tracing::debug!(%client, delay_ms = delay.as_millis() as u64, "console: slowing a token check after failed logins");
                tokio::time::sleep(delay).await;
                // Attempts waiting in parallel: one of them may have
                // locked the client out meanwhile.
                let locked = lock(&app.throttle).locked_out(client, Instant::now());
                if let Some(refusal) = locked {
                    return Err(Refused { client, refusal });
                }
            }
            Verdict::Refuse(refusal) => {
                tracing::debug!(%client, ?refusal, "console: token check refused (throttled)");
                return Err(Refused { client, refusal });
            }
        }
    }
    let result = app.auth.authenticate(token).await;
    if let Some(client) = peer {
        let lockout = {
            let mut t = lock(&app.throttle);
            match &result {
                Ok(Some(_)) => {
                    t.success(client);
                    None
                }
                Ok(None) => t.failure(client, Instant::now()),
                // Could not tell (API server down): not the client's fault.
                Err(_) => None,
            }
        };
        if let Some(l) = lockout {
            tracing::warn!(%client, failures = l.failures, lockout_seconds = l.duration.as_secs(), "console: too many failed logins, client locked out");
        }
    }
    Ok(result)
}

// ------------------------------------------------------ authentication

/// The authenticated caller of a request.
pub struct Authed {
    pub user: User,
    /// `Some((session id, csrf token))` when authenticated by the cookie:
    /// then state-changing requests need the CSRF checks.
    session: Option<(String, String)>,
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

fn session_cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v)
}

impl<B: Backend> FromRequestParts<Arc<App<B>>> for Authed {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        app: &Arc<App<B>>,
    ) -> Result<Self, Self::Rejection> {
        if let Some(token) = bearer(&parts.headers) {
            return match authenticate(app, peer(&parts.extensions), token).await? {
                Ok(Some(user)) => Ok(Authed {
                    user,
                    session: None,
                }),
                Ok(None) => Err(ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "Unauthorized: the bearer token is not valid",
                )),
                Err(e) => {
                    tracing::warn!(error = %e, source = ?std::error::Error::source(&e), "console: authentication");
                    Err(ApiError::new(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        format!("could not check the token: {e}"),
                    ))
                }
            };
        }
        if let Some(id) = session_cookie(&parts.headers) {
            if let Some(s) = app.sessions.get(id) {
                return Ok(Authed {
                    user: s.user,
                    session: Some((id.to_owned(), s.csrf)),
                });
            }
        }
        Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "Unauthorized: log in or send an Authorization: Bearer token",
        ))
    }
}

/// The request's `Origin` is this console (same scheme-less host:port).
fn same_origin(headers: &HeaderMap) -> Result<(), ApiError> {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    let origin = headers
        .get(header::ORIGIN)
        .and_then(|h| h.to_str().ok())
        .ok_or_else(|| ApiError::new(StatusCode::FORBIDDEN, "Forbidden: missing Origin header"))?;
    let ok = !host.is_empty()
        && (origin == format!("http://{host}") || origin == format!("https://{host}"));
    if ok {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "Forbidden: cross-origin request",
        ))
    }
}

impl Authed {
    /// CSRF protection for state-changing requests of cookie sessions.
    fn check_csrf(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        let Some((_, csrf)) = &self.session else {
            return Ok(());
        };
        same_origin(headers)?;
        let sent = headers
            .get(CSRF_HEADER)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if constant_time_eq(sent.as_bytes(), csrf.as_bytes()) {
            Ok(())
        } else {
            Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "Forbidden: missing or wrong CSRF token (reload the page)",
            ))
        }
    }

    fn require_admin(&self, action: &str, ns: &str, name: &str) -> Result<(), ApiError> {
        if self.user.admin {
            return Ok(());
        }
        tracing::info!(user = %self.user.name, %action, vm = %format!("{ns}/{name}"), "console: refused (not an administrator)");
        Err(ApiError::new(
            StatusCode::FORBIDDEN,
            format!(
                "Forbidden: {} is not an administrator; only administrators may {action} virtual machines.",
                self.user.name
            ),
        ))
    }
}

// ------------------------------------------------------------- pages

fn html(body: impl Into<String>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        body.into(),
    )
        .into_response()
}

async fn login_page() -> Response {
    html(LOGIN_HTML.replace("<!--ERROR-->", ""))
}

/// The connection's peer address, if known (see [`peer`]).
struct Peer(Option<IpAddr>);

impl<S: Send + Sync> FromRequestParts<S> for Peer {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(Peer(peer(&parts.extensions)))
    }
}

#[derive(Deserialize)]
struct LoginForm {
    token: String,
}

async fn login<B: Backend>(
    State(app): State<Arc<App<B>>>,
    Peer(peer): Peer,
    headers: HeaderMap,
    Form(form): Form<LoginForm>,
) -> Response {
    // Login CSRF: a foreign page must not log the browser in as someone else.
    if headers.contains_key(header::ORIGIN) {
        if let Err(e) = same_origin(&headers) {
            return e.into_response();
        }
    }
    let refused = |status: StatusCode, text: &str| {
        let page = LOGIN_HTML.replace(
            "<!--ERROR-->",
            &format!(r#"<p id="login-error" role="alert">{text}</p>"#),
        );
        (status, html(page)).into_response()
    };
    let checked = match authenticate(&app, peer, form.token.trim()).await {
        Ok(c) => c,
        Err(r) => {
            let mut res = refused(StatusCode::TOO_MANY_REQUESTS, &r.message());
            res.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(r.retry_after_secs()));
            return res;
        }
    };
    let user = match checked {
        Ok(Some(u)) => u,
        Ok(None) => {
            tracing::info!("console: login refused (invalid token)");
            return refused(StatusCode::UNAUTHORIZED, "Invalid token.");
        }
        Err(e) => {
            tracing::warn!(error = %e, "console: login");
            return refused(
                StatusCode::INTERNAL_SERVER_ERROR,
                "Could not check the token; see the console's log.",
            );
        }
    };
    let name = user.name.clone();
    let id = match app.sessions.create(user) {
        Ok(id) => id,
        Err(e) => {
            tracing::error!(error = %e, "console: session");
            return refused(
                StatusCode::INTERNAL_SERVER_ERROR,
                "Could not create a session.",
            );
        }
    };
    tracing::info!(user = %name, "console: login");
    let cookie = format!(
        "{COOKIE}={id}; HttpOnly; SameSite=Strict; Path=/; Max-Age={}",
        super::SESSION_TTL.as_secs()
    );
    ([(header::SET_COOKIE, cookie)], Redirect::to("/")).into_response()
}

async fn index(auth: Result<Authed, ApiError>) -> Response {
    match auth {
        Ok(_) => html(INDEX_HTML),
        Err(_) => Redirect::to("/login").into_response(),
    }
}

async fn asset_js(_: Authed) -> Response {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        APP_JS,
    )
        .into_response()
}

async fn asset_css(_: Authed) -> Response {
    ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], APP_CSS).into_response()
}

// --------------------------------------------------------------- API

async fn session(a: Authed) -> Response {
    Json(serde_json::json!({
        "user": a.user.name,
        "admin": a.user.admin,
        "csrf": a.session.as_ref().map(|(_, c)| c.as_str()),
    }))
    .into_response()
}

async fn logout<B: Backend>(
    State(app): State<Arc<App<B>>>,
    headers: HeaderMap,
    a: Authed,
) -> Result<Response, ApiError> {
    a.check_csrf(&headers)?;
    if let Some((id, _)) = &a.session {
        app.sessions.remove(id);
    }
    tracing::info!(user = %a.user.name, "console: logout");
    let expired = format!("{COOKIE}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0");
    Ok(([(header::SET_COOKIE, expired)], StatusCode::NO_CONTENT).into_response())
}

async fn list_vms<B: Backend>(
    State(app): State<Arc<App<B>>>,
    _: Authed,
) -> Result<Response, ApiError> {
    let b = &app.backend;
    let vms: Vec<VirtualMachine> = b.list(None).await?;
    let vmis: Vec<VirtualMachineInstance> = b.list(None).await?;
    let vmims: Vec<VirtualMachineInstanceMigration> = b.list(None).await?;
    Ok(Json(view::rows(&vms, &vmis, &vmims)).into_response())
}

async fn list_nodes<B: Backend>(
    State(app): State<Arc<App<B>>>,
    _: Authed,
) -> Result<Response, ApiError> {
    let b = &app.backend;
    let nodes: Vec<Node> = b.list(None).await?;
    let vmis: Vec<VirtualMachineInstance> = b.list(None).await?;
    let maintenances = maintenance_facts(b).await?;
    Ok(Json(nodes::node_rows(&nodes, &maintenances, &vmis)).into_response())
}

/// The NodeMaintenances as the Nodes table reads them. Where the kind is
/// not served (no CRD: neither the operator nor ours installed) or the
/// console may not read it, the table simply shows no maintenance, as the
/// manager's controller treats the same answers as "none".
async fn maintenance_facts<B: Backend>(b: &B) -> Result<Vec<nodes::MaintenanceFacts>, ApiError> {
    let nms: Vec<NodeMaintenance> = match b.list(None).await {
        Ok(v) => v,
        Err(e) if e.is_not_found() || e.is_forbidden() => return Ok(Vec::new()),
        Err(e) => return Err(e.into()),
    };
    Ok(nms
        .into_iter()
        .map(|m| {
            let st = m.status.clone().unwrap_or_default();
            nodes::MaintenanceFacts {
                name: m.name_any(),
                node: m.spec.node_name.clone(),
                phase: st.phase.map(|p| format!("{p:?}")),
                reason: m.spec.reason.clone(),
                pending_pods: st.pending_pods,
                last_error: st.last_error,
                deleting: m.metadata.deletion_timestamp.is_some(),
            }
        })
        .collect())
}

async fn vm_details<B: Backend>(
    State(app): State<Arc<App<B>>>,
    _: Authed,
    Path((ns, name)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let b = &app.backend;
    let vmi: Option<VirtualMachineInstance> = b.get(&ns, &name).await?;
    let vm: Option<VirtualMachine> = b.get(&ns, &name).await?;
    let vmims: Vec<VirtualMachineInstanceMigration> = b.list(Some(&ns)).await?;
    let history = view::current_migration(&vmims, &ns, &name)
        .and_then(|m| m.uid())
        .map(|uid| app.history_of(&uid))
        .unwrap_or_default();
    view::details(vmi.as_ref(), vm.as_ref(), &vmims, history)
        .map(|d| Json(d).into_response())
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                format!("VirtualMachine {ns}/{name} not found"),
            )
        })
}

fn active_migrations<'a>(
    vmims: &'a [VirtualMachineInstanceMigration],
    name: &str,
) -> impl Iterator<Item = &'a VirtualMachineInstanceMigration> {
    let name = name.to_owned();
    vmims.iter().filter(move |m| {
        m.spec.vmi_name == name && !view::is_final(m.status.as_ref().and_then(|s| s.phase))
    })
}

/// Five characters from the Kubernetes name-suffix alphabet.
fn name_suffix() -> Result<String, ApiError> {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let hex = super::auth::random_hex()
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    Ok(hex
        .as_bytes()
        .chunks(2)
        .take(5)
        .map(|c| {
            let v = u8::from_str_radix(std::str::from_utf8(c).unwrap_or("0"), 16).unwrap_or(0);
            ALPHABET[v as usize % ALPHABET.len()] as char
        })
        .collect())
}

async fn migrate<B: Backend>(
    State(app): State<Arc<App<B>>>,
    headers: HeaderMap,
    a: Authed,
    Path((ns, name)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    a.check_csrf(&headers)?;
    a.require_admin("migrate", &ns, &name)?;
    let b = &app.backend;
    let vmi: Option<VirtualMachineInstance> = b.get(&ns, &name).await?;
    let Some(vmi) = vmi else {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!("{ns}/{name} cannot be migrated: the VM is not running (no VirtualMachineInstance)."),
        ));
    };
    let st = vmi.status.clone().unwrap_or_default();
    if st.phase != Some(VmiPhase::Running) {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!(
                "{ns}/{name} cannot be migrated: the VM is {}, not Running.",
                st.phase
                    .map_or("not started".to_owned(), |p| format!("{p:?}"))
            ),
        ));
    }
    if let Some(c) = st
        .conditions
        .iter()
        .find(|c| c.type_ == protocol::LIVE_MIGRATABLE && c.status != "True")
    {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!(
                "{ns}/{name} is not live-migratable: {}{}",
                c.reason.as_deref().unwrap_or("no reason given"),
                c.message
                    .as_deref()
                    .map(|m| format!(": {m}"))
                    .unwrap_or_default()
            ),
        ));
    }
    let vmims: Vec<VirtualMachineInstanceMigration> = b.list(Some(&ns)).await?;
    if let Some(m) = active_migrations(&vmims, &name).next() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!(
                "{ns}/{name} is already migrating ({}, phase {}).",
                m.name_any(),
                view::migration_view(m).phase
            ),
        ));
    }
    // The object `virtctl migrate` creates: generateName + spec.vmiName.
    for _ in 0..5 {
        let mut m = VirtualMachineInstanceMigration::new(
            &format!("{VMIM_PREFIX}{}", name_suffix()?),
            VirtualMachineInstanceMigrationSpec {
                vmi_name: name.clone(),
            },
        );
        m.metadata.namespace = Some(ns.clone());
        match b.create(&m).await {
            Ok(created) => {
                let vmim = created.name_any();
                tracing::info!(user = %a.user.name, vm = %format!("{ns}/{name}"), %vmim, "console: migrate");
                return Ok((
                    StatusCode::CREATED,
                    Json(serde_json::json!({
                        "name": vmim,
                        "message": format!("Migration {vmim} of {ns}/{name} created."),
                    })),
                )
                    .into_response());
            }
            Err(BackendError::AlreadyExists { .. }) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(ApiError::new(
        StatusCode::CONFLICT,
        "could not find a free migration name; try again",
    ))
}

async fn cancel<B: Backend>(
    State(app): State<Arc<App<B>>>,
    headers: HeaderMap,
    a: Authed,
    Path((ns, name)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    a.check_csrf(&headers)?;
    a.require_admin("cancel migrations of", &ns, &name)?;
    let b = &app.backend;
    let vmims: Vec<VirtualMachineInstanceMigration> = b.list(Some(&ns)).await?;
    let active: Vec<String> = active_migrations(&vmims, &name)
        .map(|m| m.name_any())
        .collect();
    if active.is_empty() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!("{ns}/{name} has no migration in progress."),
        ));
    }
    for m in &active {
        match b.delete::<VirtualMachineInstanceMigration>(&ns, m).await {
            Ok(()) | Err(BackendError::NotFound { .. }) => {}
            Err(e) => return Err(e.into()),
        }
        tracing::info!(user = %a.user.name, vm = %format!("{ns}/{name}"), vmim = %m, "console: cancel migration");
    }
    let phase = vmims
        .iter()
        .find(|m| m.name_any() == active[0])
        .and_then(|m| m.status.as_ref().and_then(|s| s.phase));
    let message = if phase.is_some_and(|p| p > MigrationPhase::Pending) {
        format!(
            "Cancelling migration {}: the VM stays on its node.",
            active[0]
        )
    } else {
        format!("Migration {} cancelled before it started.", active[0])
    };
    Ok(Json(serde_json::json!({ "message": message })).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_and_cookie_parsing() {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, "Bearer abc".parse().unwrap());
        h.insert(
            header::COOKIE,
            "a=1; mignet_session=xyz; b=2".parse().unwrap(),
        );
        assert_eq!(bearer(&h), Some("abc"));
        assert_eq!(session_cookie(&h), Some("xyz"));
        h.insert(header::AUTHORIZATION, "Basic abc".parse().unwrap());
        assert_eq!(bearer(&h), None);
    }

    #[test]
    fn origin_must_match_host() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, "127.0.0.1:8443".parse().unwrap());
        assert!(same_origin(&h).is_err(), "missing Origin");
        h.insert(header::ORIGIN, "http://127.0.0.1:8443".parse().unwrap());
        assert!(same_origin(&h).is_ok());
        h.insert(header::ORIGIN, "http://evil.example".parse().unwrap());
        assert!(same_origin(&h).is_err());
    }

    #[test]
    fn throttle_refusals_say_why_and_round_retry_after_up() {
        use std::time::Duration;
        let refused = |reason, ms| Refused {
            client: "192.0.2.7".parse().unwrap(),
            refusal: Refusal {
                reason,
                retry_after: Duration::from_millis(ms),
            },
        };
        let locked = RefusalReason::LockedOut { failures: 10 };
        for (ms, secs) in [(0, 1), (1, 1), (1000, 1), (1001, 2), (300_000, 300)] {
            assert_eq!(refused(locked, ms).retry_after_secs(), secs, "{ms} ms");
        }
        let m = refused(locked, 300_000).message();
        assert!(
            m.starts_with(
                "Too many failed logins from 192.0.2.7 (10 invalid tokens): locked out until 20"
            ) && m.contains("Z (in 300 s)"),
            "{m}"
        );
        let e = ApiError::from(refused(RefusalReason::Busy, 2500));
        assert_eq!(e.status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(e.retry_after, Some(3));
        assert!(
            e.message.contains("at once from 192.0.2.7"),
            "{}",
            e.message
        );
        let res = e.into_response();
        assert_eq!(res.headers()[header::RETRY_AFTER], "3");
    }

    #[test]
    fn suffix_alphabet() {
        let s = name_suffix().unwrap();
        assert_eq!(s.len(), 5);
        assert!(s
            .bytes()
            .all(|c| b"bcdfghjklmnpqrstvwxz2456789".contains(&c)));
    }
}
