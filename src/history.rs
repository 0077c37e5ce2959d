//! `waly history`: every version of one row, in commit order.
//!
//! The archive is walked in order (deduplicated, complete transactions only,
//! as `waly log` does). The row is followed by its primary key; when an
//! update changes the key, the history continues under the new one. A
//! snapshot row is the first known version of each generation; unchanged
//! TOAST values are carried forward from the version before; `waly` logical
//! messages of a transaction are the intent of every version it made.

use crate::archive::state;
use crate::archive::Store;
use crate::event::{Change, Op, Row};
use crate::log::{self, Bound, Item, LogOptions};
use crate::restore::{encode_key, identity_columns};
use crate::{Error, Lsn};
use chrono::{DateTime, Utc};

/// One version of the row.
#[derive(Debug, Clone)]
pub struct Version {
    /// 1, 2, 3, ... for this row.
    pub version: u64,
    /// The generation it is in.
    pub generation: String,
    /// `snapshot`, `insert`, `update`, `delete` or `truncate`.
    pub op: &'static str,
    /// The commit LSN (the snapshot's LSN for a snapshot version).
    pub commit_lsn: Lsn,
    /// The commit time (when the snapshot was taken, for a snapshot version).
    pub commit_time: DateTime<Utc>,
    /// The change itself (`None` for a snapshot version).
    pub change: Option<Change>,
    /// The whole row after this version (unchanged TOAST values carried
    /// forward); `None` once deleted.
    pub row: Option<Row>,
    /// The row before it.
    pub before: Option<Row>,
    /// The columns whose value changed (for an insert or snapshot: all).
    pub changed: Vec<String>,
    /// Columns whose value was carried forward (unchanged TOAST).
    pub unchanged_toast: Vec<String>,
    /// The key, when this version changed it: `(old, new)`, as text.
    pub key_change: Option<(String, String)>,
    /// The transaction's `waly` messages, joined by `; `.
    pub intent: Option<String>,
}

/// Where to look.
#[derive(Debug, Clone)]
pub struct HistoryQuery {
    /// `schema.table`.
    pub table: String,
    /// The key, as given: `col=val,...` or values in key order.
    pub key: String,
    /// Only versions committed at or after this point.
    pub since: Option<Bound>,
    /// Only versions committed at or before this point.
    pub until: Option<Bound>,
}

fn key_text(columns: &[String], key: &[u8]) -> String {
    let vals: Vec<Option<String>> = serde_json::from_slice(key).unwrap_or_default();
    columns
        .iter()
        .zip(vals)
        .map(|(c, v)| format!("{c}={}", v.as_deref().unwrap_or("NULL")))
        .collect::<Vec<_>>()
        .join(",")
}

fn value<'a>(row: &'a Row, col: &str) -> Option<&'a Option<String>> {
    row.0.iter().find(|(n, _)| &**n == col).map(|(_, v)| v)
}

/// Every version of the row with `query.key` in `query.table`, oldest first.
pub async fn history(store: &Store, query: &HistoryQuery) -> Result<(Vec<String>, Vec<Version>), Error> {
    let table = query.table.as_str();
    // The key columns, from the table's newest schema.
    let mut latest = None;
    let mut known = std::collections::BTreeSet::new();
    for g in state::generations(store).await? {
        let st = state::load_generation(store, &g).await?;
        for t in st.schemas.tables() {
            known.insert(t.to_string());
        }
        if let Some(s) = st.schemas.latest(table) {
            latest = Some(s.clone());
        }
    }
    let Some(schema) = latest else {
        let list: Vec<&str> = known.iter().map(String::as_str).collect();
        return Err(Error::NotInArchive(format!(
            "table {table} is not in the archive; archived tables: {}",
            if list.is_empty() {
                "none".to_string()
            } else {
                list.join(", ")
            }
        )));
    };
    if !schema.columns.iter().any(|c| c.primary_key) {
        return Err(Error::Config(format!(
            "{table} has no primary key, so its rows have no identity to follow"
        )));
    }
    let ident = identity_columns(&schema);
    let key = crate::restore::parse_keys(std::slice::from_ref(&query.key), &ident, table)?
        .pop()
        .unwrap_or_default();
    let row_key = |r: &Row| encode_key(&ident, |c| value(r, c).cloned());

    let mut out: Vec<Version> = Vec::new();
    let mut pending: Vec<Version> = Vec::new();
    let mut current = key.clone();
    let mut row: Option<Row> = None;
    let mut generation = String::new();
    let mut txn: Option<Lsn> = None;
    let mut intent: Option<String> = None;
    let mut n = 0u64;
    let opts = LogOptions {
        table: None,
        since: None,
        until: None,
        snapshot: true,
    };
    fn flush(pending: &mut Vec<Version>, intent: &Option<String>, out: &mut Vec<Version>) {
        for mut v in pending.drain(..) {
            v.intent = intent.clone();
            out.push(v);
        }
    }
    log::walk(store, &opts, &mut |item| {
        match item {
            Item::Generation(g) => {
                flush(&mut pending, &intent, &mut out);
                generation = g.to_string();
                row = None;
                txn = None;
                intent = None;
            }
            Item::SnapshotRow {
                table: t,
                lsn,
                taken_at,
                row: r,
            } => {
                if t == table && row_key(r) == current {
                    n += 1;
                    out.push(Version {
                        version: n,
                        generation: generation.clone(),
                        op: "snapshot",
                        commit_lsn: lsn,
                        commit_time: taken_at,
                        change: None,
                        before: row.take(),
                        row: Some(r.clone()),
                        changed: r.0.iter().map(|(c, _)| c.to_string()).collect(),
                        unchanged_toast: Vec::new(),
                        key_change: None,
                        intent: None,
                    });
                    row = Some(r.clone());
                }
            }
            Item::Message(m) => {
                if txn != Some(m.commit_lsn) {
                    flush(&mut pending, &intent, &mut out);
                    txn = Some(m.commit_lsn);
                    intent = None;
                }
                intent = Some(match intent.take() {
                    Some(i) => format!("{i}; {}", m.content),
                    None => m.content.clone(),
                });
            }
            Item::Change(c) => {
                if txn != Some(c.commit_lsn) {
                    flush(&mut pending, &intent, &mut out);
                    txn = Some(c.commit_lsn);
                    intent = None;
                }
                if &*c.table != table {
                    return Ok(());
                }
                let old_key = c.old.as_ref().map(&row_key);
                let new_key = c.new.as_ref().map(&row_key);
                let mine = match c.op {
                    Op::Insert => new_key.as_ref() == Some(&current),
                    // Also an update that gave a row this key: the history of
                    // the key starts there, saying where the row came from.
                    Op::Update => old_key.as_ref() == Some(&current) || new_key.as_ref() == Some(&current),
                    Op::Delete => old_key.as_ref() == Some(&current),
                    Op::Truncate => row.is_some(),
                };
                if !mine {
                    return Ok(());
                }
                let before = row.clone();
                let mut key_change = None;
                let after = match c.op {
                    Op::Insert | Op::Update => {
                        let mut whole = c.new.clone().unwrap_or_default();
                        for t in &c.unchanged_toast {
                            let carried = before.as_ref().and_then(|b| value(b, t)).cloned().flatten();
                            whole.0.push((t.clone(), carried));
                        }
                        // Carried values go back to their place in the row.
                        if let Some(b) = &before {
                            whole
                                .0
                                .sort_by_key(|(n, _)| b.0.iter().position(|(m, _)| m == n).unwrap_or(usize::MAX));
                        }
                        if let (Some(ok), Some(nk)) = (&old_key, &new_key) {
                            if ok != nk {
                                key_change = Some((key_text(&ident, ok), key_text(&ident, nk)));
                                current = nk.clone();
                            }
                        }
                        Some(whole)
                    }
                    Op::Delete | Op::Truncate => None,
                };
                let changed: Vec<String> = match (&before, &after) {
                    (Some(b), Some(a)) if c.op == Op::Update => {
                        a.0.iter()
                            .filter(|(n, v)| value(b, n) != Some(v))
                            .map(|(n, _)| n.to_string())
                            .collect()
                    }
                    (_, Some(a)) => a.0.iter().map(|(n, _)| n.to_string()).collect(),
                    _ => Vec::new(),
                };
                n += 1;
                pending.push(Version {
                    version: n,
                    generation: generation.clone(),
                    op: c.op.as_str(),
                    commit_lsn: c.commit_lsn,
                    commit_time: c.commit_time,
                    change: Some(c.clone()),
                    before,
                    row: after.clone(),
                    changed,
                    unchanged_toast: c.unchanged_toast.iter().map(|t| t.to_string()).collect(),
                    key_change,
                    intent: None,
                });
                row = after;
            }
        }
        Ok(())
    })
    .await?;
    flush(&mut pending, &intent, &mut out);
    if out.is_empty() {
        return Err(Error::NotInArchive(format!(
            "no row of {table} with key {} in the archive",
            key_text(&ident, &key)
        )));
    }
    let inside = |v: &Version| {
        let after = match query.since {
            None => true,
            Some(Bound::Lsn(l)) => v.commit_lsn >= l,
            Some(Bound::Time(t)) => v.commit_time >= t,
        };
        let before = match query.until {
            None => true,
            Some(Bound::Lsn(l)) => v.commit_lsn <= l,
            Some(Bound::Time(t)) => v.commit_time <= t,
        };
        after && before
    };
    out.retain(inside);
    Ok((ident, out))
}

impl Version {
    /// The `--json` form: the fields of `waly log --json`, plus `version`,
    /// `changed` and `intent` (and `snapshot`, `generation`, `key_change`).
    pub fn to_json(&self, table: &str) -> serde_json::Value {
        let mut v = match &self.change {
            Some(c) => serde_json::to_value(c).unwrap_or_default(),
            None => serde_json::json!({
                "commit_lsn": self.commit_lsn,
                "commit_time": self.commit_time.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
                "table": table,
                "op": "snapshot",
                "new": self.row,
            }),
        };
        if let Some(o) = v.as_object_mut() {
            if self.change.is_some() {
                // The whole row, unchanged TOAST values carried forward.
                o.insert("new".into(), serde_json::to_value(&self.row).unwrap_or_default());
            }
            o.insert("version".into(), self.version.into());
            o.insert("snapshot".into(), self.change.is_none().into());
            o.insert("generation".into(), self.generation.clone().into());
            o.insert("changed".into(), self.changed.clone().into());
            o.insert("intent".into(), self.intent.clone().into());
            o.insert(
                "key_change".into(),
                self.key_change.as_ref().map_or(
                    serde_json::Value::Null,
                    |(a, b)| serde_json::json!({"from": a, "to": b}),
                ),
            );
        }
        v
    }
}
