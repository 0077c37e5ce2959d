//! The replication source: connection settings, TLS, the raw protocol
//! connection, replication commands and the CopyBoth stream.

pub mod conn;
pub mod conninfo;
pub mod quote;
pub mod replication;
pub mod tls;

pub use conn::PgConn;
pub use conninfo::{ConnInfo, SslMode};
pub use replication::{
    check_wal_level, create_slot, drop_slot, identify_system, start_replication, CreatedSlot, ReplicationMessage,
    ReplicationStream, SnapshotAction, StartOptions, SystemInfo,
};
