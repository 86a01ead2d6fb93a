//! Room state keys: versioned values with compare-and-set, each write emitting
//! `state_changed`.

use meridian_protocol::{RoomEventFrame, RoomId, StateEntry, UserId};
use serde_json::value::RawValue;

use super::MemoryStore;
use crate::{StoreError, StoreResult};

pub(super) async fn state_set(
    store: &MemoryStore,
    room: &RoomId,
    key: &str,
    value: &RawValue,
    if_version: Option<u64>,
    by: &UserId,
) -> StoreResult<u64> {
    let mut s = store.lock();
    let r = s.rooms.entry(room.clone()).or_default();
    let current = r.state.get(key).map_or(0, |(v, _)| *v);
    if if_version.is_some_and(|want| want != current) {
        return Err(StoreError::VersionConflict { current });
    }
    let version = current + 1;
    r.state
        .insert(key.to_owned(), (version, value.get().to_owned()));
    let head = RoomEventFrame::state_changed(room, key, Some(value), by).with_version(version);
    s.append(room, head.head(), &store.limits);
    Ok(version)
}

pub(super) async fn state_get(
    store: &MemoryStore,
    room: &RoomId,
    key: Option<&str>,
) -> StoreResult<Vec<StateEntry>> {
    let s = store.lock();
    let Some(r) = s.rooms.get(room) else {
        return Ok(Vec::new());
    };
    let entry = |k: &String, (version, value): &(u64, String)| {
        RawValue::from_string(value.clone())
            .map(|value| StateEntry {
                key: k.clone(),
                value,
                version: *version,
            })
            .map_err(|e| StoreError::Corrupt(e.to_string()))
    };
    match key {
        Some(k) => r
            .state
            .get_key_value(k)
            .map(|(k, v)| entry(k, v))
            .into_iter()
            .collect(),
        None => r.state.iter().map(|(k, v)| entry(k, v)).collect(),
    }
}

pub(super) async fn state_delete(
    store: &MemoryStore,
    room: &RoomId,
    key: &str,
    if_version: Option<u64>,
    by: &UserId,
) -> StoreResult<bool> {
    let mut s = store.lock();
    let r = s.rooms.entry(room.clone()).or_default();
    let current = r.state.get(key).map_or(0, |(v, _)| *v);
    if if_version.is_some_and(|want| want != current) {
        return Err(StoreError::VersionConflict { current });
    }
    if current == 0 {
        return Ok(false);
    }
    r.state.remove(key);
    let head = RoomEventFrame::state_changed(room, key, None, by).with_version(current + 1);
    s.append(room, head.head(), &store.limits);
    Ok(true)
}
