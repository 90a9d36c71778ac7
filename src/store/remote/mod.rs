//! The remote store: the local store's layout (`objects/<2>/<rest>`,
//! `actions/<key>.json`) in S3-compatible object storage (`s3://bucket/prefix`) or a shared folder
//! (`file:///path`), through the `object_store` crate. Only exact keys are looked up, never listed.
//!
//! - A pull downloads a record's outputs into the local store, each re-hashed on the way in; a
//!   missing or corrupt object makes the record a miss (with a warning), never a stored object.
//! - A push uploads outputs first and the record last, the record with a create-if-absent put, so
//!   a reader never sees a record whose objects are missing, and the first of two writers wins.
//! - Network and credential errors are errors, never misses; so is a URL that `pipe remote init`
//!   did not make a remote (a missing bucket, prefix or folder).
//! - What a remote holds is untrusted: a record is used only if it is a true record of the key
//!   looked up (`ActionRecord::problem`: its material hashes to the key, it names exactly the
//!   outputs that stage declares, each a plain file name), every read is bounded by what the
//!   record or the object's size promises, and a shared folder's files are read only if they are
//!   regular files. A push repairs what it finds damaged: objects by hash, records that are
//!   unreadable or name missing objects.
//!
//! `object_store` is async; one current-thread tokio runtime per `Remote` drives it, and each
//! call blocks until done (up to 8 transfers at once).
//!
//! `client.rs` is the real one (feature `remote`); without the feature `off.rs` stands in, like
//! `gpt/cuda_off.rs`: the same API, but opening a remote is an error that says how to build it.

use super::ActionRecord;

#[cfg(feature = "remote")]
mod client;
#[cfg(feature = "remote")]
pub use client::Remote;
#[cfg(not(feature = "remote"))]
mod off;
#[cfg(not(feature = "remote"))]
pub use off::Remote;

/// What a pull found. (A build without the remote store never pulls: only `remote` builds one.)
#[cfg_attr(not(feature = "remote"), allow(dead_code))]
pub enum Pulled {
    /// The record, with every output now in the local store.
    Complete(ActionRecord),
    /// No record under that key.
    Absent,
    /// A record whose outputs could not all be fetched: a miss, and why.
    Incomplete(String),
}

/// What a push did.
pub struct Pushed {
    pub objects: usize,
    pub bytes: u64,
    /// The remote already had a sound record for this key (another writer got there first).
    pub record_existed: bool,
    /// The remote's record for this key was damaged (why) and this push replaced it.
    pub record_repaired: Option<String>,
}
