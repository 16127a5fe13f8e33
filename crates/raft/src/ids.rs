//! Newtype identifiers and log positions.
//!
//! Each is a thin wrapper around `u64` so that a term can never be passed
//! where an index is expected. Arithmetic is provided only where the protocol
//! needs it.

use std::fmt;

macro_rules! id_type {
    ($(#[$meta:meta])* $name:ident) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(pub u64);

        impl $name {
            /// The raw value.
            #[inline]
            pub const fn get(self) -> u64 {
                self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}", self.0)
            }
        }

        impl From<u64> for $name {
            fn from(v: u64) -> Self {
                $name(v)
            }
        }
    };
}

id_type!(
    /// Identifies a Raft group (a shard). Shard 0 is never used.
    ShardId
);
id_type!(
    /// Identifies one replica within a shard. `ReplicaId::NONE` (0) means "nobody".
    ReplicaId
);
id_type!(
    /// A Raft term (Raft §5.1). Terms only grow.
    Term
);
id_type!(
    /// A position in the Raft log. Index 0 is the empty position before the first entry.
    Index
);

impl ReplicaId {
    /// "No replica": used for "no vote" and "no known leader".
    pub const NONE: ReplicaId = ReplicaId(0);

    /// Whether this is [`ReplicaId::NONE`].
    #[inline]
    pub const fn is_none(self) -> bool {
        self.0 == 0
    }
}

impl Term {
    /// The next term, saturating at `u64::MAX` (never wraps: a wrapped term
    /// would be older than every term and no election could succeed). The
    /// core never gets near it: messages with terms beyond
    /// [`TERM_MAX`](crate::TERM_MAX) are dropped.
    #[inline]
    pub const fn next(self) -> Term {
        Term(self.0.saturating_add(1))
    }
}

impl Index {
    /// The following log position, saturating at `u64::MAX` (the core
    /// never gets near it: messages with indexes beyond
    /// [`INDEX_MAX`](crate::INDEX_MAX) are dropped).
    #[inline]
    pub const fn next(self) -> Index {
        Index(self.0.saturating_add(1))
    }

    /// The preceding log position (saturating at 0).
    #[inline]
    pub const fn prev(self) -> Index {
        Index(self.0.saturating_sub(1))
    }

    /// `self + n`, saturating at `u64::MAX`.
    #[inline]
    pub const fn plus(self, n: u64) -> Index {
        Index(self.0.saturating_add(n))
    }

    /// `self - n`, saturating at 0.
    #[inline]
    pub const fn minus(self, n: u64) -> Index {
        Index(self.0.saturating_sub(n))
    }

    /// Number of positions in `[self, to)`, 0 if `to <= self`.
    #[inline]
    pub const fn distance_to(self, to: Index) -> u64 {
        to.0.saturating_sub(self.0)
    }
}
