//! The Lua scripts vigil runs in each region's Redis. Each runs atomically, so a snapshot and
//! its stream never disagree.

use std::sync::LazyLock;

use redis::Script;

/// Joins one certificate's record into the issuer's snapshot and, only if that changed it,
/// appends the events to the stream (trimmed with `MAXLEN ~`). Returns the last new stream id,
/// or nil when the snapshot already held the record (a retry or a duplicate: nothing written).
///
/// It also keeps the issuer's digest: the XOR of SHA-1(serial ‖ record) over the snapshot, so
/// regions can be compared without scanning them ([`super::repair`]).
///
/// `KEYS`: stream, snapshot hash, issuers set, digests hash. `ARGV`: maxlen, issuer hex, serial,
/// record (9 bytes, see [`crate::status::CertRecord::to_bytes`]), then one or more encoded
/// events.
///
/// The join mirrors [`crate::status::CertRecord::join`]: the latest notAfter; revoked is final;
/// among revocations keyCompromise wins, then the earliest time, then the lower reason code;
/// a live record's hold register (reason octet 6 held, 254 released, 255 never held) takes
/// the later (time, held > released) of the two.
/// `tests/feed.rs` checks the two agree on random records.
///
/// A record whose reason octet is neither a revocation reason nor a hold register (7,
/// removeFromCRL 8, 11..=253) is refused as an argument, and a stored one is read as absent (the
/// write replaces it), as [`crate::status::CertRecord::from_bytes`] refuses it: replicas never
/// apply such a record, so the join here must not keep it either.
pub const MERGE_LUA: &str = r#"
local function u32(s, i)
  local a, b, c, d = string.byte(s, i, i + 3)
  return ((a * 256 + b) * 256 + c) * 256 + d
end
local function be32(n)
  return string.char(math.floor(n / 16777216) % 256, math.floor(n / 65536) % 256,
                     math.floor(n / 256) % 256, n % 256)
end
local function permanent(r)
  return r ~= 255 and r ~= 254 and r ~= 6
end
local function hold_rank(r)
  if r == 6 then return 2 elseif r == 254 then return 1 end
  return 0
end
local function join(x, y)
  local xn, xt, xr = u32(x, 1), u32(x, 5), string.byte(x, 9)
  local yn, yt, yr = u32(y, 1), u32(y, 5), string.byte(y, 9)
  local n = xn
  if yn > n then n = yn end
  local t, r = xt, xr
  if permanent(xr) and permanent(yr) then
    local take_y
    if (xr == 1) ~= (yr == 1) then
      take_y = (yr == 1)
    elseif xt ~= yt then
      take_y = yt < xt
    else
      take_y = yr < xr
    end
    if take_y then t, r = yt, yr end
  elseif permanent(yr) then
    t, r = yt, yr
  elseif not permanent(xr) then
    local xk, yk = hold_rank(xr), hold_rank(yr)
    if xk == 0 then xt = 0 end
    if yk == 0 then yt = 0 end
    if yt > xt or (yt == xt and yk > xk) then t, r = yt, yr end
  end
  if r == 255 then t = 0 end
  return be32(n) .. be32(t) .. string.char(r)
end
local function xorhex(a, b)
  local out = {}
  for i = 1, 40, 8 do
    local x = tonumber(string.sub(a, i, i + 7), 16)
    local y = tonumber(string.sub(b, i, i + 7), 16)
    out[#out + 1] = string.format('%08x', bit.bxor(x, y) % 4294967296)
  end
  return table.concat(out)
end
local function valid(r)
  return r <= 6 or r == 9 or r == 10 or r >= 254
end
local rec = ARGV[4]
if string.len(rec) ~= 9 or #ARGV < 5 then
  return redis.error_reply('ERR vigil merge: bad arguments')
end
if not valid(string.byte(rec, 9)) then
  return redis.error_reply('ERR vigil merge: not a revocation reason')
end
local cur = redis.call('HGET', KEYS[2], ARGV[3])
local new = rec
if cur and string.len(cur) == 9 and valid(string.byte(cur, 9)) then new = join(cur, rec) end
if cur == new then return false end
redis.call('HSET', KEYS[2], ARGV[3], new)
redis.call('SADD', KEYS[3], ARGV[2])
local digest = redis.call('HGET', KEYS[4], ARGV[2]) or string.rep('0', 40)
if cur then digest = xorhex(digest, redis.sha1hex(ARGV[3] .. cur)) end
digest = xorhex(digest, redis.sha1hex(ARGV[3] .. new))
redis.call('HSET', KEYS[4], ARGV[2], digest)
local id = false
for i = 5, #ARGV do
  id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', 'e', ARGV[i])
end
return id
"#;

/// Appends a heartbeat unless another replica did within the lease.
///
/// `KEYS`: stream, lease. `ARGV`: maxlen, lease ms, payload (`created_at_ms` i64 BE + origin).
pub const HEARTBEAT_LUA: &str = r#"
if redis.call('SET', KEYS[2], '1', 'NX', 'PX', ARGV[2]) then
  return redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', 'hb', ARGV[3])
end
return false
"#;

/// Returns the region's epoch, making it (from `ARGV[1]`) if it does not exist.
pub const EPOCH_LUA: &str = r#"
redis.call('SET', KEYS[1], ARGV[1], 'NX')
return redis.call('GET', KEYS[1])
"#;

/// Extends a lease held by `ARGV[1]` to `ARGV[2]` ms; 0 if it is held by someone else.
pub const RENEW_LUA: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"#;

/// Releases a lease held by `ARGV[1]`.
pub const RELEASE_LUA: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"#;

/// Records events a region missed, in a region that has them (hinted handoff). When the hints
/// outgrow `maxlen` they are dropped and the `resync` flag is set instead, so repair copies the
/// whole view into the missed region.
///
/// `KEYS`: hints stream, resync flag. `ARGV`: maxlen, then encoded events.
pub const HINT_LUA: &str = r#"
for i = 2, #ARGV do
  redis.call('XADD', KEYS[1], '*', 'e', ARGV[i])
end
if redis.call('XLEN', KEYS[1]) > tonumber(ARGV[1]) then
  redis.call('DEL', KEYS[1])
  redis.call('SET', KEYS[2], '1')
end
return 1
"#;

/// The region's state in one atomic step, for completeness checks: the id of the stream's last
/// entry (`0-0` when empty), then per issuer its hex id, its snapshot's record count (`HLEN`,
/// kept by Redis in the same step as every merge) and its digest (kept by [`MERGE_LUA`]).
///
/// `KEYS`: stream, issuers set, digests hash. `ARGV`: the snapshot key prefix (the issuer hex
/// is appended; standalone Redis, as everywhere in vigil).
pub const STATE_LUA: &str = r#"
local last = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
local out = {'0-0'}
if last[1] then out[1] = last[1][1] end
for _, hex in ipairs(redis.call('SMEMBERS', KEYS[2])) do
  out[#out + 1] = hex
  out[#out + 1] = redis.call('HLEN', ARGV[1] .. hex)
  out[#out + 1] = redis.call('HGET', KEYS[3], hex) or ''
end
return out
"#;

/// [`STATE_LUA`].
pub static STATE: LazyLock<Script> = LazyLock::new(|| Script::new(STATE_LUA));
/// [`MERGE_LUA`].
pub static MERGE: LazyLock<Script> = LazyLock::new(|| Script::new(MERGE_LUA));
/// [`HEARTBEAT_LUA`].
pub static HEARTBEAT: LazyLock<Script> = LazyLock::new(|| Script::new(HEARTBEAT_LUA));
/// [`HINT_LUA`].
pub static HINT: LazyLock<Script> = LazyLock::new(|| Script::new(HINT_LUA));
/// [`EPOCH_LUA`].
pub static EPOCH: LazyLock<Script> = LazyLock::new(|| Script::new(EPOCH_LUA));
/// [`RENEW_LUA`].
pub static RENEW: LazyLock<Script> = LazyLock::new(|| Script::new(RENEW_LUA));
/// [`RELEASE_LUA`].
pub static RELEASE: LazyLock<Script> = LazyLock::new(|| Script::new(RELEASE_LUA));

/// Every script, for loading into a new connection.
pub fn all() -> [&'static Script; 7] {
    [&MERGE, &HEARTBEAT, &HINT, &EPOCH, &RENEW, &RELEASE, &STATE]
}
