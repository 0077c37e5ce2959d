//! waly: a change-data-capture sidecar for PostgreSQL.
//!
//! waly subscribes to a logical replication slot (`pgoutput`) and turns every
//! committed change into an immutable event. A tour of the modules, in the
//! order data flows through them:
//!
//! - [`source`]: the replication connection, our own, on `postgres-protocol`,
//!   tokio and rustls. [`source::conninfo`] parses libpq-style settings,
//!   [`source::tls`] applies `sslmode`, [`source::conn`] logs in (cleartext,
//!   MD5, SCRAM-SHA-256) and frames messages, [`source::replication`] runs
//!   `IDENTIFY_SYSTEM`, `CREATE_REPLICATION_SLOT` and `START_REPLICATION`, and
//!   keeps the walsender happy from a task of its own.
//! - [`pgoutput`]: pure decoding of pgoutput bytes into messages.
//! - [`event`]: messages assembled into changes with the identity
//!   `(commit_lsn, seq)`, and the relation cache that names their columns.
//! - [`pgtypes`]: type names as `format_type` prints them.
//! - [`tail`]: `waly tail`, a live view of the changes.
//! - [`schema`]: schema versions, the DDL that makes them, and rows carried
//!   from one version's shape to another's by attnum.
//! - [`segment`]: the archive's segment format; [`snapshot`]: base snapshots;
//!   [`archive`]: the object store, its layout, the archive's state, and the
//!   writer leases that fence a deposed writer out.
//! - [`pipeline`]: `waly run`, the sidecar; [`metrics`]: its counters, health
//!   rules and `/metrics` server; [`init`]: `waly init`.
//! - Readers: [`log`] (`waly log`, and the deduplication every reader
//!   shares), [`restore`] (`restore` and `show`), [`history`] with [`index`],
//!   [`verify`].
//! - Retention: [`compact`] (a snapshot from the archive alone) and [`prune`].
//! - [`cli`]: the command line, thin.
//! - [`lsn`]: WAL positions as a type; [`error`]: the one error type.

pub mod archive;
pub mod catalog;
pub mod cli;
pub mod compact;
pub mod crypt;
pub mod error;
pub mod event;
pub mod export;
pub mod history;
pub mod index;
pub mod init;
pub mod log;
pub mod lsn;
pub mod metrics;
pub mod pgoutput;
pub mod pgtypes;
pub mod pipeline;
pub mod prune;
pub mod restore;
pub mod schema;
pub mod scratch;
pub mod segment;
pub mod snapshot;
pub mod source;
pub mod synth;
pub mod tail;
pub mod verify;

pub use error::Error;
pub use lsn::Lsn;
