//! Room state keys: versioned values with compare-and-set, each write emitting
//! `state_changed`.

use std::collections::HashMap;

use meridian_protocol::{RoomEventFrame, RoomId, StateEntry, UserId};
use serde_json::value::RawValue;

use super::RedisStore;
use crate::scripts::{k, RoomKeys};
use crate::{StoreError, StoreResult};

pub(super) async fn state_set(
    store: &RedisStore,
    room: &RoomId,
    key: &str,
    value: &RawValue,
    if_version: Option<u64>,
    by: &UserId,
) -> StoreResult<u64> {
    let keys = RoomKeys::new(room);
    let head = RoomEventFrame::state_changed(room, key, Some(value), by);
    let mut inv = store.room_script(&store.scripts.state_set, &keys);
    inv.arg(key)
        .arg(value.get())
        .arg(if_version.map_or(-1, |v| v as i64))
        .arg(head.head())
        .arg(by.as_str());
    let (status, version): (i64, u64) = inv.invoke_async(&mut store.conn()).await?;
    if status < 0 {
        return Err(StoreError::VersionConflict { current: version });
    }
    Ok(version)
}

pub(super) async fn state_get(
    store: &RedisStore,
    room: &RoomId,
    key: Option<&str>,
) -> StoreResult<Vec<StateEntry>> {
    let keys = RoomKeys::new(room);
    let mut c = store.conn();
    let pairs: Vec<(String, Option<String>, Option<u64>)> = match key {
        Some(key) => {
            let (value, version): (Option<String>, Option<u64>) = redis::pipe()
                .atomic()
                .hget(&keys.keys[k::ST], key)
                .hget(&keys.keys[k::SV], key)
                .query_async(&mut c)
                .await?;
            vec![(key.to_owned(), value, version)]
        }
        None => {
            let (values, versions): (HashMap<String, String>, HashMap<String, u64>) = redis::pipe()
                .atomic()
                .hgetall(&keys.keys[k::ST])
                .hgetall(&keys.keys[k::SV])
                .query_async(&mut c)
                .await?;
            let mut all: Vec<_> = values
                .into_iter()
                .map(|(k, v)| {
                    let version = versions.get(&k).copied();
                    (k, Some(v), version)
                })
                .collect();
            all.sort_by(|a, b| a.0.cmp(&b.0));
            all
        }
    };
    let mut out = Vec::new();
    for (key, value, version) in pairs {
        if let (Some(value), Some(version)) = (value, version) {
            let value = RawValue::from_string(value)
                .map_err(|e| StoreError::Corrupt(format!("state key {key}: {e}")))?;
            out.push(StateEntry {
                key,
                value,
                version,
            });
        }
    }
    Ok(out)
}

pub(super) async fn state_delete(
    store: &RedisStore,
    room: &RoomId,
    key: &str,
    if_version: Option<u64>,
    by: &UserId,
) -> StoreResult<bool> {
    let keys = RoomKeys::new(room);
    let head = RoomEventFrame::state_changed(room, key, None, by);
    let mut inv = store.room_script(&store.scripts.state_delete, &keys);
    inv.arg(key)
        .arg(if_version.map_or(-1, |v| v as i64))
        .arg(head.head())
        .arg(by.as_str());
    let (status, version): (i64, u64) = inv.invoke_async(&mut store.conn()).await?;
    if status < 0 {
        return Err(StoreError::VersionConflict { current: version });
    }
    Ok(status == 1)
}
