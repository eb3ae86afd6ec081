//! The local admin socket: CLI commands reach a running server through a Unix socket
//! in the data dir (mode 0600, owner-only, peer uid checked). One JSON line in, one
//! JSON line out.

use crate::crypto::Secret;
use serde::{Deserialize, Serialize};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

/// File name of the socket inside the data dir.
pub const SOCKET_FILE: &str = "admin.sock";
const MAX_LINE: usize = 64 * 1024;

/// A command for the running server.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "kebab-case")]
pub enum Request {
    /// Is anyone there?
    Ping,
    /// Write an online backup to this (absolute) path.
    Backup { path: PathBuf },
    /// Restore from a backup (always refused while the server runs).
    Restore { path: PathBuf },
    /// Rewrite the database into a fresh file (always refused while the server runs).
    Compact,
    /// Re-seal every data key under a new master key.
    RotateMaster,
    /// Create an account.
    UserCreate {
        email: String,
        name: Option<String>,
        admin: bool,
        #[serde(with = "crate::crypto::exposed")]
        password: Secret<String>,
    },
    /// Set a new password that its owner must change at next sign-in.
    UserResetPassword {
        email: String,
        #[serde(with = "crate::crypto::exposed")]
        password: Secret<String>,
    },
    /// Create an API key; the reply's message is the key and nothing else.
    KeyCreate {
        email: String,
        name: String,
        expires_days: Option<u32>,
    },
    /// Grant credits to an account.
    CreditsGrant {
        email: String,
        amount: f64,
        note: Option<String>,
    },
    /// Write everything held about an account to a new ZIP file at this (absolute) path.
    Export { email: String, path: PathBuf },
    /// Read every asset blob and check it against its address.
    LibraryVerify,
}

/// The answer to a command.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Reply {
    pub ok: bool,
    pub message: String,
}

impl Reply {
    /// A success.
    pub fn ok(message: impl Into<String>) -> Self {
        Reply {
            ok: true,
            message: message.into(),
        }
    }
    /// A failure.
    pub fn fail(message: impl Into<String>) -> Self {
        Reply {
            ok: false,
            message: message.into(),
        }
    }
}

/// Executes commands on the server side.
pub type Handler =
    Arc<dyn Fn(Request) -> Pin<Box<dyn Future<Output = Reply> + Send>> + Send + Sync>;

/// The socket path for a data dir.
pub fn socket_path(data_dir: &Path) -> PathBuf {
    data_dir.join(SOCKET_FILE)
}

/// Binds the socket (replacing a stale one) and serves commands until the task is dropped.
pub fn serve(path: &Path, handler: Handler) -> std::io::Result<tokio::task::JoinHandle<()>> {
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let handler = handler.clone();
            tokio::spawn(async move {
                if let Err(e) = answer(stream, handler).await {
                    tracing::warn!(error = %e, "admin socket connection failed");
                }
            });
        }
    }))
}

fn same_user(stream: &UnixStream) -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    stream
        .peer_cred()
        .map(|c| c.uid() == me || c.uid() == 0)
        .unwrap_or(false)
}

async fn answer(stream: UnixStream, handler: Handler) -> std::io::Result<()> {
    let allowed = same_user(&stream);
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    BufReader::new(read.take(MAX_LINE as u64))
        .read_line(&mut line)
        .await?;
    let reply = if !allowed {
        Reply::fail("the admin socket only serves the user that runs Easel")
    } else {
        match serde_json::from_str::<Request>(&line) {
            Ok(req) => {
                tracing::info!(command = ?command_name(&req), "admin command via socket");
                handler(req).await
            }
            Err(e) => Reply::fail(format!("not a command: {e}")),
        }
    };
    let mut out = serde_json::to_vec(&reply).map_err(std::io::Error::other)?;
    out.push(b'\n');
    write.write_all(&out).await?;
    write.shutdown().await
}

fn command_name(req: &Request) -> &'static str {
    match req {
        Request::Ping => "ping",
        Request::Backup { .. } => "backup",
        Request::Restore { .. } => "restore",
        Request::Compact => "compact",
        Request::RotateMaster => "rotate-master",
        Request::UserCreate { .. } => "user-create",
        Request::UserResetPassword { .. } => "user-reset-password",
        Request::KeyCreate { .. } => "key-create",
        Request::CreditsGrant { .. } => "credits-grant",
        Request::Export { .. } => "export",
        Request::LibraryVerify => "library-verify",
    }
}

/// Sends a command to a running server. `Ok(None)` means no server is listening.
pub async fn call(path: &Path, req: &Request) -> std::io::Result<Option<Reply>> {
    let stream = match UnixStream::connect(path).await {
        Ok(s) => s,
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Ok(None);
        }
        Err(e) => return Err(e),
    };
    let (read, mut write) = stream.into_split();
    let mut out = serde_json::to_vec(req).map_err(std::io::Error::other)?;
    out.push(b'\n');
    write.write_all(&out).await?;
    let mut line = String::new();
    BufReader::new(read.take(MAX_LINE as u64))
        .read_line(&mut line)
        .await?;
    serde_json::from_str(&line)
        .map(Some)
        .map_err(|e| std::io::Error::other(format!("the server sent an unreadable answer: {e}")))
}
