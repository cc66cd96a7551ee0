//! The check-in path: check-ins written in group-committed transactions, and the cached
//! release choices they are answered from.

pub(crate) mod group_commit;
pub(crate) mod release_cache;
