//! Schema versions in an encrypted archive: the shape stays readable (a
//! writer resumes a generation from it without an identity), the DDL
//! statement text - which may carry any literal the client sent, DML
//! included - is sealed.

use crate::archive::Store;
use crate::schema::SchemaRecord;
use crate::Error;

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if text.len() % 2 != 0 {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| text.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok()))
        .collect()
}

/// Whether a schema object's bytes hold no plaintext statement text.
pub fn holds_no_statement(bytes: &[u8]) -> bool {
    serde_json::from_slice::<serde_json::Value>(bytes).is_ok_and(|v| {
        v.pointer("/ddl/command")
            .and_then(|c| c.as_str())
            .is_none_or(str::is_empty)
    })
}

impl Store {
    /// Schema version `rec` as this writer stores it: in an encrypted
    /// archive its DDL statement text sealed under the writer's data key.
    pub fn schema_to_store(&self, rec: &SchemaRecord) -> Result<SchemaRecord, Error> {
        let mut out = rec.clone();
        let Some(sealer) = self.sealer()? else {
            return Ok(out);
        };
        if let Some(ddl) = out.ddl.as_mut().filter(|d| !d.command.is_empty()) {
            ddl.sealed = Some(hex(&sealer.seal(ddl.command.as_bytes())?));
            ddl.command.clear();
        }
        Ok(out)
    }

    /// Puts back the DDL statement text of a schema version read from the
    /// archive, when it is sealed and this reader has a key (a writer has
    /// none: it never needs the text of versions it did not write).
    pub async fn open_schema(&self, rec: &mut SchemaRecord) -> Result<(), Error> {
        let Some(ddl) = rec.ddl.as_mut() else {
            return Ok(());
        };
        let Some(sealed) = ddl.sealed.as_deref() else {
            return Ok(());
        };
        let what = format!("schema version {} of {}", rec.version, rec.table);
        if !self.crypt().has_source() {
            if !self.is_encrypted().await? {
                return Err(super::sealed_in_plain(&what));
            }
            return Ok(());
        }
        let bytes = unhex(sealed).ok_or_else(|| Error::Corrupt {
            key: what.clone(),
            why: "its sealed DDL text is not hex".into(),
        })?;
        let plain = self.open_frames(&what, bytes.into()).await?;
        ddl.command = String::from_utf8_lossy(&plain).into_owned();
        ddl.sealed = None;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trips_and_a_statement_is_seen() {
        assert_eq!(unhex(&hex(&[0, 1, 0xab, 0xff])), Some(vec![0, 1, 0xab, 0xff]));
        assert_eq!(unhex("abc"), None);
        assert_eq!(unhex("zz"), None);
        assert!(holds_no_statement(
            br#"{"table":"t","ddl":{"tag":"ALTER TABLE","command":""}}"#
        ));
        assert!(holds_no_statement(br#"{"table":"t"}"#));
        assert!(!holds_no_statement(
            br#"{"table":"t","ddl":{"tag":"ALTER TABLE","command":"ALTER ..."}}"#
        ));
        assert!(!holds_no_statement(b"not json"));
    }
}
