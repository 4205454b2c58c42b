-- GCRA over every bucket of one decision, atomically; the rules are in hoodrun/limits/bucket.py
-- and MemoryLimiter is the same algorithm in Python (the tests run both against one suite).
--
-- KEYS: one per bucket.  ARGV: cost, then rate and capacity of each bucket, in KEYS order.
-- A key holds its bucket's theoretical arrival time in seconds since EPOCH and expires at that
-- time, when the bucket is full again, so idle buckets take no memory.
-- Time is the Redis server's, so every gateway process shares one clock and one limit.
--
-- Returns {allowed (0 or 1), reported bucket (1-based), limit, remaining, reset_after,
-- retry_after}; the two durations as strings because Redis truncates Lua numbers to integers.

local EPSILON = 1e-3  -- bucket.TOKEN_EPSILON
-- Counting from Unix time 1.7e9 rather than 0 keeps a double precise to about 10 ns.
local EPOCH = 1700000000

local t = redis.call('TIME')
local now = (tonumber(t[1]) - EPOCH) + tonumber(t[2]) / 1000000
local cost = tonumber(ARGV[1])
local n = #KEYS

local function fmt(x)
  return string.format('%.17g', x)
end

local function whole(tokens)
  local w = math.floor(tokens + EPSILON)
  if w < 0 then
    return 0
  end
  return w
end

local tats = redis.call('MGET', unpack(KEYS))
local aheads = {}
local tight, tight_left, tight_reset = 1, math.huge, 0
local deny, deny_wait, deny_avail, deny_reset = 0, -1, 0, 0
for i = 1, n do
  local rate = tonumber(ARGV[2 * i])
  local capacity = tonumber(ARGV[2 * i + 1])
  local tat = tonumber(tats[i])
  local ahead = 0
  if tat and tat > now then
    ahead = tat - now
  end
  aheads[i] = ahead
  if cost > capacity then
    -- Never admissible: deny now, with the wait until this bucket is full again.
    return {0, i, capacity, whole(capacity - ahead * rate), fmt(ahead), fmt(ahead)}
  end
  local avail = capacity - ahead * rate
  local left = avail - cost
  if left < -EPSILON then
    local wait = -left / rate
    if wait > deny_wait then
      deny, deny_wait, deny_avail, deny_reset = i, wait, avail, ahead
    end
  elseif left < tight_left then
    tight, tight_left, tight_reset = i, left, ahead + cost / rate
  end
end

if deny > 0 then
  return {0, deny, tonumber(ARGV[2 * deny + 1]), whole(deny_avail), fmt(deny_reset), fmt(deny_wait)}
end
if cost > 0 then
  for i = 1, n do
    local ahead = aheads[i] + cost / tonumber(ARGV[2 * i])
    redis.call('SET', KEYS[i], fmt(now + ahead), 'PX', math.ceil(ahead * 1000))
  end
end
return {1, tight, tonumber(ARGV[2 * tight + 1]), whole(tight_left), fmt(tight_reset), '0'}
