//! Values of generated columns the stream does not carry.
//!
//! pgoutput sends no generated column before PostgreSQL 18, and never a
//! virtual one. A generation expression is immutable and reads only its
//! own row, so `waly run` computes the value when it archives a change: it
//! evaluates the recorded expression on the source database over the row's
//! values, many rows per query. Every reader then sees the value the
//! database stored (restores still recreate the column as generated).
//!
//! An update that leaves a large value unchanged does not send it (unchanged
//! TOAST). A generated column that reads only such values is unchanged too
//! and is archived as such. One that reads both such a value and a changed
//! column cannot be computed unless the old row carries the value (`REPLICA
//! IDENTITY FULL`); it is archived as unknown (see [`super::shape::unknown`]),
//! and a reader that needs it refuses, saying why.

use super::Schemas;
use crate::event::{Change, Row};
use crate::source::quote;
use crate::{Error, Lsn};
use std::collections::HashMap;
use std::sync::Arc;

/// The most rows, and about the most bytes of values, one query carries.
const BATCH_ROWS: usize = 500;
const BATCH_BYTES: usize = 4 << 20;

/// How to compute one schema version's generated columns.
#[derive(Debug)]
struct Plan {
    /// The columns the expressions may read: name and type, in order.
    inputs: Vec<(Arc<str>, String)>,
    /// Each generated column: name, expression, and the inputs whose name
    /// its expression mentions (a superset of those it reads).
    outputs: Vec<(Arc<str>, String, Vec<usize>)>,
    /// Every column's name in table order, to place computed values.
    order: Vec<Arc<str>>,
}

/// Computes generated columns for changes, with a plan per schema version.
#[derive(Debug, Default)]
pub struct Computer {
    plans: HashMap<(String, u32), Option<Arc<Plan>>>,
}

impl Computer {
    fn plan(&mut self, schemas: &Schemas, table: &str, version: u32) -> Option<Arc<Plan>> {
        self.plans
            .entry((table.to_string(), version))
            .or_insert_with(|| {
                let rec = schemas.version(table, version)?;
                let inputs: Vec<(Arc<str>, String)> = rec
                    .columns
                    .iter()
                    .filter(|c| c.generated.is_none())
                    .map(|c| (Arc::from(c.name.as_str()), c.type_name.clone()))
                    .collect();
                let outputs: Vec<_> = rec
                    .columns
                    .iter()
                    .filter_map(|c| {
                        let g = c.generated.as_ref()?;
                        let names = identifiers(&g.expression);
                        let mentioned = inputs
                            .iter()
                            .enumerate()
                            .filter(|(_, (n, _))| names.iter().any(|t| t == &**n))
                            .map(|(i, _)| i)
                            .collect();
                        Some((Arc::from(c.name.as_str()), g.expression.clone(), mentioned))
                    })
                    .collect();
                if outputs.is_empty() {
                    return None;
                }
                let order = rec.columns.iter().map(|c| Arc::from(c.name.as_str())).collect();
                Some(Arc::new(Plan { inputs, outputs, order }))
            })
            .clone()
    }

    /// Whether `c` (following schema `version`) lacks a generated column's
    /// value that must be computed.
    pub fn needs(&mut self, schemas: &Schemas, c: &Change, version: u32) -> bool {
        let Some(new) = &c.new else { return false };
        let Some(plan) = self.plan(schemas, &c.table, version) else {
            return false;
        };
        plan.outputs
            .iter()
            .any(|(g, _, _)| new.get(g).is_none() && !c.unchanged_toast.contains(g))
    }

    /// Fills in the missing generated values of `changes` (each with its
    /// schema version), querying the source database `sql`. Fails only if
    /// the database cannot be asked at all; an expression that fails leaves
    /// its values unknown, with the database's reason.
    pub async fn fill(
        &mut self,
        sql: &tokio_postgres::Client,
        schemas: &Schemas,
        changes: &mut [(Change, u32)],
    ) -> Result<(), Error> {
        let mut groups: HashMap<(Arc<str>, u32), Vec<usize>> = HashMap::new();
        for (i, (c, v)) in changes.iter().enumerate() {
            if self.needs(schemas, c, *v) {
                groups.entry((c.table.clone(), *v)).or_default().push(i);
            }
        }
        for ((table, version), rows) in groups {
            let Some(plan) = self.plan(schemas, &table, version) else {
                continue;
            };
            let mut start = 0;
            while start < rows.len() {
                let mut end = start;
                let mut bytes = 0;
                while end < rows.len() && end - start < BATCH_ROWS && bytes < BATCH_BYTES {
                    bytes += changes[rows[end]].0.new.as_ref().map_or(0, row_bytes);
                    end += 1;
                }
                let batch = &rows[start..end];
                let computed = match evaluate(sql, &plan, changes, batch).await? {
                    Ok(v) => v,
                    // One row's failure must not cost the others theirs.
                    Err(_) if batch.len() > 1 => {
                        let mut each = Vec::with_capacity(batch.len());
                        for &i in batch {
                            let one = evaluate(sql, &plan, changes, &[i]).await?;
                            each.push(one.and_then(|mut v| v.remove(0)));
                        }
                        each
                    }
                    Err(e) => vec![Err(e)],
                };
                for (&i, values) in batch.iter().zip(computed) {
                    complete(&plan, &mut changes[i].0, values);
                }
                start = end;
            }
        }
        Ok(())
    }
}

/// The identifiers an expression (as `pg_get_expr` prints it) names, as
/// PostgreSQL reads them: unquoted ones folded to lower case, quoted ones
/// as written; string literals and numbers skipped. A superset of the
/// columns it reads (function and type names come along), never less.
fn identifiers(expr: &str) -> Vec<String> {
    let c: Vec<char> = expr.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < c.len() {
        if c[i] == '\'' {
            // A string literal; in an E'' one a backslash escapes.
            let escapes = i > 0 && matches!(c[i - 1], 'E' | 'e');
            i += 1;
            while i < c.len() {
                match c[i] {
                    '\\' if escapes => i += 2,
                    '\'' if c.get(i + 1) == Some(&'\'') => i += 2,
                    '\'' => break,
                    _ => i += 1,
                }
            }
            i += 1;
        } else if c[i] == '"' {
            let mut name = String::new();
            i += 1;
            while i < c.len() {
                if c[i] == '"' {
                    if c.get(i + 1) == Some(&'"') {
                        name.push('"');
                        i += 2;
                        continue;
                    }
                    break;
                }
                name.push(c[i]);
                i += 1;
            }
            i += 1;
            out.push(name);
        } else if c[i].is_alphabetic() || c[i] == '_' {
            let mut name = String::new();
            while i < c.len() && (c[i].is_alphanumeric() || c[i] == '_' || c[i] == '$') {
                name.extend(c[i].to_lowercase());
                i += 1;
            }
            out.push(name);
        } else if c[i].is_ascii_digit() {
            while i < c.len() && (c[i].is_alphanumeric() || c[i] == '.' || c[i] == '_') {
                i += 1;
            }
        } else {
            i += 1;
        }
    }
    out
}

fn row_bytes(r: &Row) -> usize {
    r.0.iter().map(|(_, v)| v.as_ref().map_or(4, |s| s.len() + 4)).sum()
}

/// An input's value for the computation: sent, or (unchanged TOAST) from
/// the old row when the replica identity sent the whole row.
fn input<'a>(c: &'a Change, name: &str) -> Option<&'a Option<String>> {
    let new = c.new.as_ref()?;
    new.get(name).or_else(|| {
        c.unchanged_toast
            .iter()
            .any(|u| &**u == name)
            .then(|| c.old.as_ref()?.get(name))
            .flatten()
    })
}

/// The generated values of the rows `batch` of `changes`, one `Vec` per
/// row in plan order; the inner `Err` is the database's refusal.
async fn evaluate(
    sql: &tokio_postgres::Client,
    plan: &Plan,
    changes: &[(Change, u32)],
    batch: &[usize],
) -> Result<Result<Vec<Result<Vec<Option<String>>, String>>, String>, Error> {
    const ORD: &str = "\"waly ordinal\"";
    let mut names = vec![ORD.to_string()];
    let mut casts = vec![format!("v.{ORD}")];
    for (n, t) in &plan.inputs {
        let q = quote::ident(n)?;
        casts.push(format!("v.{q}::{t} AS {q}"));
        names.push(q);
    }
    let mut values = String::new();
    for (k, &i) in batch.iter().enumerate() {
        let c = &changes[i].0;
        values.push_str(if k == 0 { "(" } else { ", (" });
        values.push_str(&k.to_string());
        for (n, _) in &plan.inputs {
            values.push_str(", ");
            // A value the archive cannot know is not sent (its outputs
            // are unknown too: see `complete`).
            match input(c, n) {
                Some(Some(v)) if super::shape::unknown(v).is_none() => values.push_str(&quote::literal(v)?),
                _ => values.push_str("NULL"),
            }
        }
        values.push(')');
    }
    let exprs: Vec<String> = plan.outputs.iter().map(|(_, e, _)| format!("({e})")).collect();
    let query = format!(
        "SET LOCAL search_path = pg_catalog, public; \
         SELECT {ORD}, {} FROM (SELECT {} FROM (VALUES {values}) AS v({})) AS t ORDER BY 1",
        exprs.join(", "),
        casts.join(", "),
        names.join(", "),
    );
    // SET LOCAL needs a transaction block; the query runs in its own.
    let messages = match sql.simple_query(&format!("BEGIN; {query}; COMMIT")).await {
        Ok(m) => m,
        Err(e) => {
            let _ = sql.simple_query("ROLLBACK").await;
            // The expression failed: its values are unknown. The server or
            // the connection failed (a restart, a closed connection): the
            // session starts again and computes them then.
            let err = crate::source::tls::sql_failed("computing generated columns", e);
            if err.is_transient() {
                return Err(err);
            }
            return match err {
                Error::Server(s) => Ok(Err(s.message)),
                other => Err(other),
            };
        }
    };
    let mut out = vec![Err("no value came back".to_string()); batch.len()];
    for m in messages {
        if let tokio_postgres::SimpleQueryMessage::Row(r) = m {
            let Some(k) = r.get(0).and_then(|s| s.parse::<usize>().ok()) else {
                continue;
            };
            if let Some(slot) = out.get_mut(k) {
                *slot = Ok((1..=plan.outputs.len()).map(|j| r.get(j).map(str::to_string)).collect());
            }
        }
    }
    Ok(Ok(out))
}

/// Puts the computed values into `c`'s new row, in table order: a value
/// computed from every input its expression may read; unchanged when it
/// reads only values the update did not send; unknown otherwise.
fn complete(plan: &Plan, c: &mut Change, computed: Result<Vec<Option<String>>, String>) {
    let lsn: Lsn = c.lsn;
    let mut found: Vec<(Arc<str>, Option<String>)> = Vec::new();
    let mut unchanged = Vec::new();
    for (j, (g, _, mentioned)) in plan.outputs.iter().enumerate() {
        let new = c.new.as_ref().expect("needs() saw a new row");
        if new.get(g).is_some() || c.unchanged_toast.contains(g) {
            continue; // the stream carried it
        }
        let available = mentioned.iter().all(|&i| input(c, &plan.inputs[i].0).is_some());
        let changed = mentioned.iter().any(|&i| new.get(&plan.inputs[i].0).is_some());
        // An input the archive cannot know (PostgreSQL 16 and later did not
        // send it: see `later`) makes the output unknown, for that reason.
        let unknown_input = mentioned.iter().find_map(|&i| {
            let name = &plan.inputs[i].0;
            let why = super::shape::unknown(input(c, name)?.as_deref()?)?;
            Some((name, why))
        });
        let value = match (&computed, unknown_input) {
            (_, Some((name, why))) => Some(super::shape::unknown_value(&format!(
                "the generated column {g} of the change at {lsn} reads the column {name}, whose value is not \
                 known: {why}"
            ))),
            (Ok(v), None) if available => v[j].clone(),
            (Err(e), None) if available => Some(super::shape::unknown_value(&format!(
                "the generated column {g} of the change at {lsn} could not be computed on the source: {e}"
            ))),
            _ if !changed => {
                unchanged.push(g.clone());
                continue;
            }
            _ => Some(super::shape::unknown_value(&format!(
                "the generated column {g} of the change at {lsn} reads a large value the update did not \
                 send (unchanged TOAST), so waly could not compute it; with REPLICA IDENTITY FULL on the \
                 table it can"
            ))),
        };
        found.push((g.clone(), value));
    }
    c.unchanged_toast.extend(unchanged);
    let Some(new) = c.new.as_mut() else { return };
    let mut rest = std::mem::take(&mut new.0);
    let mut row = Vec::with_capacity(rest.len() + found.len());
    for name in &plan.order {
        if let Some(p) = rest.iter().position(|(n, _)| n == name) {
            row.push(rest.remove(p));
        } else if let Some(p) = found.iter().position(|(n, _)| n == name) {
            row.push(found.remove(p));
        }
    }
    row.append(&mut rest);
    new.0 = row;
}

#[cfg(test)]
mod tests {
    use super::identifiers;

    #[test]
    fn an_expression_names_its_columns_and_not_the_letters_of_its_functions() {
        // `n` is a column; "length" and "min" contain the letter, not the name.
        assert_eq!(identifiers("length(big)"), ["length", "big"]);
        assert!(!identifiers("length(big)").contains(&"n".to_string()));
        assert_eq!(
            identifiers(r#"(("Price" * (qty)::numeric) || 'n, "x"')"#),
            ["Price", "qty", "numeric"]
        );
        assert_eq!(identifiers("upper(name) || E'it\\'s n'"), ["upper", "name", "e"]);
        assert_eq!(identifiers("(a + 1.5e3) * b2"), ["a", "b2"]);
    }
}
