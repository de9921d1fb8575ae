//! Ids are types, not strings: a `WorkspaceId` is checked once, where it enters, and
//! carried as such from the wire through the domain into SQL.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("workspace id must be 1 to 63 lowercase letters, digits or '-', starting with a letter")]
    Workspace,
    #[error("event id must be a UUID")]
    Event,
    #[error("profile id must be a UUID")]
    Profile,
}

/// A workspace (one brand of the portfolio): a slug such as `acme-shoes`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "sqlx", derive(sqlx::Type), sqlx(transparent))]
#[serde(try_from = "String", into = "String")]
pub struct WorkspaceId(String);

impl WorkspaceId {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for WorkspaceId {
    type Err = IdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let valid = (1..=63).contains(&s.len())
            && s.starts_with(|c: char| c.is_ascii_lowercase())
            && s.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        if valid {
            Ok(Self(s.to_owned()))
        } else {
            Err(IdError::Workspace)
        }
    }
}

impl TryFrom<String> for WorkspaceId {
    type Error = IdError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<WorkspaceId> for String {
    fn from(id: WorkspaceId) -> Self {
        id.0
    }
}

impl fmt::Display for WorkspaceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Defines an id that is a UUIDv7 (so ids sort by creation): one definition for every
/// such id, so that they cannot drift apart.
macro_rules! uuid_id {
    ($(#[$doc:meta])* $name:ident, $error:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[cfg_attr(feature = "sqlx", derive(sqlx::Type), sqlx(transparent))]
        pub struct $name(uuid::Uuid);

        impl $name {
            pub fn new() -> Self {
                Self(uuid::Uuid::now_v7())
            }

            pub fn as_uuid(&self) -> uuid::Uuid {
                self.0
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl From<uuid::Uuid> for $name {
            fn from(id: uuid::Uuid) -> Self {
                Self(id)
            }
        }

        impl FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                uuid::Uuid::parse_str(s).map(Self).map_err(|_| $error)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }
    };
}

uuid_id!(
    /// The id the event log gives an accepted event.
    EventId,
    IdError::Event
);

uuid_id!(
    /// A profile: one person as identity knows them.
    ProfileId,
    IdError::Profile
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workspace_ids_are_slugs() {
        assert!("acme-shoes".parse::<WorkspaceId>().is_ok());
        assert!("a1".parse::<WorkspaceId>().is_ok());
        for bad in ["", "Acme", "1acme", "acme_shoes", "acme shoes", &"a".repeat(64)] {
            assert_eq!(bad.parse::<WorkspaceId>(), Err(IdError::Workspace), "{bad:?}");
        }
    }

    #[test]
    fn event_ids_sort_by_creation() {
        let first = EventId::new();
        let second = EventId::new();
        assert!(first < second);
        assert_eq!(first.to_string().parse::<EventId>(), Ok(first));
        assert_eq!("nope".parse::<EventId>(), Err(IdError::Event));
        assert_eq!("nope".parse::<ProfileId>(), Err(IdError::Profile));
    }
}
