//! The archive: where waly keeps events, snapshots and schemas, and how the
//! objects are named. Layout (all keys relative to the archive URL):
//!
//! ```text
//! waly.json                                           identity: which database this archive belongs to
//! generations/<gen>/generation.json                   why and where the generation began
//! generations/<gen>/segments/<n>-<first>-<last>[-<token>].jsonl.zst  events, hash-chained, n = 0, 1, 2, ...
//! generations/<gen>/schemas/<schema.table>/<version>.json  each version of a table's columns
//! generations/<gen>/snapshots/<lsn>/<schema.table>/<part>.jsonl.zst  snapshot rows
//! generations/<gen>/snapshots/<lsn>/manifest.json     written last: the snapshot exists only with it
//! generations/<gen>/snapshots/<lsn>/abandoned.json    a prune's mark: an unfinished snapshot, ignored
//! leases/<token>-<gen>-<first>.json                  who may write segments from <gen>/<first> on
//! errors/<time>.json                                  errors that ended `waly run` sessions
//! index/...                                           derived lookup structures (docs/FORMAT.md)
//! ```
//!
//! Numbers are fixed-width so keys sort in order; readers sort listings
//! themselves and never trust listing order. See docs/FORMAT.md.

pub mod ahead;
pub mod fetching;
pub mod layout;
pub mod lease;
pub mod state;

pub mod store;

pub use store::Store;
