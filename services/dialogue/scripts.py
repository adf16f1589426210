"""The Lua scripts: each one step, atomic, on one user's slot.

A lease value is ``<holder>|<token>``. Every script that changes what a
worker has done checks that value first: a worker whose lease expired (and
maybe passed to another worker with a higher token) can no longer dequeue,
mark a reply sent or store a result.
"""

from __future__ import annotations

# KEYS: seen, queue, sched, lease, sent, unsettled[, active index, ready list].
# ARGV: entry, dedupe ttl (s), check dedupe (1/0), order (the event's own time
# in ms; 0 queues at the end), evidence ttl (s), replies already sent (a dead
# letter's, restored on replay so none is sent twice; 0 for a new item),
# item id[, member, index deadline (s)].
# Returns 0 duplicate, 1 accepted, 2 accepted and the user needs scheduling.
# With the index keys (a single Redis, where every key is on one node) the
# script also indexes and schedules the user: the whole submission is one
# atomic round trip. Under Redis Cluster the caller does those two steps.
# Deliveries can overtake each other on the way here (Messenger's order is
# the events' timestamps), so an entry goes before queued entries with a later
# time: never before a head a worker holds or has begun answering, never past
# an entry without a time, and looking back at most 32 entries.
# A repeated delivery (the channel is retrying) or an overtaken one marks the
# user unsettled for a while: the evidence ACQUIRE needs to hold a fresh head.
# The event is marked seen last: Redis does not undo a script that fails part
# way, and an event marked seen but not queued would be lost on the retry.
SUBMIT = """
if ARGV[3] == '1' and redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('SET', KEYS[6], '1', 'EX', ARGV[5])
  return 0
end
if #KEYS >= 8 then redis.call('ZADD', KEYS[7], 'GT', ARGV[9], ARGV[8]) end
local order = tonumber(ARGV[4])
local n = redis.call('LLEN', KEYS[2])
local pivot = false
local function later(entry)
  local o = tonumber(cjson.decode(entry)['o'] or 0)
  return o > 0 and o > order
end
if order > 0 and n > 0 and later(redis.call('LINDEX', KEYS[2], -1)) then
  local floor = 0
  local head = redis.call('LINDEX', KEYS[2], 0)
  if redis.call('EXISTS', KEYS[4]) == 1
    or redis.call('HEXISTS', KEYS[5], cjson.decode(head)['i']) == 1 then
    floor = 1
  end
  local first = math.max(floor, n - 32)
  if first < n then
    local tail = redis.call('LRANGE', KEYS[2], first, n - 1)
    for i = #tail, 1, -1 do
      if not later(tail[i]) then break end
      pivot = tail[i]
    end
  end
end
if pivot then
  redis.call('LINSERT', KEYS[2], 'BEFORE', pivot, ARGV[1])
  redis.call('SET', KEYS[6], '1', 'EX', ARGV[5])
else
  redis.call('RPUSH', KEYS[2], ARGV[1])
end
if tonumber(ARGV[6]) > 0 then redis.call('HSET', KEYS[5], ARGV[7], ARGV[6]) end
local scheduled = redis.call('SET', KEYS[3], '1', 'NX')
if scheduled and #KEYS >= 8 then redis.call('RPUSH', KEYS[8], ARGV[8]) end
if ARGV[3] == '1' then redis.call('SET', KEYS[1], '1', 'EX', ARGV[2]) end
if scheduled then return 2 end
return 1
"""

# KEYS: lease, fence, queue, sched, tries, unsettled, sent, slots, handoff
#       [, active index].
# ARGV: holder, ttl (ms), now (ms, also the seed), reorder window (ms),
#       state ttl (s: the fence counter lives this long after the last lease)
#       [, member, index deadline (s)].
# Returns {token, head, tries, sent, slots, handoff}: the lease is taken, the
# head loaded and its attempt counted (``tries``: the count before it) in one
# step; or {-1} when another worker holds the lease,
# {0} when there is nothing to do (and clears a stale schedule mark), or
# {-2 - N}: come back in N ms. That hold is paid only on evidence that an
# earlier event may still be on its way (the user is unsettled), and only
# until the window has passed since the head's own time (or since it was
# queued, if the sender's clock runs ahead): a delivery that took longer than
# the window starts at once. A missing counter starts from the seed (the time
# in milliseconds), so tokens keep growing even if Redis lost its data: the
# chatlog, which remembers the highest token per user, never sees an old
# number again. (Lua numbers are doubles: the token is formatted with %d,
# never concatenated as a number.)
ACQUIRE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return {-1} end
local raw = redis.call('LINDEX', KEYS[3], 0)
if not raw then
  redis.call('DEL', KEYS[4])
  return {0}
end
local head = cjson.decode(raw)
local tries = tonumber(redis.call('HGET', KEYS[5], head['i']) or '0')
local window = tonumber(ARGV[4])
if window > 0 and tries == 0 and redis.call('EXISTS', KEYS[6]) == 1 then
  local own = tonumber(head['o'] or 0)
  if own > 0 then
    local wait = math.min(own, tonumber(head['t'] or 0)) + window - tonumber(ARGV[3])
    if wait > 0 then return {-2 - math.floor(wait)} end
  end
end
if redis.call('EXISTS', KEYS[2]) == 0 then redis.call('SET', KEYS[2], ARGV[3]) end
local token = redis.call('INCR', KEYS[2])
redis.call('EXPIRE', KEYS[2], ARGV[5])
redis.call('SET', KEYS[1], ARGV[1] .. '|' .. string.format('%d', token), 'PX', ARGV[2])
redis.call('HINCRBY', KEYS[5], head['i'], 1)
if #KEYS >= 10 then redis.call('ZADD', KEYS[10], 'GT', ARGV[7], ARGV[6]) end
local sent = tonumber(redis.call('HGET', KEYS[7], head['i']) or '0')
return {string.format('%d', token), raw, tries, sent,
        redis.call('HGETALL', KEYS[8]), redis.call('HGETALL', KEYS[9])}
"""

# KEYS: lease. ARGV: value, ttl (ms). Returns 1 when still ours (and extended).
RENEW = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
"""

# KEYS: lease, queue, tries, sent, slots, handoff.
# ARGV: value. Returns {head or false, tries, sent, slots..., handoff...} or
# -1 when the lease is lost. Like ACQUIRE, it counts the attempt it starts
# (``tries`` is the count before it): a message that crashes or hangs its
# worker is counted too, and dead-lettered at the maximum instead of being
# retried at every lease expiry.
LOAD_HEAD = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return -1 end
local head = redis.call('LINDEX', KEYS[2], 0)
if not head then return {false, 0, 0, {}, {}} end
local id = cjson.decode(head)['i']
local tries = redis.call('HINCRBY', KEYS[3], id, 1) - 1
local sent = tonumber(redis.call('HGET', KEYS[4], id) or '0')
return {head, tries, sent, redis.call('HGETALL', KEYS[5]), redis.call('HGETALL', KEYS[6])}
"""

# KEYS: lease, sent. ARGV: value, item id, replies sent so far.
MARK_SENT = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[2], ARGV[2], ARGV[3])
return 1
"""

# KEYS: lease, queue, tries, sent, last, slots, handoff, result, done, sched
#       [, active index, ready list, chatlog outbox, outbox's dropped counter].
# ARGV: value, head entry, item id, result, result ttl (s), now (ms),
#       slots (json object; "" keeps them), slot ttl (s), handoff (json; "" keeps it),
#       release (1/0), state ttl (s: of ``last`` and ``handoff``)
#       [, member, index deadline (s), chatlog records ("": none),
#       traceparent of the turn ("": none), outbox cap (entries)].
# Removes the head and records its outcome in one step; with release, also
# gives the lease up (the end of the turn). On a single Redis it also puts a
# user with more queued back at the tail of the ready list, and hands the
# item's chatlog records to the outbox in the same step: written only while
# the lease is current (fenced), and never lost once the item is done, unless
# the outbox is full (a chatlog outage longer than its cap): then the records
# are counted as dropped rather than letting Redis fill up and refuse every
# new message. Returns the queue's remaining length, -1 when the lease is lost, -2 when
# the head is not ours.
COMPLETE = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return -1 end
if redis.call('LINDEX', KEYS[2], 0) ~= ARGV[2] then return -2 end
redis.call('LPOP', KEYS[2])
redis.call('HDEL', KEYS[3], ARGV[3])
redis.call('HDEL', KEYS[4], ARGV[3])
redis.call('HSET', KEYS[5], 'event_id', ARGV[3], 'time', ARGV[6])
redis.call('EXPIRE', KEYS[5], ARGV[11])
if ARGV[7] ~= '' then
  local slots = cjson.decode(ARGV[7])
  for name, value in pairs(slots) do redis.call('HSET', KEYS[6], name, value) end
  if redis.call('EXISTS', KEYS[6]) == 1 then redis.call('EXPIRE', KEYS[6], ARGV[8]) end
end
if ARGV[9] ~= '' then
  local handoff = cjson.decode(ARGV[9])
  for name, value in pairs(handoff) do redis.call('HSET', KEYS[7], name, value) end
end
if redis.call('EXISTS', KEYS[7]) == 1 then redis.call('EXPIRE', KEYS[7], ARGV[11]) end
redis.call('SET', KEYS[8], ARGV[4], 'EX', ARGV[5])
redis.call('DEL', KEYS[9])
redis.call('RPUSH', KEYS[9], '1')
redis.call('EXPIRE', KEYS[9], ARGV[5])
if #KEYS >= 14 and ARGV[14] ~= '' then
  if redis.call('XLEN', KEYS[13]) < tonumber(ARGV[16]) then
    redis.call('XADD', KEYS[13], '*', 'r', ARGV[14], 't', ARGV[15])
  else
    redis.call('INCR', KEYS[14])
  end
end
local n = redis.call('LLEN', KEYS[2])
if ARGV[10] == '1' then
  redis.call('DEL', KEYS[1])
  if n == 0 then
    redis.call('DEL', KEYS[10])
  elseif #KEYS >= 12 then
    redis.call('ZADD', KEYS[11], 'GT', ARGV[13], ARGV[12])
    redis.call('RPUSH', KEYS[12], ARGV[12])
  end
end
return n
"""

# KEYS: lease, queue, tries, sent, dead count, result, done, dead letters.
# ARGV: value, head entry, item id, result, result ttl (s), dead letter id,
#       dead letter record, state ttl (s).
# Takes a failed head off the queue and writes its dead letter (with the
# replies already sent, as marked, restored on replay) in the user's slot: only while the
# lease is current, so a worker that lost the user cannot leave a dead letter
# for an item another worker answers. (The tenant's index points here; it is
# written first, and a pointer to nothing is skipped when listing.)
DEAD = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return -1 end
if redis.call('LINDEX', KEYS[2], 0) ~= ARGV[2] then return -2 end
redis.call('LPOP', KEYS[2])
redis.call('HDEL', KEYS[3], ARGV[3])
local record = cjson.decode(ARGV[7])
record['s'] = tonumber(redis.call('HGET', KEYS[4], ARGV[3]) or '0')
redis.call('HDEL', KEYS[4], ARGV[3])
redis.call('HSET', KEYS[8], ARGV[6], cjson.encode(record))
redis.call('INCR', KEYS[5])
redis.call('EXPIRE', KEYS[5], ARGV[8])
redis.call('SET', KEYS[6], ARGV[4], 'EX', ARGV[5])
redis.call('DEL', KEYS[7])
redis.call('RPUSH', KEYS[7], '1')
redis.call('EXPIRE', KEYS[7], ARGV[5])
return redis.call('LLEN', KEYS[2])
"""

# KEYS: lease, queue, sched. ARGV: value.
# Returns the queue's length (the caller schedules the user again when it is
# not 0), or -1 when the lease was already lost.
RELEASE = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return -1 end
redis.call('DEL', KEYS[1])
local n = redis.call('LLEN', KEYS[2])
if n == 0 then redis.call('DEL', KEYS[3]) end
return n
"""

# KEYS: lease, queue, sched. For the reaper: 1 busy (a lease is held), 0 idle
# (nothing queued), 2 queued with nobody on it (waiting in the ready list, or
# stranded by a crash: the reaper tells which).
INSPECT = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 1 end
if redis.call('LLEN', KEYS[2]) == 0 then
  redis.call('DEL', KEYS[3])
  return 0
end
redis.call('SET', KEYS[3], '1')
return 2
"""

# KEYS: active index. ARGV: member, score read before. Removes the member only
# if nobody touched it since.
FORGET_IF_UNCHANGED = """
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if score and tonumber(score) == tonumber(ARGV[2]) then
  redis.call('ZREM', KEYS[1], ARGV[1])
  return 1
end
return 0
"""

# KEYS: the tenant's dead-letter pointers, its index. ARGV: id. Takes one
# dead letter out of the tenant's listing; returns what the pointer held.
TAKE_DEAD = """
local item = redis.call('HGET', KEYS[1], ARGV[1])
if not item then return false end
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
return item
"""

# KEYS: the user's dead letters, dead count. ARGV: id. Removes a replayed
# dead letter from the user's slot; returns 1 when it was there.
DROP_DEAD = """
if redis.call('HDEL', KEYS[1], ARGV[1]) == 0 then return 0 end
if tonumber(redis.call('GET', KEYS[2]) or '0') > 0 then redis.call('DECR', KEYS[2]) end
return 1
"""
