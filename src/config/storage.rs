//! `[storage]`: the data directory, sled's cache, and the size of a long operation's slice.

use std::path::PathBuf;

use serde::Deserialize;

use super::loader::{ConfigError, Loader};

#[derive(Debug, Clone)]
pub struct StorageConfig {
    pub path: PathBuf,
    pub cache_capacity_mb: u64,
    /// The most records one writer job reads or writes for a long operation (export,
    /// listing, janitor, online import or generation): see `service::sliced`.
    pub job_slice_records: usize,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawStorage {
    path: Option<String>,
    cache_capacity_mb: Option<u64>,
    job_slice_records: Option<usize>,
}

pub(super) fn storage(cx: &Loader<'_>, s: &RawStorage) -> Result<StorageConfig, ConfigError> {
    let storage = StorageConfig {
        path: PathBuf::from(s.path.clone().unwrap_or_else(|| "./data".into())),
        cache_capacity_mb: s.cache_capacity_mb.unwrap_or(64),
        job_slice_records: s.job_slice_records.unwrap_or(crate::service::sliced::SLICE),
    };
    if !(1..=1_000_000).contains(&storage.job_slice_records) {
        return Err(cx.err("storage.job_slice_records", "must be 1..=1000000"));
    }
    if storage.cache_capacity_mb == 0 {
        return Err(cx.err("storage.cache_capacity_mb", "must be at least 1"));
    }
    Ok(storage)
}
