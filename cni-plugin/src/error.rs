//! CNI error values and the spec's error codes.
//!
//! Every failure we understand maps to a specific code (SPEC §5). The reference
//! plugins report nearly everything as 999; callers of ours can branch on the code.

use serde::Serialize;

/// Error codes from the CNI specification (§5) plus the Go library's 8 and 999.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(into = "u32")]
pub enum Code {
    /// 1: the config's cniVersion is not supported, or the verb is not allowed in it.
    IncompatibleVersion,
    /// 2: a field the plugin does not support.
    UnsupportedField,
    /// 3: the container is unknown or does not exist.
    UnknownContainer,
    /// 4: a required environment variable is missing or invalid.
    InvalidEnvironment,
    /// 5: an I/O failure (store, sysfs, netlink).
    Io,
    /// 6: the config (stdin) could not be decoded.
    Decode,
    /// 7: the config decoded but a value is invalid.
    InvalidConfig,
    /// 8: CNI_NETNS is not a usable network namespace.
    InvalidNetns,
    /// 11: a transient condition; the runtime should retry later.
    TryAgainLater,
    /// 50: the plugin is not available (STATUS).
    Unavailable,
    /// 51: not available, and existing containers have limited connectivity (STATUS).
    UnavailableLimited,
    /// 100+: plugin-specific codes.
    Plugin(u32),
}

impl Code {
    pub fn as_u32(self) -> u32 {
        match self {
            Code::IncompatibleVersion => 1,
            Code::UnsupportedField => 2,
            Code::UnknownContainer => 3,
            Code::InvalidEnvironment => 4,
            Code::Io => 5,
            Code::Decode => 6,
            Code::InvalidConfig => 7,
            Code::InvalidNetns => 8,
            Code::TryAgainLater => 11,
            Code::Unavailable => 50,
            Code::UnavailableLimited => 51,
            Code::Plugin(n) => n,
        }
    }
}

impl Code {
    /// The code a delegated plugin printed, back into our enum.
    pub fn from_u32(n: u32) -> Code {
        match n {
            1 => Code::IncompatibleVersion,
            2 => Code::UnsupportedField,
            3 => Code::UnknownContainer,
            4 => Code::InvalidEnvironment,
            5 => Code::Io,
            6 => Code::Decode,
            7 => Code::InvalidConfig,
            8 => Code::InvalidNetns,
            11 => Code::TryAgainLater,
            50 => Code::Unavailable,
            51 => Code::UnavailableLimited,
            n => Code::Plugin(n),
        }
    }
}

/// `err: cause: cause...`, for error details (our Display impls do not
/// repeat their source, so the chain is assembled once, at the edge).
pub fn chain(err: &dyn std::error::Error) -> String {
    let mut s = err.to_string();
    let mut cur = err.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

impl From<Code> for u32 {
    fn from(c: Code) -> u32 {
        c.as_u32()
    }
}

/// Plugin-specific codes (100 and up).
pub mod plugin_codes {
    /// The IPAM range has no free address left.
    pub const RANGE_EXHAUSTED: u32 = 100;
    /// A netlink operation failed.
    pub const NETLINK: u32 = 101;
    /// CHECK found the container's state differs from prevResult.
    pub const CHECK_MISMATCH: u32 = 102;
    /// A delegated plugin (IPAM exec) failed without a CNI error of its own.
    pub const DELEGATE: u32 = 103;
}

/// A CNI error as printed on stdout: `{cniVersion, code, msg, details}`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{msg}{}", if .details.is_empty() { String::new() } else { format!(": {}", .details) })]
pub struct CniError {
    pub code: Code,
    pub msg: String,
    pub details: String,
}

impl CniError {
    pub fn new(code: Code, msg: impl Into<String>) -> Self {
        CniError {
            code,
            msg: msg.into(),
            details: String::new(),
        }
    }

    pub fn with_details(mut self, details: impl Into<String>) -> Self {
        self.details = details.into();
        self
    }

    /// An invalid value for a named config field: the message names both.
    pub fn invalid_field(
        field: &str,
        value: impl std::fmt::Display,
        why: impl std::fmt::Display,
    ) -> Self {
        CniError::new(
            Code::InvalidConfig,
            format!("invalid {field} \"{value}\": {why}"),
        )
    }

    pub fn decode(what: &str, err: impl std::fmt::Display) -> Self {
        CniError::new(Code::Decode, format!("failed to decode {what}: {err}"))
    }

    pub fn env(var: &str, why: impl std::fmt::Display) -> Self {
        CniError::new(Code::InvalidEnvironment, format!("{var}: {why}"))
    }

    pub fn io(what: impl std::fmt::Display, err: impl std::fmt::Display) -> Self {
        CniError::new(Code::Io, format!("{what}: {err}"))
    }

    /// The JSON the spec wants on stdout for `cni_version` (the caller's config version).
    pub fn to_json(&self, cni_version: &str) -> serde_json::Value {
        let mut v = serde_json::json!({
            "cniVersion": cni_version,
            "code": self.code.as_u32(),
            "msg": self.msg,
        });
        if !self.details.is_empty() {
            v["details"] = serde_json::Value::String(self.details.clone());
        }
        v
    }
}

pub type CniResult<T> = std::result::Result<T, CniError>;
