//! Stands in for the remote store's client (`client.rs`) in builds without the `remote` feature:
//! the same API, but no [`Remote`] can exist, so asking for one is a clear error.

use super::{Pulled, Pushed};
use crate::store::{ActionRecord, Key, Store};
use anyhow::{Result, bail};
use std::convert::Infallible;

pub struct Remote {
    never: Infallible,
}

impl Remote {
    pub fn open(url: &str) -> Result<Remote> {
        bail!(
            "remote {url:?}: this pipe was built without remote stores; rebuild it with \
             `cargo install --path . --features remote` (or `cargo build --release --features remote`)"
        )
    }
    pub fn init(url: &str) -> Result<String> {
        Remote::open(url).map(|r| match r.never {})
    }
    pub fn lacks(&self, _rec: &ActionRecord) -> Result<Option<String>> {
        match self.never {}
    }
    pub fn url(&self) -> &str {
        match self.never {}
    }
    pub fn action(&self, _key: &Key) -> Result<Option<ActionRecord>> {
        match self.never {}
    }
    pub fn pull(&self, _local: &Store, _key: &Key) -> Result<Pulled> {
        match self.never {}
    }
    pub fn push(&self, _local: &Store, _rec: &ActionRecord) -> Result<Pushed> {
        match self.never {}
    }
    pub fn check(&self) -> Vec<(String, Result<()>)> {
        match self.never {}
    }
}
