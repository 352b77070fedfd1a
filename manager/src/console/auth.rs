//! Who is asking: bearer tokens checked by an [`Authenticator`] (a token
//! file in lab mode, TokenReview + SubjectAccessReview in a cluster), and
//! the browser sessions a successful login creates.
//!
//! Secrets never leave this module in a form that can be printed: tokens
//! are compared and dropped, `Debug` of [`TokenFile`] shows user names
//! only, and errors name a line number, never a line.

use std::collections::HashMap;
use std::future::Future;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};

/// Groups whose members are console administrators (may Migrate and
/// Cancel Migration) in token-file mode.
pub const ADMIN_GROUPS: [&str; 2] = ["admins", "system:masters"];

/// An authenticated user. `admin` decides whether state-changing actions
/// are allowed; everyone may look.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub groups: Vec<String>,
    pub admin: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("reading the tokens file {path}")]
    ReadTokens {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The line is not echoed: it holds a token.
    #[error("tokens file {path} line {line}: {reason}")]
    ParseTokens {
        path: PathBuf,
        line: usize,
        reason: &'static str,
    },
    #[error("asking the API server to review a token")]
    TokenReview(#[source] kube::Error),
    #[error("asking the API server whether {user} may create migrations")]
    AccessReview {
        user: String,
        #[source]
        source: kube::Error,
    },
    #[error("writing the tokens file {path}")]
    WriteTokens {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("reading random bytes for a session id")]
    Random(#[source] std::io::Error),
}

pub type AuthFuture<'a> =
    Pin<Box<dyn Future<Output = Result<Option<User>, AuthError>> + Send + 'a>>;

/// Checks a bearer token: `Ok(None)` = not a valid token (401), `Err` =
/// could not tell (500, e.g. the API server is unreachable).
pub trait Authenticator: Send + Sync + 'static {
    fn authenticate<'a>(&'a self, token: &'a str) -> AuthFuture<'a>;
}

/// Lab mode: a static token file, one `token,user[,group...]` per line
/// (`#` comments and blank lines ignored), like the API server's
/// `--token-auth-file` without the uid column.
pub struct TokenFile {
    entries: Vec<(String, User)>,
}

impl std::fmt::Debug for TokenFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.entries.iter().map(|(_, u)| &u.name))
            .finish()
    }
}

impl TokenFile {
    pub fn load(path: &Path) -> Result<Self, AuthError> {
        let text = std::fs::read_to_string(path).map_err(|source| AuthError::ReadTokens {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text).map_err(|(line, reason)| AuthError::ParseTokens {
            path: path.to_owned(),
            line,
            reason,
        })
    }

    /// Pure parse; the error is (1-based line, reason).
    pub fn parse(text: &str) -> Result<Self, (usize, &'static str)> {
        let mut entries: Vec<(String, User)> = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let mut fields = line.split(',').map(str::trim);
            let token = fields.next().unwrap_or("");
            let name = fields.next().unwrap_or("");
            if token.len() < 8 {
                return Err((i + 1, "token missing or shorter than 8 characters"));
            }
            if name.is_empty() {
                return Err((i + 1, "user name missing"));
            }
            if entries.iter().any(|(t, _)| t == token) {
                return Err((i + 1, "token used twice"));
            }
            let groups: Vec<String> = fields
                .filter(|g| !g.is_empty())
                .map(str::to_owned)
                .collect();
            let admin = groups.iter().any(|g| ADMIN_GROUPS.contains(&g.as_str()));
            entries.push((
                token.to_owned(),
                User {
                    name: name.to_owned(),
                    groups,
                    admin,
                },
            ));
        }
        if entries.is_empty() {
            return Err((0, "no tokens"));
        }
        Ok(Self { entries })
    }

    /// The user of `token`; compares against every entry in constant time
    /// per entry so timing does not reveal a matching prefix.
    pub fn lookup(&self, token: &str) -> Option<&User> {
        let mut found = None;
        for (t, u) in &self.entries {
            if constant_time_eq(t.as_bytes(), token.as_bytes()) {
                found = Some(u);
            }
        }
        found
    }
}

/// The users of a tokens file made by [`TokenFile::load_or_create`].
pub const LAB_ADMIN_USER: &str = "admin";
pub const LAB_VIEWER_USER: &str = "viewer";

/// The tokens file of a lab (`<lab dir>/pki/console-tokens.csv`): beside
/// the lab's CA key, so `mignet lab down` removes it with the lab.
pub fn lab_tokens_path(lab_dir: &Path) -> PathBuf {
    lab_dir.join("pki").join("console-tokens.csv")
}

/// The text of a new tokens file: an administrator and a viewer with
/// fresh random tokens.
fn lab_tokens_text() -> Result<String, AuthError> {
    Ok(format!(
        "# token,user[,group...]   written by `mignet console` for this lab; group admins = administrator\n\
         {},{LAB_ADMIN_USER},admins\n\
         {},{LAB_VIEWER_USER}\n",
        random_hex()?,
        random_hex()?
    ))
}

impl TokenFile {
    /// Load `path`, or create it first (mode 0600, in a 0700 directory)
    /// with an administrator and a viewer token when it does not exist.
    /// Returns whether it was created. An existing file is never
    /// rewritten: tokens handed out stay valid.
    pub fn load_or_create(path: &Path) -> Result<(Self, bool), AuthError> {
        use std::io::Write as _;
        use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
        let write_err = |source| AuthError::WriteTokens {
            path: path.to_owned(),
            source,
        };
        let created = match path.parent() {
            Some(dir) if !path.exists() => {
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(dir)
                    .map_err(write_err)?;
                // create_new: if another console raced us to it, use theirs.
                match std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(path)
                {
                    Ok(mut f) => {
                        f.write_all(lab_tokens_text()?.as_bytes())
                            .and_then(|()| f.sync_all())
                            .map_err(write_err)?;
                        true
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => false,
                    Err(e) => return Err(write_err(e)),
                }
            }
            _ => false,
        };
        Ok((Self::load(path)?, created))
    }

    /// User names and whether each is an administrator (no tokens).
    pub fn users(&self) -> Vec<(String, bool)> {
        self.entries
            .iter()
            .map(|(_, u)| (u.name.clone(), u.admin))
            .collect()
    }
}

impl Authenticator for TokenFile {
    fn authenticate<'a>(&'a self, token: &'a str) -> AuthFuture<'a> {
        Box::pin(async move { Ok(self.lookup(token).cloned()) })
    }
}

/// Cluster mode: the token is a Kubernetes bearer token. TokenReview says
/// who it is; a SubjectAccessReview for `create
/// virtualmachineinstancemigrations.kubevirt.io` (all namespaces) decides
/// whether the user is an administrator of the console. The console then
/// acts with its own service account, so it needs RBAC for tokenreviews,
/// subjectaccessreviews and the migration kinds.
pub struct KubeAuthenticator {
    client: kube::Client,
}

impl KubeAuthenticator {
    pub fn new(client: kube::Client) -> Self {
        Self { client }
    }
}

impl Authenticator for KubeAuthenticator {
    fn authenticate<'a>(&'a self, token: &'a str) -> AuthFuture<'a> {
        Box::pin(async move {
            let pp = kube::api::PostParams::default();
            let review = TokenReview {
                spec: TokenReviewSpec {
                    token: Some(token.to_owned()),
                    audiences: None,
                },
                ..Default::default()
            };
            let reviews: kube::Api<TokenReview> = kube::Api::all(self.client.clone());
            let out = reviews
                .create(&pp, &review)
                .await
                .map_err(AuthError::TokenReview)?;
            let Some(st) = out.status.filter(|s| s.authenticated == Some(true)) else {
                return Ok(None);
            };
            let Some(info) = st.user else { return Ok(None) };
            let name = info.username.unwrap_or_default();
            let groups = info.groups.unwrap_or_default();
            let sar = SubjectAccessReview {
                spec: SubjectAccessReviewSpec {
                    user: Some(name.clone()),
                    groups: Some(groups.clone()),
                    uid: info.uid,
                    resource_attributes: Some(ResourceAttributes {
                        verb: Some("create".into()),
                        group: Some("kubevirt.io".into()),
                        resource: Some("virtualmachineinstancemigrations".into()),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
                ..Default::default()
            };
            let sars: kube::Api<SubjectAccessReview> = kube::Api::all(self.client.clone());
            let allowed = sars
                .create(&pp, &sar)
                .await
                .map_err(|source| AuthError::AccessReview {
                    user: name.clone(),
                    source,
                })?
                .status
                .is_some_and(|s| s.allowed);
            Ok(Some(User {
                name,
                groups,
                admin: allowed,
            }))
        })
    }
}

pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// 32 random bytes as hex, from the kernel's CSPRNG.
pub fn random_hex() -> Result<String, AuthError> {
    let mut buf = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .map_err(AuthError::Random)?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

/// A logged-in browser: the user and the CSRF token its page must echo in
/// the `X-CSRF-Token` header of every state-changing request.
#[derive(Debug, Clone)]
pub struct Session {
    pub user: User,
    pub csrf: String,
    created: Instant,
}

/// In-memory sessions (a restart logs everyone out, which is fine for an
/// operator console). Ids are 256-bit random; they expire after `ttl`.
pub struct Sessions {
    map: Mutex<HashMap<String, Session>>,
    ttl: Duration,
}

impl Sessions {
    pub fn new(ttl: Duration) -> Self {
        Self {
            map: Mutex::new(HashMap::new()),
            ttl,
        }
    }

    /// Create a session; returns its id (the cookie value).
    pub fn create(&self, user: User) -> Result<String, AuthError> {
        let id = random_hex()?;
        let csrf = random_hex()?;
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        let ttl = self.ttl;
        map.retain(|_, s| s.created.elapsed() < ttl);
        map.insert(
            id.clone(),
            Session {
                user,
                csrf,
                created: Instant::now(),
            },
        );
        Ok(id)
    }

    pub fn get(&self, id: &str) -> Option<Session> {
        let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.get(id)
            .filter(|s| s.created.elapsed() < self.ttl)
            .cloned()
    }

    pub fn remove(&self, id: &str) {
        self.map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_file_parses_users_groups_and_admins() {
        let f = TokenFile::parse(
            "# comment\n\nadmintoken1,alice,admins\nviewtoken22,bob\nroottoken3,root,dev,system:masters\n",
        )
        .unwrap();
        let a = f.lookup("admintoken1").unwrap();
        assert_eq!(a.name, "alice");
        assert!(a.admin);
        let b = f.lookup("viewtoken22").unwrap();
        assert!(!b.admin);
        assert!(b.groups.is_empty());
        assert!(f.lookup("roottoken3").unwrap().admin);
        assert!(f.lookup("admintoken").is_none());
        assert!(f.lookup("").is_none());
        assert_eq!(format!("{f:?}"), r#"["alice", "bob", "root"]"#);
    }

    #[test]
    fn token_file_errors_name_the_line_not_the_token() {
        assert_eq!(
            TokenFile::parse("short,alice").err(),
            Some((1, "token missing or shorter than 8 characters"))
        );
        assert_eq!(
            TokenFile::parse("\nlongenough1").err(),
            Some((2, "user name missing"))
        );
        assert_eq!(
            TokenFile::parse("longenough1,a\nlongenough1,b").err(),
            Some((2, "token used twice"))
        );
        assert_eq!(TokenFile::parse("# none\n").err(), Some((0, "no tokens")));
        let e = AuthError::ParseTokens {
            path: "/t".into(),
            line: 1,
            reason: "user name missing",
        };
        assert!(!e.to_string().contains("longenough1"));
    }

    #[test]
    fn sessions_expire_and_have_distinct_ids() {
        let s = Sessions::new(Duration::from_millis(50));
        let u = User {
            name: "a".into(),
            groups: vec![],
            admin: false,
        };
        let a = s.create(u.clone()).unwrap();
        let b = s.create(u).unwrap();
        assert_ne!(a, b);
        assert_eq!(a.len(), 64);
        let sa = s.get(&a).unwrap();
        assert_ne!(sa.csrf, s.get(&b).unwrap().csrf);
        std::thread::sleep(Duration::from_millis(60));
        assert!(s.get(&a).is_none());
    }

    #[test]
    fn lab_tokens_file_is_created_private_once_and_then_kept() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = std::env::temp_dir().join(format!("mignet-auth-{}", std::process::id()));
        let path = lab_tokens_path(&dir);
        let (f, created) = TokenFile::load_or_create(&path).unwrap();
        assert!(created);
        assert_eq!(
            f.users(),
            vec![
                (LAB_ADMIN_USER.to_owned(), true),
                (LAB_VIEWER_USER.to_owned(), false)
            ]
        );
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(path.parent().unwrap()), 0o700);
        let text = std::fs::read_to_string(&path).unwrap();
        // Distinct 64-hex-digit tokens; none is printed by Debug.
        let tokens: Vec<&str> = text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| l.split(',').next().unwrap())
            .collect();
        assert_eq!(tokens.len(), 2);
        assert_ne!(tokens[0], tokens[1]);
        assert!(tokens.iter().all(|t| t.len() == 64));
        assert!(!format!("{f:?}").contains(tokens[0]));
        // A second start keeps the file (and so the tokens handed out).
        let (g, created) = TokenFile::load_or_create(&path).unwrap();
        assert!(!created);
        assert_eq!(g.lookup(tokens[0]).map(|u| u.admin), Some(true));
        assert_eq!(std::fs::read_to_string(&path).unwrap(), text);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
