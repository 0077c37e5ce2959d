//! `Lsn`: a position in the PostgreSQL write-ahead log, as a type of its own.
//!
//! Bare `u64` positions never cross a module boundary; everything that means
//! "a WAL position" is an `Lsn`, printed the way PostgreSQL prints it
//! (`16/B374D848`) and parsed from that same form.

use std::fmt;
use std::str::FromStr;

/// A WAL position (log sequence number).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Lsn(pub u64);

impl Lsn {
    /// `0/0`, which PostgreSQL uses for "no position".
    pub const ZERO: Lsn = Lsn(0);

    /// The raw 64-bit value, for the wire protocol.
    pub fn as_u64(self) -> u64 {
        self.0
    }

    /// Whether this is `0/0`.
    pub fn is_zero(self) -> bool {
        self.0 == 0
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

impl fmt::Debug for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Lsn({self})")
    }
}

/// Why a string is not an LSN.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid LSN {input:?}: expected two hexadecimal numbers separated by '/', like 16/B374D848")]
pub struct ParseLsnError {
    input: String,
}

impl FromStr for Lsn {
    type Err = ParseLsnError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParseLsnError { input: s.to_string() };
        let (hi, lo) = s.split_once('/').ok_or_else(err)?;
        let valid = |part: &str| !part.is_empty() && part.len() <= 8;
        if !valid(hi) || !valid(lo) {
            return Err(err());
        }
        let hi = u32::from_str_radix(hi, 16).map_err(|_| err())?;
        let lo = u32::from_str_radix(lo, 16).map_err(|_| err())?;
        Ok(Lsn((u64::from(hi) << 32) | u64::from(lo)))
    }
}

impl serde::Serialize for Lsn {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Lsn {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn displays_like_postgres() {
        assert_eq!(Lsn(0x16_B374_D848).to_string(), "16/B374D848");
        assert_eq!(Lsn::ZERO.to_string(), "0/0");
        assert_eq!(Lsn(0xFFFF_FFFF_0000_0001).to_string(), "FFFFFFFF/1");
    }

    #[test]
    fn parses_what_it_displays() {
        for v in [0, 1, 0x16_B374_D848, u64::MAX, 0xFFFF_FFFF] {
            let lsn = Lsn(v);
            assert_eq!(lsn.to_string().parse::<Lsn>(), Ok(lsn));
        }
        assert_eq!("0/16b6c50".parse::<Lsn>(), Ok(Lsn(0x16B6C50)));
    }

    #[test]
    fn rejects_malformed_text() {
        for bad in ["", "/", "1/", "/1", "12", "g/1", "1/2/3", "123456789/0", " 1/2"] {
            assert!(bad.parse::<Lsn>().is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn orders_numerically() {
        let a: Lsn = "0/FFFFFFFF".parse().unwrap_or_default();
        let b: Lsn = "1/0".parse().unwrap_or_default();
        assert!(a < b);
    }
}
