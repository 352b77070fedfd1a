//! The web console (`mignet console`): a VirtualMachines list and details
//! pages with Migrate / Cancel Migration, the `Migrating` status and a
//! live chart of the running migration, over any [`Backend`] (the lab's
//! store or the API server).
//!
//! - Pages are static HTML + vanilla JS + CSS embedded in the binary
//!   (`assets/`); the script polls `/api/vms` (or one VM) every 500 ms.
//! - Every request is authenticated: `Authorization: Bearer <token>`, or
//!   the `mignet_session` cookie (HttpOnly, SameSite=Strict) that the
//!   login form sets after checking the token. Only `/login` is public.
//! - Everyone may look; only administrators ([`auth::User::admin`]) may
//!   Migrate or Cancel Migration. Others get 403 with the reason in words.
//! - CSRF: with a cookie session, a POST needs the session's CSRF token in
//!   `X-CSRF-Token` (the page reads it from `/api/session`) and an
//!   `Origin` equal to the console's own. Bearer requests carry no ambient
//!   credential, so they need neither.
//! - Logs name users, never tokens, session ids or CSRF tokens.
//! - Token checks are throttled per client ([`throttle`]): repeated bad
//!   tokens (login form or bearer) are slowed, then refused with 429 for a
//!   while without being checked.

pub mod auth;
mod handlers;
pub mod nodes;
pub mod throttle;
pub mod view;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kube::ResourceExt;

use crate::api::VirtualMachineInstanceMigration;
use crate::backend::{protocol, Backend, BackendError};

pub use auth::{AuthError, Authenticator, KubeAuthenticator, TokenFile, User};
/// The console's routes without a listener (the fuzz target `console_api`
/// drives them in-process).
#[doc(hidden)]
pub use handlers::router;
pub use throttle::LoginLimits;

#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    #[error("binding the console listener on {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("serving the console on {addr}")]
    Serve {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Auth(#[from] AuthError),
}

/// How long a browser session lasts before the user logs in again.
pub const SESSION_TTL: Duration = Duration::from_secs(8 * 3600);
/// Progress samples kept per migration (at one per agent update, minutes).
const HISTORY_LIMIT: usize = 2000;

/// The console's settings beyond where it listens and whom it asks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Settings {
    /// Throttling of token checks per client.
    pub login: LoginLimits,
}

/// Shared state of the handlers.
pub struct App<B: Backend> {
    pub backend: B,
    pub auth: Arc<dyn Authenticator>,
    pub sessions: auth::Sessions,
    /// Failed token checks per client. Locked only for quick, synchronous
    /// updates: the delays are slept outside it.
    pub throttle: Mutex<throttle::Throttle>,
    /// Progress samples per VMIM uid, recorded by [`record_progress`].
    pub history: Mutex<HashMap<String, Vec<view::Sample>>>,
}

impl<B: Backend> App<B> {
    /// With the default [`Settings`].
    pub fn new(backend: B, auth: Arc<dyn Authenticator>) -> Self {
        Self::with_settings(backend, auth, Settings::default())
    }

    pub fn with_settings(backend: B, auth: Arc<dyn Authenticator>, settings: Settings) -> Self {
        Self {
            backend,
            auth,
            sessions: auth::Sessions::new(SESSION_TTL),
            throttle: Mutex::new(throttle::Throttle::new(settings.login)),
            history: Mutex::new(HashMap::new()),
        }
    }

    pub fn history_of(&self, uid: &str) -> Vec<view::Sample> {
        self.history
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(uid)
            .cloned()
            .unwrap_or_default()
    }
}

/// A running console; dropping it stops the server and the recorder.
pub struct Console {
    pub addr: SocketAddr,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Console {
    /// Wait until the server stops (it only stops on an error).
    pub async fn wait(mut self) {
        if let Some(t) = self.tasks.pop() {
            let _ = t.await;
        }
    }
}

impl Drop for Console {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// [`serve_with`] the default [`Settings`].
pub async fn serve<B: Backend>(
    addr: SocketAddr,
    backend: B,
    auth: Arc<dyn Authenticator>,
) -> Result<Console, ConsoleError> {
    serve_with(addr, backend, auth, Settings::default()).await
}

/// Bind now (a port conflict fails start-up) and serve in the background.
pub async fn serve_with<B: Backend>(
    addr: SocketAddr,
    backend: B,
    auth: Arc<dyn Authenticator>,
    settings: Settings,
) -> Result<Console, ConsoleError> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| ConsoleError::Bind { addr, source })?;
    let bound = listener
        .local_addr()
        .map_err(|source| ConsoleError::Bind { addr, source })?;
    let app = Arc::new(App::with_settings(backend, auth, settings));
    let recorder = tokio::spawn(record_progress(app.clone()));
    // The peer address is the throttle's client key.
    let service = handlers::router(app).into_make_service_with_connect_info::<SocketAddr>();
    let server = tokio::spawn(async move {
        if let Err(source) = axum::serve(listener, service).await {
            let e = ConsoleError::Serve {
                addr: bound,
                source,
            };
            tracing::error!(error = %e, "console stopped");
        }
    });
    Ok(Console {
        addr: bound,
        tasks: vec![recorder, server],
    })
}

/// Keep the progress history the chart draws: the annotation holds only
/// the latest sample, so record each new one (by its `updated` time) as it
/// appears, on every change and at least twice a second.
async fn record_progress<B: Backend>(app: Arc<App<B>>) {
    let mut changes = app.backend.changes();
    loop {
        match app
            .backend
            .list::<VirtualMachineInstanceMigration>(None)
            .await
        {
            Ok(ms) => record_samples(&app.history, &ms),
            Err(e) => log_backend_error("listing migrations for the chart", &e),
        }
        tokio::select! {
            _ = changes.changed() => {}
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
    }
}

fn record_samples(
    history: &Mutex<HashMap<String, Vec<view::Sample>>>,
    ms: &[VirtualMachineInstanceMigration],
) {
    let mut h = history.lock().unwrap_or_else(|p| p.into_inner());
    for m in ms {
        let Some(uid) = m.uid() else { continue };
        let Some(s) = m
            .annotations()
            .get(protocol::PROGRESS_ANNOTATION)
            .and_then(|a| serde_json::from_str(a).ok())
            .and_then(|p| view::sample(&p))
        else {
            continue;
        };
        let v = h.entry(uid).or_default();
        if v.last().is_none_or(|l| l.t < s.t) {
            v.push(s);
            if v.len() > HISTORY_LIMIT {
                v.remove(0);
            }
        }
    }
    // Forget migrations whose VMIM is gone.
    h.retain(|uid, _| ms.iter().any(|m| m.uid().as_deref() == Some(uid)));
}

fn log_backend_error(what: &str, e: &BackendError) {
    tracing::warn!(error = %e, source = ?std::error::Error::source(e), "console: {what}");
}
