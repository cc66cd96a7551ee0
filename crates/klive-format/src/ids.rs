use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Why an identifier was rejected.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IdError {
    #[error("build-id {0:?} is not an even number of hex digits between 8 and 128 long")]
    BuildId(String),
    #[error("patch level {0:?} is not a whole number between 1 and 1000000")]
    Level(String),
}

/// A GNU build-id: identifies one kernel build, unlike the release string that two builds can
/// share. Stored as lowercase hex.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BuildId(String);

impl BuildId {
    /// Builds from raw note bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, IdError> {
        crate::digest::hex(bytes).parse()
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The first 12 hex digits, for humans.
    pub fn short(&self) -> &str {
        &self.0[..self.0.len().min(12)]
    }
}

impl FromStr for BuildId {
    type Err = IdError;

    fn from_str(s: &str) -> Result<Self, IdError> {
        let s = s.trim();
        let ok = (8..=128).contains(&s.len())
            && s.len().is_multiple_of(2)
            && s.bytes().all(|b| b.is_ascii_hexdigit());
        if ok {
            Ok(Self(s.to_ascii_lowercase()))
        } else {
            Err(IdError::BuildId(s.to_owned()))
        }
    }
}

impl fmt::Display for BuildId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for BuildId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BuildId({})", self.0)
    }
}

impl Serialize for BuildId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for BuildId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A cumulative patch level: level N contains every fix of the levels below it.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Serialize, Deserialize)]
#[serde(try_from = "u32", into = "u32")]
pub struct PatchLevel(u32);

impl PatchLevel {
    pub const MAX: u32 = 1_000_000;

    pub fn new(level: u32) -> Result<Self, IdError> {
        if (1..=Self::MAX).contains(&level) {
            Ok(Self(level))
        } else {
            Err(IdError::Level(level.to_string()))
        }
    }

    pub fn get(self) -> u32 {
        self.0
    }
}

impl TryFrom<u32> for PatchLevel {
    type Error = IdError;
    fn try_from(v: u32) -> Result<Self, IdError> {
        Self::new(v)
    }
}

impl From<PatchLevel> for u32 {
    fn from(l: PatchLevel) -> u32 {
        l.0
    }
}

impl FromStr for PatchLevel {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        s.trim()
            .parse::<u32>()
            .ok()
            .and_then(|n| Self::new(n).ok())
            .ok_or_else(|| IdError::Level(s.to_owned()))
    }
}

impl fmt::Display for PatchLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_id_is_normalised_and_validated() {
        let id: BuildId = "ABCDEF0123456789".parse().unwrap();
        assert_eq!(id.as_str(), "abcdef0123456789");
        assert_eq!(id.short(), "abcdef012345");
        assert!("xyz".parse::<BuildId>().is_err());
        assert!("abc".parse::<BuildId>().is_err(), "odd length");
        assert!("".parse::<BuildId>().is_err());
        assert_eq!(
            BuildId::from_bytes(&[0xde, 0xad, 0xbe, 0xef])
                .unwrap()
                .as_str(),
            "deadbeef"
        );
    }

    #[test]
    fn build_id_rejected_when_deserialised_from_bad_json() {
        assert!(serde_json::from_str::<BuildId>("\"zz\"").is_err());
    }

    #[test]
    fn patch_level_bounds() {
        assert!(PatchLevel::new(0).is_err());
        assert_eq!("7".parse::<PatchLevel>().unwrap().get(), 7);
        assert!("-1".parse::<PatchLevel>().is_err());
        assert!(serde_json::from_str::<PatchLevel>("0").is_err());
        assert_eq!(
            serde_json::to_string(&PatchLevel::new(3).unwrap()).unwrap(),
            "3"
        );
    }
}
