//! Admin commands, executed the same way whether they arrive through the admin socket
//! of a running server or from the CLI on a stopped one.

use crate::control::{Reply, Request};
use crate::crypto::Keyring;
use crate::store::Store;

/// Runs admin commands against one open store.
#[derive(Clone)]
pub struct Admin {
    pub store: Store,
    pub keyring: Option<Keyring>,
}

impl Admin {
    /// Executes one command.
    pub async fn execute(&self, req: Request) -> Reply {
        match req {
            Request::Ping => Reply::ok(format!("easel {} is running", env!("CARGO_PKG_VERSION"))),
            Request::Backup { path } => match self.store.backup_to(&path).await {
                Ok(r) => {
                    tracing::info!(
                        tables = r.tables,
                        records = r.records,
                        "online backup written"
                    );
                    Reply::ok(format!(
                        "backup written to {} ({} tables, {} records, {} bytes)",
                        r.path.display(),
                        r.tables,
                        r.records,
                        r.bytes
                    ))
                }
                Err(e) => Reply::fail(format!("backup failed: {e}")),
            },
            // Only a running server receives this: the CLI restores a stopped one itself.
            Request::Restore { .. } => Reply::fail(
                "restore refused: the server is running and holds the database; stop it, then run `easel restore FILE` again",
            ),
            Request::RotateMaster => match &self.keyring {
                None => Reply::fail("no master key is loaded"),
                Some(ring) => match ring.rotate_master(&self.store).await {
                    Ok(r) => {
                        tracing::warn!(old = %r.old_key_id, new = %r.new_key_id, data_keys = r.data_keys, "master key rotated");
                        Reply::ok(format!(
                            "master key rotated: {} data keys re-sealed; key id {} -> {}. Back up the new key file now.",
                            r.data_keys, r.old_key_id, r.new_key_id
                        ))
                    }
                    Err(e) => Reply::fail(format!("rotation failed: {e}")),
                },
            },
        }
    }
}
