"""The Lua scripts of the log: every write the service makes to a shard's log, snapshot or fence.

Each checks, before it changes anything, that this instance still owns the shard's group (its owner
key holds this instance's epoch) and that the shard's fence has not been raised past the token the
write carries (R7): a refused write changed nothing. Every key of one call shares a hash tag
(``keys.py``), except a group commit on a single Redis, which may span groups.
"""

# Every write checks first that this instance still owns the group: a newer instance claims it by
# raising the owner key (``LogStore.claim``), and from then on the older one's writes are refused
# whole ("FENCED"), so two instances can never both decide against the same units (nothing of a
# refused write is applied: the check comes before any change). KEYS[1]: owner; ARGV[1]: epoch.
# An epoch is the whole owner-key value, ``<drawn number>:<the claim's identity>`` (``CLAIM_ORDER_LUA``):
# compared whole, two claims that drew the same number (Redis back from older data forgot the first)
# are still two owners, and the one replaced is refused (R7, E10).
FENCE_LUA = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return redis.error_reply('FENCED epoch ' .. ARGV[1] .. ' was replaced by ' .. tostring(redis.call('GET', KEYS[1])))
end
"""

# Group commit in one command: the entries of every shard ready in this turn, each XADDed to its
# own stream. One command instead of one per shard keeps the client's cost flat as shards grow.
# Each entry is checked before it is written (R7, never a late landing, never a hole):
# - its shard's fence: a shard settling an append in doubt first raises ``fence:<shard>``; an
#   append sent before that (a reply lost, the script still on its way) is refused "STALE", so what
#   the settle then reads is final;
# - its place: the stream's newest entry must be the one just before it ("TAKEN" when the id is
#   already used, "GAP" when one is missing). A stream is never empty once written: a snapshot
#   trims up to its own entry, not past it.
# Entries sharing a group number (a cross-shard change, R2) land all or none; a refused entry makes
# the later entries of its stream refuse too ("SKIPPED"); other streams still land. A refusal comes
# back as "!<reason>" in the entry's place.
# Every entry's owner is checked before anything is written: a replaced instance's call is refused
# whole ("FENCED"), as FENCE_LUA refuses it.
# A log's first entry also sets its ``log-begun`` key, in the same script (one AOF record, one replicated
# effect): a log missing at a start where it is set was deleted or evicted with entries acknowledged, which
# a shard never snapshotted has nothing else to tell (recovery refuses it, R7). A log begun without it (an
# earlier build's, an older process's in a rolling upgrade) is marked by the first entry a call lands on it
# (one EXISTS per stream per call: entry 1 marks without it).
# KEYS: owner, log, fence and log-begun key per entry; ARGV: epoch, seq, data, token, group per entry.
APPEND_SCRIPT = """
local n = #KEYS / 4
local out, failed, top, owned = {}, {}, {}, {}
for i = 1, n do
  local owner, epoch = KEYS[4 * i - 3], ARGV[5 * i - 4]
  if not owned[owner .. ' ' .. epoch] then
    local current = redis.call('GET', owner)
    if current ~= epoch then
      return redis.error_reply('FENCED epoch ' .. epoch .. ' of ' .. owner .. ' was replaced by ' .. tostring(current))
    end
    owned[owner .. ' ' .. epoch] = true
  end
end
local function refusal(i)
  local key, seq = KEYS[4 * i - 2], tonumber(ARGV[5 * i - 3])
  if failed[key] then return 'SKIPPED an earlier entry of this stream was refused' end
  local fence = tonumber(redis.call('GET', KEYS[4 * i - 1]) or '0')
  if fence > tonumber(ARGV[5 * i - 1]) then return 'STALE shard fenced at ' .. fence end
  local last = top[key]
  if last == nil then
    local row = redis.call('XREVRANGE', key, '+', '-', 'COUNT', 1)
    if #row > 0 then
      last = tonumber(string.match(row[1][1], '^%d+'))
    elseif redis.call('EXISTS', key) == 0 then
      last = 0
    else  -- emptied by a trim: the newest id it ever had
      local info = redis.call('XINFO', 'STREAM', key)
      for k = 1, #info, 2 do
        if info[k] == 'last-generated-id' then last = tonumber(string.match(info[k + 1], '^%d+')) end
      end
    end
  end
  if last >= seq then return 'TAKEN entry ' .. seq .. ' is not after ' .. last end
  if last ~= seq - 1 then return 'GAP entry ' .. seq .. ' follows ' .. last end
  return nil
end
local i = 1
while i <= n do
  local j = i
  if ARGV[5 * i] ~= '0' then
    while j < n and ARGV[5 * j + 5] == ARGV[5 * i] do j = j + 1 end
  end
  local why = nil
  for k = i, j do
    why = why or refusal(k)
  end
  for k = i, j do
    local key = KEYS[4 * k - 2]
    if why then
      out[k] = '!' .. why
      failed[key] = true
    else
      out[k] = redis.call('XADD', key, ARGV[5 * k - 3] .. '-0', 'e', ARGV[5 * k - 2])
      if top[key] == nil and (ARGV[5 * k - 3] == '1' or redis.call('EXISTS', KEYS[4 * k]) == 0) then
        redis.call('INCR', KEYS[4 * k])  -- not SET: its ACL stays the snapshot's alone
      end
      top[key] = tonumber(ARGV[5 * k - 3])
    end
  end
  i = j + 1
end
return out
"""

# The snapshot's writes and the fence, and they alone (with a leased group's taking: ``EPOCH_SCRIPT``,
# ``leases.ACQUIRE_SCRIPT``), run on a Redis at its maxmemory (``noeviction``).
# Refused ``OOM`` at their first write, as a script without flags is: the snapshot never trimmed, so a
# log-filled Redis stayed full, and a write in doubt was never settled (the fence is its first step),
# so its shard stayed in doubt — every write refused until an operator gave Redis room. Bounded: the
# fence overwrites one small number a shard; a snapshot grows Redis by one snapshot of a shard (staging
# and the old one) before its trim frees that shard's log since the last one, and is due only after
# entries landed (``Checkpoints.due``), which the appends — never allowed past maxmemory, else Redis
# grows without bound — cannot while Redis is full. Redis 7.0 or newer (script flags); with a flag the
# script may touch only the keys it names, which every one here does (one hash tag).
ALLOW_OOM = "#!lua flags=allow-oom\n"

# KEYS: owner, fence; ARGV: epoch, the token this instance's writes carry. A replaced instance raises
# no fence of the newer one's shards. The fence goes above the token too, not only above the stored
# value: Redis restarted from older data (an older AOF or RDB, a lagging replica promoted) holds a fence
# below the token the instance still carries, and a mere INCR would leave a write sent with that token
# free to land after the settle read the log (R7). The channel desk's fence is this script too.
FENCE_SCRIPT = ALLOW_OOM + FENCE_LUA + """
local raised = math.max(tonumber(redis.call('GET', KEYS[2]) or '0'), tonumber(ARGV[2])) + 1
redis.call('SET', KEYS[2], raised)
return raised
"""

# A command the Redis user's ACL no longer allows, taken away while the service serves (``ACL SETUSER svc -hset``):
# Redis checks each command of a script against the ACL as it runs, and undoes nothing before the one it refuses, so a
# script whose later command is refused stopped with its earlier changes landed; the start's check
# (``app/permissions.py``) cannot see an ACL changed after it. ``denied(commands)`` asks the ACL
# (``redis.acl_check_cmd``, Redis 7.0) for each command a script runs after its first change, on the keys it runs
# it on, before that change: the refusal to return (DENIED), false where every one is allowed. Refused so, a write
# changed nothing (R7, C4); it is tried again as one Redis refused, once the ACL allows it again. The refusal names
# the command as an ACL does (a container's subcommand with it: ``XGROUP|SETID``) and the key it was asked on.
ACL_LUA = """
local containers = {XGROUP = true, XINFO = true}
local function denied(commands)
  for _, command in ipairs(commands) do
    if not redis.acl_check_cmd(unpack(command)) then
      local name, key = command[1], command[2]
      if containers[name] then name, key = name .. '|' .. command[2], command[3] end
      return redis.error_reply('DENIED ' .. name .. (key and (' on ' .. key) or '') ..  -- TIME: no key
        ': the Redis user may not run it (its ACL changed since the start): nothing written')
    end
  end
  return false
end
"""

# The newest id Redis ever handed out in a stream, as text: its last generated id, an entry deleted since by hand
# included (``XDEL``). A settle's marker linked above it follows versions Redis lost (``channel_store``: LOST).
HANDED_OUT_LUA = """
local function handed_out(stream)
  local info = redis.call('XINFO', 'STREAM', stream)
  for i = 1, #info, 2 do
    if info[i] == 'last-generated-id' then return string.match(info[i + 1], '^%d+') end
  end
  return '0'
end
"""

# A snapshot's write, like an append, is refused once the shard's fence (the last key) is raised
# past the token it carries (ARGV[4]): one that timed out cannot land after the next try began.
STALE_LUA = """
local fence = tonumber(redis.call('GET', KEYS[#KEYS]) or '0')
if fence > tonumber(ARGV[4]) then
  return redis.error_reply('STALE shard fenced at ' .. fence)
end
"""

# A log (KEYS[3]) whose newest id ever is below the snapshot's seq (ARGV[3]) lost entries the
# service acknowledged (an older AOF, a lagging replica promoted): the snapshot is refused "GAP"
# (R7). Written, it would trim the whole log and stand past the stream's newest id, so every later
# append would be refused GAP and every restart would stop the shard again — a group that never
# answers writes again.
LOG_REACHES_LUA = """
local last = 0
if redis.call('EXISTS', KEYS[3]) == 1 then
  local info = redis.call('XINFO', 'STREAM', KEYS[3])
  for k = 1, #info, 2 do
    if info[k] == 'last-generated-id' then last = tonumber(string.match(info[k + 1], '^%d+')) end
  end
end
if last < tonumber(ARGV[3]) then
  return redis.error_reply('GAP snapshot of entry ' .. ARGV[3] .. ' but the log ends at ' .. last)
end
"""

# A new epoch's number is never below the time now, in ms (Redis's clock, and the claimant's: ARGV[2]),
# as well as above every number Redis holds. Redis back from older data (an older AOF or RDB, a lagging
# replica promoted) has lost the latest claims: "above every number it holds" alone would draw a lost
# claim's number again, and its instance — still running, idle, its owner check saying it owns the
# keyspace — would write as the new one (two writers, one epoch). A claim made later is drawn above
# the time the lost one was made. The highest number + 1 keeps numbers rising when a clock goes back.
# Numbers stay below 2^53 (exact in Lua's numbers) and below 10^14 (printed whole by tostring).
# The number alone can still repeat (two claims in one ms, or numbers drawn ahead of the clocks that
# Redis forgot, drawn again as ``top + 1``): a claim's owner-key value also names the claim
# (``CLAIM_ORDER_LUA``), so a repeated number is never the same epoch.
# Defines ``drawn(top)``: the number after ``top``. A write after TIME needs the script's effects
# replicated, not the script (Redis 7 always does; 6.2 unless lua-replicate-commands is off).
DRAW_LUA = """
if redis.replicate_commands then redis.replicate_commands() end
local function drawn(top)
  local now = redis.call('TIME')
  local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
  return math.max(top + 1, now_ms, tonumber(ARGV[2] or '0'))
end
"""

# An owner key holds ``<number>:<identity>``: the number drawn (``DRAW_LUA``) and the claim's own
# identity (a keyspace claim: the claimant's random token; a leased group's taking: a random nonce per
# taking), so no two claims ever hold the same value, whatever Redis forgot (R7, E10). A previous
# release wrote the number alone: read as that number with the least identity, outranked by any claim
# of this one drawing it too. ``number_of(value)``: the number (0: none, a missing key is false);
# ``outranks(a, b)``: whether owner value ``a`` is a later claim than ``b`` — the higher number, and of
# equal numbers the greater value, byte by byte (Lua's ``>`` on strings follows the server's locale,
# which may differ between the primaries of a cluster), so claims racing on several primaries all
# settle on one winner.
CLAIM_ORDER_LUA = """
local function number_of(value)
  return tonumber(string.match(value or '', '^%d+') or '0')
end
local function outranks(a, b)
  local x, y = number_of(a), number_of(b)
  if x ~= y then return x > y end
  a, b = a or '', b or ''
  for i = 1, math.max(#a, #b) do
    local p, q = string.byte(a, i) or -1, string.byte(b, i) or -1
    if p ~= q then return p > q end
  end
  return false
end
"""

# Claim groups: their owner keys all take one value above every one of them (the new number,
# ``DRAW_LUA``, with the claimant's token: ``CLAIM_ORDER_LUA``), so every write of an earlier owner is
# refused from now on; returns the number, then each group's fence (the token this owner's writes
# carry). On one Redis one call claims every group at once: of two instances starting together one
# wins them all. KEYS: owner, fence per group; ARGV: the claimant's token, its clock (ms).
# The last key (a sorted set) holds the token of each recent claim (ARGV[1], one per instance),
# scored by the number it took: a claim whose reply was lost is sent again, and the first copy may
# land after the second — after another instance's claim too. A copy finding its own token answers
# the number that token took (never the current one: that may be another's) and claims nothing: one
# claiming above a newer instance would leave both refused "replaced" (exit 3) and nobody serving.
# Only the newest CLAIMANTS_KEPT are kept: a copy still on its way is of a recent start.
CLAIMANTS_KEPT = 64
CLAIM_SCRIPT = DRAW_LUA + CLAIM_ORDER_LUA + """
local n = #KEYS - 1
local out = {}
local mine = redis.call('ZSCORE', KEYS[#KEYS], ARGV[1])
if mine then
  out[1] = tonumber(mine)
  for i = 1, n, 2 do
    out[#out + 1] = tonumber(redis.call('GET', KEYS[i + 1]) or '0')
  end
  return out
end
local top = 0
for i = 1, n, 2 do
  top = math.max(top, number_of(redis.call('GET', KEYS[i])))
end
local epoch = drawn(top)
out[1] = epoch
for i = 1, n, 2 do
  redis.call('SET', KEYS[i], epoch .. ':' .. ARGV[1])
  out[#out + 1] = tonumber(redis.call('GET', KEYS[i + 1]) or '0')
end
redis.call('ZADD', KEYS[#KEYS], epoch, ARGV[1])
redis.call('ZREMRANGEBYRANK', KEYS[#KEYS], 0, -""" + str(CLAIMANTS_KEPT + 1) + """)
return out
"""

# On a Redis Cluster no one script reaches every group, so a claim is two steps. First its number is
# drawn from one key (KEYS[1], ``Keyspace.claims``): above every number drawn before and above ARGV[1]
# (the highest owner key's number the claimant read), and not below the time now (``DRAW_LUA``;
# ARGV[2]: the claimant's clock, ms). Redis losing the latest may repeat a number: the claim's
# identity, beside it in the owner key, keeps the epochs apart (``CLAIM_ORDER_LUA``).
# A leased group's taking draws its number here too (``leases.GroupLeases``), on a full Redis as well
# (``ALLOW_OOM``: one number overwritten): a group handed over there must be taken, its owner's snapshot
# being what trims the log that filled Redis.
EPOCH_SCRIPT = ALLOW_OOM + DRAW_LUA + """
local epoch = drawn(math.max(tonumber(redis.call('GET', KEYS[1]) or '0'), tonumber(ARGV[1])))
redis.call('SET', KEYS[1], epoch)
return epoch
"""

# Then each group is taken with that epoch (``<number>:<token>``) unless a later claim holds it
# already (``outranks``): of instances claiming at once, the one whose epoch ranks highest ends up
# owning every group, whatever the order the calls reach the primaries in (the others are refused
# "FENCED" or overwritten) — never each a part of the groups, both fenced; two that drew the same
# number are ranked by their tokens, on every primary alike. The same claim sent again takes the
# group again. KEYS: owner, fence; ARGV: epoch. Returns the group's fence.
CLAIM_AT_SCRIPT = CLAIM_ORDER_LUA + """
local current = redis.call('GET', KEYS[1])
if outranks(current, ARGV[1]) then
  return redis.error_reply('FENCED epoch ' .. ARGV[1] .. ' of ' .. KEYS[1] .. ' was replaced by ' .. current)
end
redis.call('SET', KEYS[1], ARGV[1])
return tonumber(redis.call('GET', KEYS[2]) or '0')
"""

# A channel's ``restamp`` fields forgotten (``ChannelStore.forget_restamps``), each only if it still names the version
# read. No command after the HDEL that empties the hash (HLEN counted down): a field named twice (an HSCAN may return
# one twice) or forgotten meanwhile came after it, and on a Redis Cluster slot being migrated the source node fails a
# script's command on a key gone since it began (a non local key) — every key forgotten, the look counted unread.
FORGET_RESTAMPS = """
local left = redis.call('HLEN', KEYS[1])
for i = 1, #ARGV, 2 do
  if left == 0 then break end
  if redis.call('HGET', KEYS[1], ARGV[i]) == ARGV[i + 1] then left = left - redis.call('HDEL', KEYS[1], ARGV[i]) end
end
return 0
"""
