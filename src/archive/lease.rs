//! Who may write segments. PostgreSQL elects the writer (only one process
//! can stream a slot); the archive has to keep a deposed writer's late
//! uploads out of history. Each session that wins the slot writes a
//! write-once lease object with the next fencing token, naming the first
//! segment it will write; its segments carry the token in their header and
//! name. A segment belongs to history only if its token is the one of the
//! lease in force at its position: uploads from a writer that lost the slot
//! (stalled, partitioned, or killed mid-upload) land under an older token
//! and are ignored by every reader, and reported by `waly verify`.

use super::layout;
use super::Store;
use crate::Error;

/// One lease: `token` owns segments from (`generation`, `first`) on, until
/// a later lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The fencing token: 1, 2, 3, ...
    pub token: u64,
    /// The generation of its first segment.
    pub generation: String,
    /// The number of its first segment.
    pub first: u64,
}

/// Every lease, by token.
pub async fn list(store: &Store) -> Result<Vec<Lease>, Error> {
    let mut out: Vec<Lease> = store
        .list(layout::LEASES_DIR)
        .await?
        .into_iter()
        .filter_map(|(k, _)| layout::parse_lease_key(&k))
        .map(|(token, generation, first)| Lease {
            token,
            generation,
            first,
        })
        .collect();
    out.sort_by_key(|l| l.token);
    Ok(out)
}

/// The token in force for segment `number` of `generation`: that of the
/// newest lease starting at or before it (0 before any lease, as in
/// archives written before leases existed).
pub fn in_force(leases: &[Lease], generation: &str, number: u64) -> u64 {
    leases
        .iter()
        .filter(|l| (l.generation.as_str(), l.first) <= (generation, number))
        .map(|l| l.token)
        .max()
        .unwrap_or(0)
}

/// Who this process is, for people reading leases and errors.
pub fn holder() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown-host".into());
    format!("{host}:{}", std::process::id())
}

/// Takes the next lease, for segments from (`generation`, `first`) on. Call
/// it only while holding the slot. Losing a race for a token (another
/// process wrote it first) is an error worth retrying: that process holds
/// the slot now, or held it a moment ago.
pub async fn acquire(store: &Store, generation: &str, first: u64) -> Result<Lease, Error> {
    let token = list(store).await?.last().map_or(1, |l| l.token + 1);
    let key = layout::lease_key(token, generation, first);
    let body = serde_json::json!({
        "token": token,
        "generation": generation,
        "first_segment": first,
        "holder": holder(),
        "acquired_at": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
    });
    match store.put_once(&key, super::state::to_json(&body)).await {
        Ok(()) => {}
        Err(Error::Conflict { .. }) => {
            return Err(Error::Contended(format!(
                "fencing token {token} was taken by another writer at the same moment"
            )))
        }
        Err(e) => return Err(e),
    }
    // A token taken under another name (another first segment) by a racing
    // writer: the listing shows two leases with one token.
    let rivals = list(store).await?.into_iter().filter(|l| l.token == token).count();
    if rivals > 1 {
        return Err(Error::Contended(format!(
            "fencing token {token} was taken by another writer at the same moment"
        )));
    }
    Ok(Lease {
        token,
        generation: generation.to_string(),
        first,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(token: u64, generation: &str, first: u64) -> Lease {
        Lease {
            token,
            generation: generation.into(),
            first,
        }
    }

    #[test]
    fn the_newest_lease_at_or_before_a_segment_is_in_force() {
        let leases = [
            lease(1, "00000001", 0),
            lease(2, "00000001", 5),
            lease(3, "00000002", 0),
        ];
        assert_eq!(in_force(&leases, "00000001", 0), 1);
        assert_eq!(in_force(&leases, "00000001", 4), 1);
        assert_eq!(in_force(&leases, "00000001", 5), 2);
        assert_eq!(in_force(&leases, "00000001", 900), 2);
        assert_eq!(in_force(&leases, "00000002", 0), 3);
        assert_eq!(in_force(&[], "00000001", 3), 0);
        let key = layout::lease_key(2, "00000001", 5);
        assert_eq!(layout::parse_lease_key(&key), Some((2, "00000001".into(), 5)));
    }
}
