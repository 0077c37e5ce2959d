//! DDL capture: the event trigger `waly init` installs (sql/ddl.sql), the
//! messages it emits, and the one catalog query every reader of a table
//! definition shares (sql/definition.sql).

use super::{ColumnDef, Ddl, TableMeta};
use crate::source::quote;
use crate::Error;
use serde::Deserialize;

/// The prefix of the trigger's logical messages.
pub const PREFIX: &str = "waly_ddl";

/// The name of the event trigger that captures DDL.
pub const TRIGGER: &str = "waly_capture_ddl";

const DEFINITION_SQL: &str = include_str!("../../sql/definition.sql");
const DDL_SQL: &str = include_str!("../../sql/ddl.sql");
const PUBLISHED_SQL: &str = include_str!("../../sql/published.sql");
/// The line in sql/ddl.sql's capture function that names its version: a
/// trigger whose function lacks it was installed by an earlier waly.
const CAPTURE_VERSION: &str = "waly ddl capture 10";

/// The SQL that installs (or reinstalls) the DDL capture triggers.
pub fn install_sql() -> Result<String, Error> {
    Ok(DDL_SQL
        .replace("@DEFINITION@", &DEFINITION_SQL.replace(":rel", "$1"))
        .replace("@PUBLISHED@", &published_sql("$1")?))
}

/// sql/published.sql with `publication` (an SQL expression: a parameter
/// or a literal) as the publication's name: rows `(schemaname, tablename,
/// rel, whole)`.
pub fn published_sql(publication: &str) -> Result<String, Error> {
    Ok(PUBLISHED_SQL
        .replace(":pub", publication)
        .replace(
            "@RESTORED@",
            &quote::literal(&format!("{}%", crate::restore::RESTORED_COMMENT))?,
        )
        .replace("@SCHEMA_KEYS@", &quote::literal(crate::crypt::shapes::TABLE_COMMENT)?))
}

/// A table's definition as sql/definition.sql gives it.
#[derive(Debug, Clone, Deserialize)]
pub struct TableDef {
    /// Its schema.
    pub schema: String,
    /// Its name.
    pub name: String,
    /// Its columns, by attnum.
    pub columns: Vec<ColumnDef>,
    /// The rest of it.
    #[serde(flatten)]
    pub meta: TableMeta,
}

impl TableDef {
    /// `schema.table`.
    pub fn qualified(&self) -> String {
        format!("{}.{}", self.schema, self.name)
    }

    /// The table, to snapshot or archive.
    pub fn table_ref(&self) -> crate::snapshot::TableRef {
        crate::snapshot::TableRef {
            schema: self.schema.clone(),
            name: self.name.clone(),
        }
    }
}

/// One message of the DDL trigger.
#[derive(Debug, Clone, Deserialize)]
pub struct DdlMessage {
    /// The message format's version (1).
    pub waly_ddl: u32,
    /// The command tag.
    pub tag: String,
    /// The statement text.
    #[serde(default)]
    pub command: String,
    /// Whether the table's rows were rewritten.
    #[serde(default)]
    pub rewritten: bool,
    /// The table was dropped (then `schema` and `name` say which).
    #[serde(default)]
    pub dropped: bool,
    /// The table's OID.
    #[serde(default)]
    pub oid: u32,
    /// For a table its transaction created (`CREATE TABLE`, permanent,
    /// capture 10 on): the publications that publish it whole as this
    /// command leaves it. Absent for any other table.
    #[serde(default)]
    pub created_in: Option<Vec<String>>,
    /// A dropped table's schema.
    #[serde(default)]
    pub schema: Option<String>,
    /// A dropped table's name.
    #[serde(default)]
    pub name: Option<String>,
    /// The table's definition after the DDL (absent when dropped).
    #[serde(default)]
    pub table: Option<TableDef>,
    /// For a publication command (`CREATE`, `ALTER` or `DROP
    /// PUBLICATION`): every publication of the database, each with the
    /// tables (`[schema, table]`) it publishes whole as the command left
    /// them (sql/published.sql).
    #[serde(default)]
    pub publications: Option<std::collections::BTreeMap<String, Vec<(String, String)>>>,
}

impl DdlMessage {
    /// Parses a message's content; `None` for a version this waly does not know.
    pub fn parse(content: &str) -> Result<Option<DdlMessage>, Error> {
        let v: serde_json::Value = serde_json::from_str(content)
            .map_err(|e| Error::Protocol(format!("a {PREFIX} message is not JSON: {e}")))?;
        if v["waly_ddl"] != 1 {
            return Ok(None);
        }
        serde_json::from_value(v)
            .map(Some)
            .map_err(|e| Error::Protocol(format!("a {PREFIX} message is not one waly understands: {e}")))
    }

    /// `schema.table` of the table it is about.
    pub fn qualified(&self) -> Option<String> {
        match (&self.table, &self.schema, &self.name) {
            (Some(t), _, _) => Some(t.qualified()),
            (None, Some(s), Some(n)) => Some(format!("{s}.{n}")),
            _ => None,
        }
    }

    /// The DDL as a version records it; `message_lsn` is the message's
    /// own WAL position.
    pub fn ddl(&self, message_lsn: crate::Lsn) -> Ddl {
        Ddl {
            tag: self.tag.clone(),
            command: self.command.clone(),
            rewritten: self.rewritten,
            message_lsn: Some(message_lsn),
            sealed: None,
        }
    }
}

/// The definition of `schema.name` from the catalog, as the client's
/// snapshot sees it; `None` when there is no such table.
pub async fn catalog_definition(
    client: &tokio_postgres::Client,
    schema: &str,
    name: &str,
) -> Result<Option<TableDef>, Error> {
    let qualified = format!("{}.{}", quote::ident(schema)?, quote::ident(name)?);
    let sql = format!(
        "SELECT d::text FROM ({}) q(d)",
        DEFINITION_SQL.replace(":rel", "to_regclass($1::text)")
    );
    let failed =
        |e: tokio_postgres::Error| crate::source::tls::sql_failed(&format!("reading the definition of {qualified}"), e);
    // Expressions (defaults, generation, partition bounds) are printed as
    // the event trigger prints them: with only pg_catalog on the path,
    // every other name qualified, so they mean the same in any session.
    let saved: String = client
        .query_one("SELECT current_setting('search_path')", &[])
        .await
        .map_err(failed)?
        .get(0);
    client
        .execute("SELECT set_config('search_path', 'pg_catalog', false)", &[])
        .await
        .map_err(failed)?;
    let row = client.query_opt(sql.as_str(), &[&qualified]).await;
    client
        .execute("SELECT set_config('search_path', $1, false)", &[&saved])
        .await
        .map_err(failed)?;
    let row = row.map_err(failed)?;
    let Some(row) = row else { return Ok(None) };
    let text: String = row.get(0);
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| Error::Protocol(format!("the definition of {qualified} is not what waly expects: {e}")))
}

/// How the archive learns about DDL on this database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CaptureMode {
    /// The event trigger is installed and enabled: DDL is recorded as it
    /// happens.
    EventTrigger,
    /// The event trigger of an earlier waly, which records DDL but not
    /// publication commands, or not the partitions attached and detached
    /// (which move tables in and out of the publication), or not a schema
    /// renamed (which renames its tables), or reads defaults and partition
    /// bounds in the session's date style.
    EarlierEventTrigger,
    /// No trigger: a new shape is learned from the next change's Relation
    /// message and the catalog at that moment.
    RelationMessages,
}

impl CaptureMode {
    /// How `waly status` and the logs name it.
    pub fn as_str(self) -> &'static str {
        match self {
            CaptureMode::EventTrigger => "event trigger",
            CaptureMode::EarlierEventTrigger => {
                "event trigger of an earlier waly (publication commands, partitions attached and detached, or schemas \
                 renamed not recorded, or values read in the session's date style or money locale: run `waly init` again)"
            }
            CaptureMode::RelationMessages => "relation messages (no event trigger)",
        }
    }
}

/// Whether the DDL capture trigger is installed and enabled here, and
/// whether it is this waly's (it records publication commands, and the
/// publication membership a partition attached or detached leaves).
pub async fn capture_mode(client: &tokio_postgres::Client) -> Result<CaptureMode, Error> {
    let row = client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_event_trigger WHERE evtname = $1 AND evtenabled <> 'D'),
                    EXISTS (SELECT 1 FROM pg_proc WHERE proname = 'waly_capture_ddl'
                             AND strpos(prosrc, $2) > 0)",
            &[&TRIGGER, &CAPTURE_VERSION],
        )
        .await
        .map_err(|e| crate::source::tls::sql_failed("looking for the DDL event trigger", e))?;
    Ok(if row.get::<_, bool>(0) && !row.get::<_, bool>(1) {
        CaptureMode::EarlierEventTrigger
    } else if row.get::<_, bool>(0) {
        CaptureMode::EventTrigger
    } else {
        CaptureMode::RelationMessages
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_capture_function_names_the_version_status_checks_for() {
        let body = DDL_SQL
            .split("FUNCTION public.waly_capture_ddl()")
            .nth(1)
            .and_then(|s| s.split("$waly$").nth(1))
            .expect("sql/ddl.sql defines waly_capture_ddl");
        assert!(body.contains(CAPTURE_VERSION), "{body}");
    }

    #[test]
    fn ddl_messages_parse_and_unknown_versions_are_skipped() {
        let m = DdlMessage::parse(
            r#"{"waly_ddl":1,"tag":"ALTER TABLE","command":"alter table t rename a to b","rewritten":false,"oid":5,
                "table":{"oid":5,"schema":"public","name":"t","relkind":"r","replica_identity":"default",
                "columns":[{"attnum":1,"name":"b","type":"integer","type_oid":23,"type_modifier":-1,
                "not_null":true,"primary_key":true,"key":true}]}}"#,
        )
        .expect("parses")
        .expect("version 1");
        let t = m.table.as_ref().expect("a table");
        assert_eq!(m.qualified().as_deref(), Some("public.t"));
        assert_eq!(t.columns[0].attnum, Some(1));
        assert_eq!(t.meta.replica_identity.as_deref(), Some("default"));
        assert!(DdlMessage::parse(r#"{"waly_ddl":2}"#).expect("parses").is_none());
        assert!(DdlMessage::parse("not json").is_err());
    }

    #[test]
    fn the_install_sql_embeds_the_one_definition_query() {
        let sql = install_sql().expect("the install SQL");
        assert!(sql.contains("WHERE c.oid = $1"));
        assert!(sql.contains("WHERE p.pubname = $1"));
        for placeholder in ["@DEFINITION@", "@PUBLISHED@", "@RESTORED@", "@SCHEMA_KEYS@", ":pub"] {
            assert!(!sql.contains(placeholder), "{placeholder}");
        }
    }
}
