//! The Lua scripts vigil runs in each region's Redis. Each runs atomically, so a snapshot and
//! its stream never disagree.

use std::sync::LazyLock;

use redis::Script;

/// The Lua helpers [`MERGE_LUA`] and [`MERGE_MANY_LUA`] share (one definition, so the two
/// scripts join records and keep the digest the same way):
///
/// - `join(x, y)` mirrors [`crate::status::CertRecord::join`]: the latest notAfter; revoked is
///   final; among revocations keyCompromise wins, then the earliest time, then the lower reason
///   code; a live record's hold register (reason octet 6 held, 254 released, 255 never held)
///   takes the later (time, held > released) of the two; the CRL scope (2 more bytes, present
///   only when recorded: a record is 9 or 11 bytes) takes the larger code, and the result is 9
///   bytes when neither has one, exactly as before scopes existed. `tests/feed.rs` checks the
///   two agree on random records.
/// - `record_len_ok(rec)`: 9 or 11 bytes.
/// - `join_batch(serials, records, stored, digest, guessed)`: joins each record into the stored
///   one (or, for a serial repeated in the batch, the batch's own earlier result) and keeps the
///   digest; with `guessed` the writer's batch digest was added already and is undone where a
///   record was stored. Returns the serial/record pairs to write and the indices that changed.
/// - `valid(r)`: the reason octet is a revocation reason or a hold register. Any other (7,
///   removeFromCRL 8, 11..=253) is refused as an argument, and a stored one is read as absent
///   (the write replaces it), as [`crate::status::CertRecord::from_bytes`] refuses it: replicas
///   never apply such a record, so the join here must not keep it either.
/// - `digest_words(hex)`, `digest_toggle(words, text)` and `digest_hex(words)`: the issuer's
///   digest, the XOR of SHA-1(serial ‖ record) over the snapshot
///   ([`crate::status::view::Digest`]), as five 32-bit words.
macro_rules! merge_helpers_lua {
    () => {
        r#"
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
local function record_len_ok(rec)
  local l = string.len(rec)
  return l == 9 or l == 11
end
local function scope(rec)
  if string.len(rec) == 11 then
    local a, b = string.byte(rec, 10, 11)
    return a * 256 + b
  end
  return 0
end
local function join(x, y)
  local xn, xt, xr = u32(x, 1), u32(x, 5), string.byte(x, 9)
  local yn, yt, yr = u32(y, 1), u32(y, 5), string.byte(y, 9)
  local sc = scope(x)
  if scope(y) > sc then sc = scope(y) end
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
  local out = be32(n) .. be32(t) .. string.char(r)
  if sc > 0 then out = out .. string.char(math.floor(sc / 256), sc % 256) end
  return out
end
local function valid(r)
  return r <= 6 or r == 9 or r == 10 or r >= 254
end
local function digest_words(h)
  local w = {}
  for k = 1, 5 do
    w[k] = tonumber(string.sub(h, k * 8 - 7, k * 8), 16)
  end
  return w
end
local function digest_xor(w, h)
  for k = 1, 5 do
    w[k] = bit.bxor(w[k], tonumber(string.sub(h, k * 8 - 7, k * 8), 16))
  end
end
local function digest_toggle(w, text)
  digest_xor(w, redis.sha1hex(text))
end
local function join_batch(serials, records, stored, digest, guessed)
  local latest, pairs_out, changed = {}, {}, {}
  for k = 1, #serials do
    local serial, rec = serials[k], records[k]
    local cur = latest[serial]
    if cur == nil then cur = stored[k] end
    local new = rec
    if cur then
      if guessed then digest_toggle(digest, serial .. rec) end
      if record_len_ok(cur) and valid(string.byte(cur, 9)) then new = join(cur, rec) end
    end
    if cur ~= new then
      latest[serial] = new
      pairs_out[#pairs_out + 1] = serial
      pairs_out[#pairs_out + 1] = new
      if cur then
        digest_toggle(digest, serial .. cur)
        digest_toggle(digest, serial .. new)
      elseif not guessed then
        digest_toggle(digest, serial .. new)
      end
      changed[#changed + 1] = k
    end
  end
  return pairs_out, changed
end
local function digest_hex(w)
  local out = {}
  for k = 1, 5 do
    out[k] = string.format('%08x', w[k] % 4294967296)
  end
  return table.concat(out)
end
"#
    };
}

/// Joins one certificate's record into the issuer's snapshot and, only if that changed it,
/// appends the events to the stream (trimmed with `MAXLEN ~`). Returns the last new stream id,
/// or nil when the snapshot already held the record (a retry or a duplicate: nothing written).
///
/// It also keeps the issuer's digest: the XOR of SHA-1(serial ‖ record) over the snapshot, so
/// regions can be compared without scanning them ([`super::repair`]).
///
/// `KEYS`: stream, snapshot hash, issuers set, digests hash. `ARGV`: maxlen, issuer hex, serial,
/// record (9 or 11 bytes, see [`crate::status::CertRecord::to_bytes`]), then one or more encoded
/// events. The join and the refusal of records that are not revocations are the shared helpers'
/// (`merge_helpers_lua!`).
///
/// vigil's writers send [`MERGE_MANY_LUA`]; this one stays for a single certificate and as the
/// reference `tests/feed.rs` compares the batched script against.
pub const MERGE_LUA: &str = concat!(
    merge_helpers_lua!(),
    r#"
local rec = ARGV[4]
if not record_len_ok(rec) or #ARGV < 5 then
  return redis.error_reply('ERR vigil merge: bad arguments')
end
if not valid(string.byte(rec, 9)) then
  return redis.error_reply('ERR vigil merge: not a revocation reason')
end
local cur = redis.call('HGET', KEYS[2], ARGV[3])
local new = rec
if cur and record_len_ok(cur) and valid(string.byte(cur, 9)) then new = join(cur, rec) end
if cur == new then return false end
redis.call('HSET', KEYS[2], ARGV[3], new)
redis.call('SADD', KEYS[3], ARGV[2])
local digest = digest_words(redis.call('HGET', KEYS[4], ARGV[2]) or string.rep('0', 40))
if cur then digest_toggle(digest, ARGV[3] .. cur) end
digest_toggle(digest, ARGV[3] .. new)
redis.call('HSET', KEYS[4], ARGV[2], digest_hex(digest))
local id = false
for i = 5, #ARGV do
  id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', 'e', ARGV[i])
end
return id
"#
);

/// [`MERGE_LUA`] for a batch of one issuer's certificates in one call: the same join per
/// certificate, the same snapshot and digest, and the same events in the same order as calling
/// [`MERGE_LUA`] for each in turn; the events of the batch's changed certificates are appended
/// as one stream entry of one packed field (`p`, [`super::FIELD_PACKED`]: each event as a
/// 2-octet length and its bytes, at most `ENTRY_EVENTS` =
/// [`FEED_ENTRY_MAX_EVENTS`](crate::limits::FEED_ENTRY_MAX_EVENTS) events per entry), where
/// [`MERGE_LUA`] appends one entry per event. The snapshot's reads and writes (`HMGET`, `HSET`),
/// the issuers-set `SADD`, the digest's read and write and the stream's trim (`XTRIM MAXLEN ~`)
/// are done once per batch. Returns how many certificates' records changed (each appended its
/// events).
///
/// The whole batch is checked before anything is written: one malformed or refused record (see
/// `merge_helpers_lua!`) fails the call and writes nothing.
///
/// `KEYS`: stream, snapshot hash, issuers set, digests hash. `ARGV`: maxlen, issuer hex, the
/// batch's digest (40 lower-case hex digits: the XOR of SHA-1(serial ‖ record) over the records
/// sent, what the digest changes by when every certificate is new; computing SHA-1 and the
/// XOR in Lua was 40 % of the script's time in a mass revocation), then per certificate:
/// serial, record (9 or 11 bytes), the number of its events (1 to `ENTRY_EVENTS`), and its events
/// packed ([`super::pack_events`]). A wrong batch digest leaves the region's digest wrong
/// (replicas then see a mismatch and re-read the snapshot; nothing is lost): only vigil's
/// writers call this.
pub const MERGE_MANY_LUA: &str = concat!(
    merge_helpers_lua!(),
    r#"
local n = #ARGV
if n < 7 or not string.match(ARGV[3], '^[0-9a-f]+$') or string.len(ARGV[3]) ~= 40 then
  return redis.error_reply('ERR vigil merge: bad arguments')
end
-- Check the whole batch before writing anything.
local ENTRY_EVENTS = 200
local serials, records, counts, packs = {}, {}, {}, {}
local i = 4
while i <= n do
  local rec, count, pack = ARGV[i + 1], tonumber(ARGV[i + 2] or ''), ARGV[i + 3]
  if not rec or not record_len_ok(rec) or not count or count < 1 or count ~= math.floor(count)
     or count > ENTRY_EVENTS or not pack or string.len(pack) < 2 * count then
    return redis.error_reply('ERR vigil merge: bad arguments')
  end
  if not valid(string.byte(rec, 9)) then
    return redis.error_reply('ERR vigil merge: not a revocation reason')
  end
  local k = #serials + 1
  serials[k], records[k], counts[k], packs[k] = ARGV[i], rec, count, pack
  i = i + 4
end
-- One HMGET / HSET per slice (unpack's stack is bounded); a serial repeated in the batch
-- joins with what the batch wrote before it.
local SLICE = 1000
local m = #serials
local stored = {}
for a = 1, m, SLICE do
  local b = math.min(a + SLICE - 1, m)
  local got = redis.call('HMGET', KEYS[2], unpack(serials, a, b))
  for k = a, b do stored[k] = got[k - a + 1] end
end
-- The events of every certificate that changed go out as one stream entry of one packed
-- field (`p`), cut at ENTRY_EVENTS events (`limits::FEED_ENTRY_MAX_EVENTS`).
-- The writer sent the XOR of SHA-1(serial .. record) over the batch's records (ARGV[3]): the
-- digest's change if every certificate is new, which a mass revocation's are. Only where a
-- record was already stored is that guess undone and the change computed here.
local digest = digest_words(redis.call('HGET', KEYS[4], ARGV[2]) or string.rep('0', 40))
digest_xor(digest, ARGV[3])
local pairs_out, changed_at = join_batch(serials, records, stored, digest, true)
local changed, parts, part_events, entries_out, events_out = #changed_at, {}, 0, 0, 0
for _, k in ipairs(changed_at) do
  if part_events > 0 and part_events + counts[k] > ENTRY_EVENTS then
    redis.call('XADD', KEYS[1], '*', 'p', table.concat(parts))
    entries_out, events_out, parts, part_events = entries_out + 1, events_out + part_events, {}, 0
  end
  parts[#parts + 1] = packs[k]
  part_events = part_events + counts[k]
end
if part_events > 0 then
  redis.call('XADD', KEYS[1], '*', 'p', table.concat(parts))
  entries_out, events_out = entries_out + 1, events_out + part_events
end
if changed > 0 then
  for a = 1, #pairs_out, 2 * SLICE do
    redis.call('HSET', KEYS[2], unpack(pairs_out, a, math.min(a + 2 * SLICE - 1, #pairs_out)))
  end
  redis.call('SADD', KEYS[3], ARGV[2])
  redis.call('HSET', KEYS[4], ARGV[2], digest_hex(digest))
  -- Trimmed once per batch, inside the same atomic call: no one sees the stream in between,
  -- and `MAXLEN ~` trims whole nodes either way. The trim check per XADD was a quarter of the
  -- script's time. feed.maxlen bounds events, not entries: with k events per entry written
  -- here, the stream keeps about maxlen / k entries, so a mass revocation's entries of 200
  -- events keep about maxlen events, as entries of one event do.
  local keep = math.max(1, math.floor(tonumber(ARGV[1]) * entries_out / events_out))
  redis.call('XTRIM', KEYS[1], 'MAXLEN', '~', keep)
end
return changed
"#
);

/// Joins a batch of one issuer's records from a backup into the issuer's snapshot
/// (`vigil backup restore`, [`crate::backup::load`]): the join and the digest of
/// [`MERGE_MANY_LUA`], but no stream entry. A restore writes millions of records, which as
/// events would be a gigabyte of stream per region that every replica and the archive read and
/// the trim throws away; replicas learn restored records from the snapshot instead, through
/// their completeness rounds (the region's count or digest then differs from the view's:
/// [`super::consume`], docs/FEED.md).
///
/// When no record of the batch is stored yet and no serial repeats (a restore into a flushed
/// region), the records are written as they were sent (`HSET` of the arguments) and the digest
/// changes by the batch's digest the writer sent; otherwise each record is joined with the
/// stored one as in [`MERGE_MANY_LUA`], so a restore never removes or downgrades a newer
/// revocation. The whole batch is checked before anything is written. Returns how many
/// certificates' records changed.
///
/// `KEYS`: snapshot hash, issuers set, digests hash. `ARGV`: issuer hex, the batch's digest (40
/// lower-case hex digits: the XOR of SHA-1(serial ‖ record) over the records sent), then per
/// certificate its serial and record (9 or 11 bytes).
pub const RESTORE_MANY_LUA: &str = concat!(
    merge_helpers_lua!(),
    r#"
local n = #ARGV
if n < 4 or n % 2 ~= 0 or string.len(ARGV[2]) ~= 40 or not string.match(ARGV[2], '^[0-9a-f]+$') then
  return redis.error_reply('ERR vigil restore: bad arguments')
end
local serials, records, seen, fresh = {}, {}, {}, true
for i = 3, n, 2 do
  local s, rec = ARGV[i], ARGV[i + 1]
  if not record_len_ok(rec) or string.len(s) == 0 then
    return redis.error_reply('ERR vigil restore: bad arguments')
  end
  if not valid(string.byte(rec, 9)) then
    return redis.error_reply('ERR vigil restore: not a revocation reason')
  end
  if seen[s] then fresh = false end
  seen[s] = true
  serials[#serials + 1] = s
  records[#records + 1] = rec
end
local SLICE = 1000
local m = #serials
local stored, present = {}, 0
for a = 1, m, SLICE do
  local b = math.min(a + SLICE - 1, m)
  local got = redis.call('HMGET', KEYS[1], unpack(serials, a, b))
  for k = a, b do
    local v = got[k - a + 1]
    if v then present = present + 1 end
    stored[k] = v
  end
end
local digest = digest_words(redis.call('HGET', KEYS[3], ARGV[1]) or string.rep('0', 40))
local changed = 0
if fresh and present == 0 then
  for a = 3, n, 2 * SLICE do
    redis.call('HSET', KEYS[1], unpack(ARGV, a, math.min(a + 2 * SLICE - 1, n)))
  end
  digest_xor(digest, ARGV[2])
  changed = m
else
  -- Mostly new records: take the batch's digest and undo it where a record was there;
  -- mostly stored ones (a restore run again): compute the change where a record changed.
  local guess = present * 2 <= m
  if guess then digest_xor(digest, ARGV[2]) end
  local pairs_out, changed_at = join_batch(serials, records, stored, digest, guess)
  changed = #changed_at
  for a = 1, #pairs_out, 2 * SLICE do
    redis.call('HSET', KEYS[1], unpack(pairs_out, a, math.min(a + 2 * SLICE - 1, #pairs_out)))
  end
end
if changed > 0 then
  redis.call('SADD', KEYS[2], ARGV[1])
  redis.call('HSET', KEYS[3], ARGV[1], digest_hex(digest))
end
return changed
"#
);

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
/// kept by Redis in the same step as every merge) and its digest (kept by [`MERGE_LUA`] and
/// [`MERGE_MANY_LUA`]).
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
/// [`MERGE_MANY_LUA`].
pub static MERGE_MANY: LazyLock<Script> = LazyLock::new(|| Script::new(MERGE_MANY_LUA));
/// [`HEARTBEAT_LUA`].
pub static HEARTBEAT: LazyLock<Script> = LazyLock::new(|| Script::new(HEARTBEAT_LUA));
/// [`HINT_LUA`].
pub static HINT: LazyLock<Script> = LazyLock::new(|| Script::new(HINT_LUA));
/// [`EPOCH_LUA`].
pub static EPOCH: LazyLock<Script> = LazyLock::new(|| Script::new(EPOCH_LUA));
/// [`RENEW_LUA`].
pub static RENEW: LazyLock<Script> = LazyLock::new(|| Script::new(RENEW_LUA));
/// [`RESTORE_MANY_LUA`].
pub static RESTORE_MANY: LazyLock<Script> = LazyLock::new(|| Script::new(RESTORE_MANY_LUA));
/// [`RELEASE_LUA`].
pub static RELEASE: LazyLock<Script> = LazyLock::new(|| Script::new(RELEASE_LUA));

/// Every script, for loading into a new connection.
pub fn all() -> [&'static Script; 9] {
    [
        &MERGE,
        &MERGE_MANY,
        &RESTORE_MANY,
        &HEARTBEAT,
        &HINT,
        &EPOCH,
        &RENEW,
        &RELEASE,
        &STATE,
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::FEED_ENTRY_MAX_EVENTS;

    #[test]
    fn the_script_cuts_entries_where_the_readers_expect() {
        let line = format!("local ENTRY_EVENTS = {FEED_ENTRY_MAX_EVENTS}\n");
        assert!(MERGE_MANY_LUA.contains(&line), "{line}");
    }
}
