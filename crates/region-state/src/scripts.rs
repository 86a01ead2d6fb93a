//! The Lua scripts and key layout of a room, shared by the node's store ([`crate::RedisStore`])
//! and the relay's replica writer ([`crate::replica::ReplicaStore`]), so that both sequence
//! room events through the same `append`.
//!
//! Every room script gets the twelve room keys as `KEYS[1..12]` and the common `ARGV[1..5]`:
//! the room channel, `history.len`, the history TTL (ms), a fresh epoch for a room that has
//! none, and this region's name. Script-specific arguments start at `ARGV[6]`.
//!
//! Over 700 lines on purpose: it is mostly the Lua of every room script, kept in one file
//! because they all share one key layout and one `append` (and the tests at the end pin the
//! room-event JSON that Lua builds to `meridian_protocol::RoomEventFrame`).

use bytes::Bytes;
use meridian_protocol::RoomId;
use redis::streams::StreamRangeReply;
use redis::Script;

use crate::{StoreError, StoreResult};

/// Keys of one room; all share the `{room}` hash tag.
pub(crate) struct RoomKeys {
    pub keys: [String; 12],
    pub channel: String,
}

/// Index of each key in [`RoomKeys::keys`] (Lua's `KEYS[i + 1]`).
pub(crate) mod k {
    pub const META: usize = 0;
    pub const HIST: usize = 1;
    pub const MEM: usize = 4;
    pub const REG: usize = 5;
    pub const SV: usize = 6;
    pub const ST: usize = 7;
    pub const IDEM: usize = 8;
    pub const RW: usize = 11;
}

impl RoomKeys {
    pub fn new(room: &RoomId) -> Self {
        let k = |s: &str| format!("mr:{{{room}}}:{s}");
        Self {
            keys: [
                k("meta"),  // 1 hash: epoch, seq, hw/hl (the room's hybrid logical clock)
                k("hist"),  // 2 stream: id <seq>-0, fields e = frame, h = HLC, o = origin
                k("conns"), // 3 set of node|conn|user (local connections)
                k("cc"),    // 4 hash user -> local connections in the room
                k("mem"),   // 5 zset of member users (every region), score 0
                k("reg"),   // 6 hash user -> the member's home region
                k("sv"),    // 7 hash state key -> version (per region)
                k("st"),    // 8 hash state key -> value (JSON)
                k("idem:"), // 9 idempotency key prefix (per call)
                k("mh"),    // 10 hash user -> "<hlc>|<region>" of the membership's last change
                k("sh"),    // 11 hash state key -> "<hlc>|<region>|<by>" (kept after deletes)
                k("rw"),    // 12 hash origin region -> "<epoch> <seq>" applied from it
            ],
            channel: k("ev"),
        }
    }
}

/// `mr:{room}:want`: hash origin region -> `"<epoch>|<seq>"`, the oldest position of that
/// region's own events that a client resuming here has seen (its version vector), kept for
/// [`WANT_REPLAY_TTL_MS`]. A relay that starts following the room reads it, so the origin
/// replays from there (a client re-homed into a region with no members in the room yet gets
/// what it missed) instead of from the first local join.
pub(crate) fn want_key(room: &RoomId) -> String {
    format!("mr:{{{room}}}:want")
}

/// How long a resumer's wanted positions are kept: long enough for the relay to announce the
/// new interest and the origin to answer, even across a link that reconnects.
pub(crate) const WANT_REPLAY_TTL_MS: u64 = 120_000;

/// KEYS[1] want key; ARGV: ttl ms, then (region, epoch, seq) triples. Keeps, per region, the
/// smaller seq of the same epoch (another epoch replaces it: the newer resumer wins).
pub(crate) const WANT_REPLAY_LUA: &str = r#"
for i = 2, #ARGV, 3 do
  local region, epoch, seq = ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2])
  local cur = redis.call('HGET', KEYS[1], region)
  local keep = false
  if cur then
    local e, s = string.match(cur, '^(.*)|(%d+)$')
    keep = (e == epoch) and (tonumber(s) <= seq)
  end
  if not keep then redis.call('HSET', KEYS[1], region, epoch .. '|' .. seq) end
end
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return 1
"#;

/// Channel on which room scripts announce that a room gained (`"1 <room channel>"`) or lost
/// (`"0 <room channel>"`) its last local member: what the relay announces to other regions.
pub const INTEREST_CHANNEL: &str = "meridian:interest";
/// Channel on which presence scripts announce a user's first (`"1 <user>"`) and last
/// (`"0 <user>"`) connection in this region.
pub const PRESENCE_CHANNEL: &str = "meridian:presence";
/// Node-id prefix of the pseudo-nodes a relay writes for users connected in another region
/// (`rl-<region>`). Real node ids have no `-`, so they never collide.
pub const RELAY_NODE_PREFIX: &str = "rl-";

/// The Lua shared by every room script.
///
/// `hlc_tick(rw, rl)` advances the room's hybrid logical clock past the wall clock, its last
/// stamp and an observed remote stamp, and returns the stamp as `"%013d.%05d"` (fixed width,
/// so stamps compare as strings). `append(head, origin, stamp)` is the one way a room event is
/// sequenced; `origin` (`"<region> <epoch> <seq>"`) marks an event replicated from another
/// region so that the relay never sends it back.
pub(crate) const APPEND_LUA: &str = r#"
local function ensure_epoch()
  local epoch = redis.call('HGET', KEYS[1], 'epoch')
  if not epoch then
    epoch = ARGV[4]
    redis.call('DEL', KEYS[2])
    redis.call('HSET', KEYS[1], 'epoch', epoch, 'seq', 0)
    redis.call('PEXPIRE', KEYS[1], ARGV[3])
  end
  return epoch
end
local function current_seq()
  return tonumber(redis.call('HGET', KEYS[1], 'seq') or '0')
end
local function hlc_tick(rwall, rlog)
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  local hw = tonumber(redis.call('HGET', KEYS[1], 'hw') or '0')
  local hl = tonumber(redis.call('HGET', KEYS[1], 'hl') or '0')
  rwall = rwall or 0
  rlog = rlog or 0
  local w = math.max(now, hw, rwall)
  local l = 0
  if w == hw and w == rwall then l = math.max(hl, rlog) + 1
  elseif w == hw then l = hl + 1
  elseif w == rwall then l = rlog + 1 end
  if l > 99999 then w = w + 1; l = 0 end
  redis.call('HSET', KEYS[1], 'hw', string.format('%d', w), 'hl', l)
  -- A clock written before the room's first event must not outlive the room.
  if redis.call('PTTL', KEYS[1]) == -1 then redis.call('PEXPIRE', KEYS[1], ARGV[3]) end
  return string.format('%013d.%05d', w, l)
end
-- Byte-wise "a is newer than b" for "<hlc>|<region>[|...]" strings (b may be false).
local function newer(a, b)
  if not b then return true end
  local n = math.min(#a, #b)
  for i = 1, n do
    local x, y = string.byte(a, i), string.byte(b, i)
    if x ~= y then return x > y end
  end
  return #a > #b
end
-- The prefix of the room's idempotency keys, `mr:{room}:idem:` (ARGV[1] is `mr:{room}:ev`).
local function idem_prefix()
  return string.sub(ARGV[1], 1, #ARGV[1] - 2) .. 'idem:'
end
-- The room-event JSON built here is pinned byte for byte to the Rust type's encoding
-- (`meridian_protocol::RoomEventFrame`) by the tests at the end of `scripts.rs`.
-- `RoomEventFrame::close`: a head closed with its sequence number and epoch.
local function close_frame(head, s, epoch)
  return head .. ',"seq":' .. s .. ',"epoch":"' .. epoch .. '"}'
end
-- `RoomEventFrame::with_version`: a state_changed head with the key's new version.
local function with_version(head, v)
  return head .. ',"version":' .. string.format('%d', v)
end
-- An `OriginPosition` as JSON (region names and epochs need no escaping).
local function origin_json(region, epoch, seq)
  return '{"region":"' .. region .. '","epoch":"' .. epoch .. '","seq":' .. seq .. '}'
end
local function append(head, origin, stamp, idem)
  local epoch = ensure_epoch()
  stamp = stamp or hlc_tick()
  local seq = redis.call('HINCRBY', KEYS[1], 'seq', 1)
  local s = string.format('%d', seq)
  local frame = close_frame(head, s, epoch)
  if origin then
    redis.call('XADD', KEYS[2], 'MAXLEN', ARGV[2], s .. '-0', 'e', frame, 'h', stamp, 'o', origin)
  elseif idem then
    redis.call('XADD', KEYS[2], 'MAXLEN', ARGV[2], s .. '-0', 'e', frame, 'h', stamp, 'k', idem)
  else
    redis.call('XADD', KEYS[2], 'MAXLEN', ARGV[2], s .. '-0', 'e', frame, 'h', stamp)
  end
  -- A publish's idempotency key rides after a NUL (never in JSON text): the relay sends it
  -- on with the message, nodes cut it off.
  if idem then
    redis.call('PUBLISH', ARGV[1], s .. ' ' .. epoch .. ' ' .. frame .. '\0' .. idem)
  else
    redis.call('PUBLISH', ARGV[1], s .. ' ' .. epoch .. ' ' .. frame)
  end
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
  redis.call('PEXPIRE', KEYS[2], ARGV[3])
  -- Room state lives as long as the room's history: any activity keeps both.
  redis.call('PEXPIRE', KEYS[7], ARGV[3])
  redis.call('PEXPIRE', KEYS[8], ARGV[3])
  redis.call('PEXPIRE', KEYS[11], ARGV[3])
  return {epoch, seq, stamp}
end
-- Member events built here carry only ids ([A-Za-z0-9-_.:@/=+]) and region names, which
-- need no JSON escaping; the bytes are `RoomEventFrame::joined`/`left` (+ `with_origin`).
local function member_head(kind, room, user, region, reason, origin)
  local h = '{"type":"' .. kind .. '","room":"' .. room .. '","user":"' .. user ..
    '","region":"' .. region .. '"'
  if reason then h = h .. ',"reason":"' .. reason .. '"' end
  if origin then h = h .. ',"origin":' .. origin end
  return h
end
local function local_members_gone()
  return redis.call('HLEN', KEYS[4]) == 0
end
"#;

/// Webhook outbox (`meridian-webhooks`; `docs/webhooks.md`): `wh_emit(kind, room, user,
/// reason, region)` appends one event to the partition stream of its room (or, without a
/// room, its user) while `mw:wh:on` (the partition count, kept alive by nodes delivering
/// webhooks) exists; without it, nothing is written. The partition hash (djb2 mod 2^32) is
/// `meridian_webhooks::outbox::partition_of`. Events are written only by the scripts of the
/// change's origin, never by `APPLY_LUA`, so each is produced once per mesh.
/// Undeclared keys: fine for the single-primary deployments Meridian supports (no Cluster).
pub const WEBHOOK_LUA: &str = r#"
local function wh_emit(kind, room, user, reason, region)
  local k = tonumber(redis.call('GET', 'mw:wh:on') or '0')
  if not k or k <= 0 then return end
  local pkey
  if room then pkey = 'r:' .. room else pkey = 'u:' .. user end
  local h = 5381
  for i = 1, #pkey do h = (h * 33 + string.byte(pkey, i)) % 4294967296 end
  local t = redis.call('TIME')
  local at = string.format('%d', tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000))
  local f = {'t', kind, 'g', region, 'at', at}
  if room then table.insert(f, 'r'); table.insert(f, room) end
  if user then table.insert(f, 'u'); table.insert(f, user) end
  if reason then table.insert(f, 'why'); table.insert(f, reason) end
  redis.call('XADD', 'mw:wh:p' .. string.format('%d', h % k), 'MAXLEN', '~',
    redis.call('GET', 'mw:wh:max') or '1000000', '*', unpack(f))
end
-- The room id of a room script (ARGV[1] is `mr:{room}:ev`).
local function wh_room()
  return string.sub(ARGV[1], 5, #ARGV[1] - 4)
end
"#;

/// ARGV[6] token, [7] user, [8] max members, [9] joined head. Returns `{status, epoch, seq,
/// watermarks}`: the per-origin watermarks (`mr:{room}:rw`) read atomically with the join's
/// position, the seed of the joiner's version vector.
///
/// A user's first local connection makes this region the member's home, also when the user
/// was a member through another region (a re-homed user: `joined` with the new region, never
/// a `left`).
const JOIN_LUA: &str = r#"
if redis.call('SADD', KEYS[3], ARGV[6]) == 0 then
  return {0, ensure_epoch(), current_seq(), redis.call('HGETALL', KEYS[12])}
end
if redis.call('HINCRBY', KEYS[4], ARGV[7], 1) == 1 then
  local member = redis.call('ZSCORE', KEYS[5], ARGV[7])
  local max = tonumber(ARGV[8])
  if not member and max > 0 and redis.call('ZCARD', KEYS[5]) >= max then
    redis.call('SREM', KEYS[3], ARGV[6])
    redis.call('HDEL', KEYS[4], ARGV[7])
    return {-1, '', 0, {}}
  end
  if redis.call('HLEN', KEYS[4]) == 1 then
    redis.call('PUBLISH', 'meridian:interest', '1 ' .. ARGV[1])
  end
  -- Webhooks: a user who was no member anywhere joined here (a re-homed member is not new);
  -- the room is occupied when this region's full view of it (remote members included) was
  -- empty. Two regions' first members joining at once may both see it empty (see docs).
  if not member then
    if redis.call('ZCARD', KEYS[5]) == 0 then
      wh_emit('room.occupied', wh_room(), nil, nil, ARGV[5])
    end
    wh_emit('member.joined', wh_room(), ARGV[7], nil, ARGV[5])
  end
  redis.call('ZADD', KEYS[5], 0, ARGV[7])
  redis.call('HSET', KEYS[6], ARGV[7], ARGV[5])
  local stamp = hlc_tick()
  redis.call('HSET', KEYS[10], ARGV[7], stamp .. '|' .. ARGV[5])
  local r = append(ARGV[9], nil, stamp)
  return {1, r[1], r[2], redis.call('HGETALL', KEYS[12])}
end
return {0, ensure_epoch(), current_seq(), redis.call('HGETALL', KEYS[12])}
"#;

/// ARGV[6] token, [7] user, [8] left head.
///
/// The last local connection ends the membership only while this region is the member's
/// home; a member homed in another region (it joined there later) stays listed.
const LEAVE_LUA: &str = r#"
if redis.call('SREM', KEYS[3], ARGV[6]) == 0 then return 0 end
if redis.call('HINCRBY', KEYS[4], ARGV[7], -1) > 0 then return 0 end
redis.call('HDEL', KEYS[4], ARGV[7])
if local_members_gone() then
  redis.call('PUBLISH', 'meridian:interest', '0 ' .. ARGV[1])
end
local home = redis.call('HGET', KEYS[6], ARGV[7])
if home and home ~= ARGV[5] then return 0 end
redis.call('ZREM', KEYS[5], ARGV[7])
redis.call('HDEL', KEYS[6], ARGV[7])
redis.call('HDEL', KEYS[10], ARGV[7])
append(ARGV[8])
wh_emit('member.left', wh_room(), ARGV[7], string.match(ARGV[8], '"reason":"([^"]*)"'), ARGV[5])
if redis.call('ZCARD', KEYS[5]) == 0 then
  wh_emit('room.vacated', wh_room(), nil, nil, ARGV[5])
end
return 1
"#;

/// A batch of publishes, in order, charged first to the publisher's budget: ARGV[6] the
/// budget's limit ('' for none), ARGV[7] its window in ms, KEYS[13] its counter (the
/// idempotency prefix, unused, without one); the batch costs one per item, all or none. Over
/// the limit, nothing is published and the script returns `{{-1, '', limit}}`. Per item `i`
/// (from 1), ARGV[6 + 2i] its message head and ARGV[7 + 2i] the idempotency window in ms ('' without
/// a key), and KEYS[13 + i] its idempotency key (the bare prefix, unused, without one).
/// Returns `{status, epoch, seq}` per item: status 0 for a repeat answered from its key.
const PUBLISH_LUA: &str = r#"
local out = {}
local n = (#ARGV - 7) / 2
if ARGV[6] ~= '' then
  local limit = tonumber(ARGV[6])
  local spent = tonumber(redis.call('GET', KEYS[13]) or '0')
  if spent + n > limit then return {{-1, '', limit}} end
  if redis.call('INCRBY', KEYS[13], n) == n then redis.call('PEXPIRE', KEYS[13], ARGV[7]) end
end
for i = 1, n do
  local head, window, key = ARGV[6 + 2 * i], ARGV[7 + 2 * i], KEYS[13 + i]
  local prev = false
  if window ~= '' then prev = redis.call('GET', key) end
  if prev then
    out[i] = {0, ensure_epoch(), tonumber(prev)}
  else
    local idem = nil
    if window ~= '' then idem = string.sub(key, #idem_prefix() + 1) end
    local r = append(head, nil, nil, idem)
    if window ~= '' then redis.call('SET', key, r[2], 'PX', window) end
    out[i] = {1, r[1], r[2]}
  end
end
return out
"#;

/// ARGV[6] key, [7] value, [8] if_version (-1: none), [9] state_changed head, [10] writer.
const STATE_SET_LUA: &str = r#"
local cur = tonumber(redis.call('HGET', KEYS[7], ARGV[6]) or '0')
local want = tonumber(ARGV[8])
if want >= 0 and cur ~= want then return {-1, cur} end
local v = cur + 1
redis.call('HSET', KEYS[7], ARGV[6], v)
redis.call('HSET', KEYS[8], ARGV[6], ARGV[7])
local stamp = hlc_tick()
redis.call('HSET', KEYS[11], ARGV[6], stamp .. '|' .. ARGV[5] .. '|' .. ARGV[10])
append(with_version(ARGV[9], v), nil, stamp)
return {1, v}
"#;

/// ARGV[6] key, [7] if_version (-1: none), [8] state_changed head (value null), [9] writer.
/// The key's stamp stays behind as a tombstone, so an older write from another region
/// cannot bring the key back.
const STATE_DELETE_LUA: &str = r#"
local cur = tonumber(redis.call('HGET', KEYS[7], ARGV[6]) or '0')
local want = tonumber(ARGV[7])
if want >= 0 and cur ~= want then return {-1, cur} end
if cur == 0 then return {0, 0} end
redis.call('HDEL', KEYS[7], ARGV[6])
redis.call('HDEL', KEYS[8], ARGV[6])
local stamp = hlc_tick()
redis.call('HSET', KEYS[11], ARGV[6], stamp .. '|' .. ARGV[5] .. '|' .. ARGV[9])
append(with_version(ARGV[8], cur + 1), nil, stamp)
return {1, cur + 1}
"#;

/// A replicated event. ARGV[6] origin region, [7] origin epoch, [8] origin seq, [9] origin
/// HLC stamp, [10] kind, [11] room id, [12] the origin seq of the event sent before it
/// (ignored for a snapshot), [13..] by kind:
/// - `join`: [13] user.
/// - `leave`: [13] user, [14] reason.
/// - `message`: [13] message head (with its `origin`), [14] the publish's `<user>|<key>`
///   idempotency id ('' without one), [15] the idempotency window in ms.
/// - `set`: [13] key, [14] value, [15] writer, [16] state_changed head (with `origin`).
/// - `delete`: [13] key, [14] writer, [15] state_changed head (value null, with `origin`).
/// - `snapshot`: [13] n, then n × (user, member stamp), then m, then m × (key, value or ''
///   for a deleted key, "<hlc>|<region>|<by>", state_changed head with `origin`).
///
/// Returns `{0}` for a duplicate (at or below the origin's watermark), `{2}` when a newer
/// write won (last-writer-wins), `{1}` when applied, `{3}` for a gap (the watermark is not
/// the event's predecessor, or there is none and this is not a snapshot): nothing changes,
/// the relay asks the origin again.
const APPLY_LUA: &str = r#"
local origin, oepoch, oseq, ostamp, kind, room = ARGV[6], ARGV[7], tonumber(ARGV[8]), ARGV[9], ARGV[10], ARGV[11]
local mark = redis.call('HGET', KEYS[12], origin)
local me, ms = nil, nil
if mark then
  local sp = string.find(mark, ' ', 1, true)
  me, ms = string.sub(mark, 1, sp - 1), tonumber(string.sub(mark, sp + 1))
  if me == oepoch and (oseq < ms or (oseq == ms and kind ~= 'snapshot')) then
    return {0}
  end
end
if kind ~= 'snapshot' and (me ~= oepoch or ms ~= tonumber(ARGV[12])) then
  return {3}
end
redis.call('HSET', KEYS[12], origin, oepoch .. ' ' .. ARGV[8])
local tag = origin .. ' ' .. oepoch .. ' ' .. ARGV[8]
local ojson = origin_json(origin, oepoch, ARGV[8])
hlc_tick(tonumber(string.sub(ostamp, 1, 13)), tonumber(string.sub(ostamp, 15)))

local function remote_join(user, stamp)
  local key = stamp .. '|' .. origin
  if not newer(key, redis.call('HGET', KEYS[10], user)) then return 2 end
  redis.call('HSET', KEYS[10], user, key)
  if redis.call('HGET', KEYS[6], user) == origin then return 1 end
  redis.call('ZADD', KEYS[5], 0, user)
  redis.call('HSET', KEYS[6], user, origin)
  append(member_head('joined', room, user, origin, nil, ojson), tag)
  return 1
end

local function remote_leave(user, reason, stamp)
  if redis.call('HGET', KEYS[6], user) ~= origin then return 2 end
  if not newer(stamp .. '|' .. origin, redis.call('HGET', KEYS[10], user)) then return 2 end
  if tonumber(redis.call('HGET', KEYS[4], user) or '0') > 0 then
    -- Still connected here: the membership comes home, announced as a local join.
    local s = hlc_tick()
    redis.call('HSET', KEYS[6], user, ARGV[5])
    redis.call('HSET', KEYS[10], user, s .. '|' .. ARGV[5])
    append(member_head('joined', room, user, ARGV[5], nil, nil), nil, s)
    return 1
  end
  redis.call('ZREM', KEYS[5], user)
  redis.call('HDEL', KEYS[6], user)
  redis.call('HDEL', KEYS[10], user)
  append(member_head('left', room, user, origin, reason, ojson), tag)
  return 1
end

local function remote_set(key, value, lww, head)
  if not newer(lww, redis.call('HGET', KEYS[11], key)) then return 2 end
  redis.call('HSET', KEYS[11], key, lww)
  if value == '' then
    local v = redis.call('HGET', KEYS[7], key)
    if not v then
      redis.call('PEXPIRE', KEYS[11], ARGV[3])
      return 1
    end
    redis.call('HDEL', KEYS[7], key)
    redis.call('HDEL', KEYS[8], key)
    append(with_version(head, tonumber(v) + 1), tag)
    return 1
  end
  local v = tonumber(redis.call('HGET', KEYS[7], key) or '0') + 1
  redis.call('HSET', KEYS[7], key, v)
  redis.call('HSET', KEYS[8], key, value)
  append(with_version(head, v), tag)
  return 1
end

if kind == 'join' then
  return {remote_join(ARGV[13], ostamp)}
elseif kind == 'leave' then
  return {remote_leave(ARGV[13], ARGV[14], ostamp)}
elseif kind == 'message' then
  if ARGV[14] ~= '' then
    -- The same publish, retried by its client in another region (after losing the first
    -- region's ack), may reach us twice: apply it once, and let a retry here find it.
    local k = idem_prefix() .. ARGV[14]
    if redis.call('EXISTS', k) == 1 then return {2} end
    local r = append(ARGV[13], tag)
    redis.call('SET', k, r[2], 'PX', ARGV[15])
    return {1}
  end
  append(ARGV[13], tag)
  return {1}
elseif kind == 'set' then
  return {remote_set(ARGV[13], ARGV[14], ostamp .. '|' .. origin .. '|' .. ARGV[15], ARGV[16])}
elseif kind == 'delete' then
  return {remote_set(ARGV[13], '', ostamp .. '|' .. origin .. '|' .. ARGV[14], ARGV[15])}
elseif kind == 'snapshot' then
  local i = 13
  local n = tonumber(ARGV[i]); i = i + 1
  local present = {}
  for _ = 1, n do
    present[ARGV[i]] = true
    remote_join(ARGV[i], ARGV[i + 1])
    i = i + 2
  end
  local reg = redis.call('HGETALL', KEYS[6])
  for j = 1, #reg, 2 do
    if reg[j + 1] == origin and not present[reg[j]] then
      remote_leave(reg[j], 'disconnect', ostamp)
    end
  end
  local m = tonumber(ARGV[i]); i = i + 1
  for _ = 1, m do
    remote_set(ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3])
    i = i + 4
  end
  return {1}
end
return redis.error_reply('unknown replicated event kind ' .. kind)
"#;

/// The relay's view of its own region's share of a room, for a peer that starts (or must
/// restart) following it: `{epoch, seq, stamp, members, state}` read atomically.
/// `members` are the users homed here with their stamps; `state` every key with its stamp
/// (tombstones with value `''`).
const SNAPSHOT_LUA: &str = r#"
local epoch = ensure_epoch()
local seq = current_seq()
local stamp = hlc_tick()
local members = {}
local reg = redis.call('HGETALL', KEYS[6])
for j = 1, #reg, 2 do
  if reg[j + 1] == ARGV[5] then
    local s = redis.call('HGET', KEYS[10], reg[j])
    if not s then s = '0000000000000.00000|' .. ARGV[5] end
    table.insert(members, reg[j])
    table.insert(members, s)
  end
end
local state = {}
local sh = redis.call('HGETALL', KEYS[11])
for j = 1, #sh, 2 do
  table.insert(state, sh[j])
  table.insert(state, redis.call('HGET', KEYS[8], sh[j]) or '')
  table.insert(state, sh[j + 1])
end
return {epoch, seq, stamp, members, state}
"#;

/// ARGV[6] region declared down, [7] room id. Removes the members homed in that region with
/// `left {reason: region_down}`; a member still connected here (re-homed) comes home with a
/// local `joined` instead. Keeps the region's watermark. Returns the users removed.
const REGION_DOWN_LUA: &str = r#"
local gone, room = ARGV[6], ARGV[7]
local removed = 0
local reg = redis.call('HGETALL', KEYS[6])
-- Webhooks: every surviving region holding the room runs this; the one producing the
-- events is the smallest-named region that still has members in the room (the same choice
-- in every converged view; this one when only re-homed members of `gone` are left).
local producer = nil
for j = 2, #reg, 2 do
  if reg[j] ~= gone and (not producer or reg[j] < producer) then producer = reg[j] end
end
local emit = (producer == nil) or (producer == ARGV[5])
for j = 1, #reg, 2 do
  local user = reg[j]
  if reg[j + 1] == gone then
    if tonumber(redis.call('HGET', KEYS[4], user) or '0') > 0 then
      local s = hlc_tick()
      redis.call('HSET', KEYS[6], user, ARGV[5])
      redis.call('HSET', KEYS[10], user, s .. '|' .. ARGV[5])
      append(member_head('joined', room, user, ARGV[5], nil, nil), nil, s)
    else
      redis.call('ZREM', KEYS[5], user)
      redis.call('HDEL', KEYS[6], user)
      redis.call('HDEL', KEYS[10], user)
      append(member_head('left', room, user, gone, 'region_down', nil))
      if emit then wh_emit('member.left', room, user, 'region_down', ARGV[5]) end
      removed = removed + 1
    end
  end
end
if emit and removed > 0 and redis.call('ZCARD', KEYS[5]) == 0 then
  wh_emit('room.vacated', room, nil, nil, ARGV[5])
end
-- The watermark stays: when the region is back, it resumes after it (a partition longer
-- than the grace period loses no message) and reconciles membership with a snapshot.
return removed
"#;

/// Drops a room's replica once this region has no local member left (interest withdrawn):
/// remote members and watermarks go, silently (nobody here is listening). `-1` when a local
/// member is back.
const PURGE_LUA: &str = r#"
if not local_members_gone() then return -1 end
local reg = redis.call('HGETALL', KEYS[6])
local n = 0
for j = 1, #reg, 2 do
  if reg[j + 1] ~= ARGV[5] then
    redis.call('ZREM', KEYS[5], reg[j])
    redis.call('HDEL', KEYS[6], reg[j])
    redis.call('HDEL', KEYS[10], reg[j])
    n = n + 1
  end
end
redis.call('DEL', KEYS[12])
return n
"#;

/// Presence of one user, `KEYS[1] = mu:{user}:conns`. Counts the fields of real nodes (not
/// relay pseudo-nodes) to detect the user's first and last connection in this region.
const PRESENCE_LUA: &str = r#"
local function local_conns()
  local n = 0
  for _, f in ipairs(redis.call('HKEYS', KEYS[1])) do
    if string.sub(f, 1, 3) ~= 'rl-' then n = n + 1 end
  end
  return n
end
"#;

/// ARGV[1] field, [2] value (`<region>|<ms>`), [3] user. Webhooks: `user.online` when this is
/// the user's first connection in this region's view of the mesh (no relay pseudo-node).
const CONNECT_LUA: &str = r#"
if redis.call('HSET', KEYS[1], ARGV[1], ARGV[2]) == 1 and local_conns() == 1 then
  redis.call('PUBLISH', 'meridian:presence', '1 ' .. ARGV[3])
  if redis.call('HLEN', KEYS[1]) == 1 then
    wh_emit('user.online', nil, ARGV[3], nil, string.match(ARGV[2], '^[^|]*'))
  end
end
return 1
"#;

/// ARGV[1] field, [2] user, [3] this region (optional: no webhook event without it).
/// Webhooks: `user.offline` when the last connection in this region's view of the mesh goes.
const DISCONNECT_LUA: &str = r#"
if redis.call('HDEL', KEYS[1], ARGV[1]) == 1 and local_conns() == 0 then
  redis.call('PUBLISH', 'meridian:presence', '0 ' .. ARGV[2])
  if ARGV[3] and redis.call('HLEN', KEYS[1]) == 0 then
    wh_emit('user.offline', nil, ARGV[2], nil, ARGV[3])
  end
end
return 1
"#;

/// KEYS[1] the user's connections (`mu:{user}:conns`), ARGV[1] the inbox payload. Publishes it
/// once to the inbox of every node (or relay) holding one of them, in the same round trip as
/// the lookup. Returns how many subscribers received it.
const SEND_DIRECT_LUA: &str = r#"
local seen = {}
local n = 0
for _, f in ipairs(redis.call('HKEYS', KEYS[1])) do
  local node = string.match(f, '^[^|]*')
  if not seen[node] then
    seen[node] = true
    n = n + redis.call('PUBLISH', 'mn:{' .. node .. '}:inbox', ARGV[1])
  end
end
return n
"#;

/// Fixed-window budgets, all or none: KEYS[i] is budget i's counter for the current window,
/// ARGV[1] the window in ms (the counters' expiry), ARGV[2i] its cost and ARGV[2i+1] its
/// limit. Returns the 1-based index of the first budget the cost would overdraw (nothing is
/// spent), or 0 when every cost was spent.
const SPEND_LUA: &str = r#"
for i = 1, #KEYS do
  local cur = tonumber(redis.call('GET', KEYS[i]) or '0')
  if cur + tonumber(ARGV[2 * i]) > tonumber(ARGV[2 * i + 1]) then return i end
end
for i = 1, #KEYS do
  local cost = tonumber(ARGV[2 * i])
  if redis.call('INCRBY', KEYS[i], cost) == cost then
    redis.call('PEXPIRE', KEYS[i], ARGV[1])
  end
end
return 0
"#;

/// The scripts, hashed once per store.
pub(crate) struct Scripts {
    pub join: Script,
    pub leave: Script,
    pub publish: Script,
    pub state_set: Script,
    pub state_delete: Script,
    pub apply: Script,
    pub snapshot: Script,
    pub region_down: Script,
    pub purge: Script,
    pub connect: Script,
    pub disconnect: Script,
    pub send_direct: Script,
    pub spend: Script,
    pub want_replay: Script,
}

impl Scripts {
    pub fn new() -> Self {
        let room = |body: &str| Script::new(&format!("{APPEND_LUA}\n{WEBHOOK_LUA}\n{body}"));
        let user = |body: &str| Script::new(&format!("{PRESENCE_LUA}\n{WEBHOOK_LUA}\n{body}"));
        Self {
            join: room(JOIN_LUA),
            leave: room(LEAVE_LUA),
            publish: room(PUBLISH_LUA),
            state_set: room(STATE_SET_LUA),
            state_delete: room(STATE_DELETE_LUA),
            apply: room(APPLY_LUA),
            snapshot: room(SNAPSHOT_LUA),
            region_down: room(REGION_DOWN_LUA),
            purge: room(PURGE_LUA),
            connect: user(CONNECT_LUA),
            disconnect: user(DISCONNECT_LUA),
            send_direct: Script::new(SEND_DIRECT_LUA),
            spend: Script::new(SPEND_LUA),
            want_replay: Script::new(WANT_REPLAY_LUA),
        }
    }
}

/// Room-script settings every caller passes as `ARGV[1..5]`.
#[derive(Debug, Clone)]
pub(crate) struct RoomArgs {
    pub history_len: u32,
    pub history_ttl_ms: u64,
    pub region: String,
}

impl RoomArgs {
    /// An invocation of `script` for the room of `keys` with the common arguments.
    pub fn invoke<'a>(&self, script: &'a Script, keys: &RoomKeys) -> redis::ScriptInvocation<'a> {
        let mut inv = script.prepare_invoke();
        for key in &keys.keys {
            inv.key(key);
        }
        inv.arg(&keys.channel)
            .arg(self.history_len.max(1))
            .arg(self.history_ttl_ms)
            .arg(crate::random_token(8))
            .arg(&self.region);
        inv
    }
}

/// Parses a room channel name `mr:{<room>}:ev`.
pub(crate) fn room_of_channel(channel: &str) -> Option<RoomId> {
    let rest = channel.strip_prefix("mr:{")?.strip_suffix("}:ev")?;
    RoomId::new(rest).ok()
}

/// One room history entry as `append` stores it: id `<seq>-0`, fields `e` (the client frame),
/// `h` (HLC stamp), `o` (origin tag of a replicated event), `k` (a publish's idempotency id).
pub(crate) struct StoredEntry {
    pub seq: u64,
    pub frame: Bytes,
    pub stamp: Option<String>,
    pub origin: Option<String>,
    pub idempotency: Option<String>,
}

/// One atomic read of a room's position and history: `(epoch, seq)` from the meta hash, the
/// oldest entry kept, and up to `count` entries after `after`. Reply type:
/// `((Option<String>, Option<u64>), StreamRangeReply, StreamRangeReply)`.
pub(crate) fn history_after(keys: &RoomKeys, after: u64, count: usize) -> redis::Pipeline {
    let mut pipe = redis::pipe();
    pipe.atomic()
        .cmd("HMGET")
        .arg(&keys.keys[k::META])
        .arg("epoch")
        .arg("seq")
        .cmd("XRANGE")
        .arg(&keys.keys[k::HIST])
        .arg("-")
        .arg("+")
        .arg("COUNT")
        .arg(1)
        .cmd("XRANGE")
        .arg(&keys.keys[k::HIST])
        .arg(format!("{}-0", after.saturating_add(1)))
        .arg("+")
        .arg("COUNT")
        .arg(count.max(1));
    pipe
}

/// The sequence number of a history stream id `<seq>-0`.
pub(crate) fn entry_seq(id: &str) -> Option<u64> {
    id.split('-').next()?.parse().ok()
}

/// Parses an `XRANGE` reply of a room history; an entry without a frame or with a foreign id
/// is corruption, not something to skip.
pub(crate) fn stored_entries(reply: &StreamRangeReply) -> StoreResult<Vec<StoredEntry>> {
    let text = |e: &redis::streams::StreamId, field: &str| match e.map.get(field) {
        Some(redis::Value::BulkString(b)) => Some(String::from_utf8_lossy(b).into_owned()),
        _ => None,
    };
    reply
        .ids
        .iter()
        .map(|e| {
            let seq = entry_seq(&e.id)
                .ok_or_else(|| StoreError::Corrupt(format!("stream id {}", e.id)))?;
            let frame = match e.map.get("e") {
                Some(redis::Value::BulkString(b)) => Bytes::copy_from_slice(b),
                _ => {
                    return Err(StoreError::Corrupt(format!(
                        "history entry {} has no frame",
                        e.id
                    )))
                }
            };
            Ok(StoredEntry {
                seq,
                frame,
                stamp: text(e, "h"),
                origin: text(e, "o"),
                idempotency: text(e, "k"),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    //! What the Lua scripts emit, run by a real `redis-server`, pinned byte for byte to the
    //! Rust encoding of the same room events (`meridian_protocol::RoomEventFrame`).

    use super::*;
    use meridian_protocol::{
        LeftReason, OriginPosition, RoomEventFrame, RoomEventKind, RoomId, UserId,
    };

    async fn redis() -> (
        crate::testing::RedisServer,
        redis::aio::MultiplexedConnection,
    ) {
        let server = crate::testing::RedisServer::start().unwrap();
        let conn = redis::Client::open(server.url())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap();
        (server, conn)
    }

    #[tokio::test]
    async fn lua_member_events_are_the_rust_frames_byte_for_byte() {
        let (_server, mut conn) = redis().await;
        // The helpers every room script shares, called directly.
        let script = Script::new(&format!(
            "{APPEND_LUA}\n{}",
            r#"
local origin = origin_json(ARGV[5], ARGV[6], ARGV[7])
return {
  close_frame(member_head('joined', ARGV[1], ARGV[2], ARGV[3], nil, nil), '42', ARGV[8]),
  close_frame(member_head('left', ARGV[1], ARGV[2], ARGV[3], ARGV[4], nil), '43', ARGV[8]),
  close_frame(member_head('joined', ARGV[1], ARGV[2], ARGV[3], nil, origin), '44', ARGV[8]),
  close_frame(member_head('left', ARGV[1], ARGV[2], ARGV[3], ARGV[4], origin), '45', ARGV[8]),
  close_frame(with_version(ARGV[9], 7), '46', ARGV[8]),
  close_frame(with_version(ARGV[10], tonumber('12') + 1), '47', ARGV[8]),
}
"#
        ));
        let room = RoomId::new("lobby:7").unwrap();
        let user = UserId::new("al.ice@x/=+_-").unwrap();
        let origin = OriginPosition {
            region: "eu-central".into(),
            epoch: "k3v9x0qa".into(),
            seq: 1234,
        };
        let reason = LeftReason::RegionDown;
        let set = RoomEventFrame::new(
            &room,
            "",
            &RoomEventKind::StateSet {
                key: "topic".into(),
                value: meridian_protocol::JsonText::new(r#"{"t":"a \"b\""}"#).unwrap(),
                by: user.clone(),
            },
        )
        .with_origin(&origin);
        let delete = RoomEventFrame::state_changed(&room, "topic", None, &user);
        let mut inv = script.prepare_invoke();
        inv.arg(room.as_str())
            .arg(user.as_str())
            .arg("us-east")
            .arg(reason.as_str())
            .arg(&origin.region)
            .arg(&origin.epoch)
            .arg(origin.seq)
            .arg("e0000001")
            .arg(set.head())
            .arg(delete.head());
        let lua: Vec<String> = inv.invoke_async(&mut conn).await.unwrap();
        let joined = RoomEventFrame::new(
            &room,
            "us-east",
            &RoomEventKind::Joined { user: user.clone() },
        );
        let left = RoomEventFrame::new(
            &room,
            "us-east",
            &RoomEventKind::Left {
                user: user.clone(),
                reason,
            },
        );
        let rust = vec![
            joined.finish(42, "e0000001"),
            left.finish(43, "e0000001"),
            joined.with_origin(&origin).finish(44, "e0000001"),
            left.with_origin(&origin).finish(45, "e0000001"),
            set.with_version(7).finish(46, "e0000001"),
            delete.with_version(13).finish(47, "e0000001"),
        ];
        assert_eq!(lua, rust);
        for frame in &lua {
            let decoded = RoomEventFrame::decode(frame.as_bytes()).unwrap();
            assert_eq!(decoded.room, room);
        }
    }

    /// The whole region-down script, as the relay runs it: a member homed in the lost region
    /// leaves with `region_down`; one still connected here comes home with a local `joined`.
    #[tokio::test]
    async fn region_down_emits_the_rust_frames_byte_for_byte() {
        let (_server, mut conn) = redis().await;
        let room = RoomId::new("stage").unwrap();
        let keys = RoomKeys::new(&room);
        let (gone, home) = ("eu", "us");
        let _: () = redis::pipe()
            .hset(&keys.keys[k::REG], "alice", gone)
            .hset(&keys.keys[k::REG], "bob", gone)
            .zadd(&keys.keys[k::MEM], "alice", 0)
            .zadd(&keys.keys[k::MEM], "bob", 0)
            .hset(&keys.keys[3], "bob", 1)
            .query_async(&mut conn)
            .await
            .unwrap();
        let args = RoomArgs {
            history_len: 100,
            history_ttl_ms: 60_000,
            region: home.into(),
        };
        let scripts = Scripts::new();
        let mut inv = args.invoke(&scripts.region_down, &keys);
        inv.arg(gone).arg(room.as_str());
        let removed: i64 = inv.invoke_async(&mut conn).await.unwrap();
        assert_eq!(removed, 1);
        let reply: StreamRangeReply = redis::cmd("XRANGE")
            .arg(&keys.keys[k::HIST])
            .arg("-")
            .arg("+")
            .query_async(&mut conn)
            .await
            .unwrap();
        let entries = stored_entries(&reply).unwrap();
        assert_eq!(entries.len(), 2);
        for e in entries {
            let text = std::str::from_utf8(&e.frame).unwrap();
            let decoded = RoomEventFrame::decode(&e.frame).unwrap();
            let want = match decoded.kind {
                RoomEventKind::Left { ref user, .. } => {
                    assert_eq!(user.as_str(), "alice");
                    RoomEventFrame::left(&room, user, gone, LeftReason::RegionDown)
                }
                RoomEventKind::Joined { ref user } => {
                    assert_eq!(user.as_str(), "bob");
                    RoomEventFrame::joined(&room, user, home)
                }
                ref other => panic!("unexpected {other:?}"),
            };
            assert_eq!(text, want.finish(e.seq, &decoded.epoch));
        }
    }
}
