-- End login sessions (sessions.py). ARGV: prefix, user, digest.
-- A user: every session of theirs; or user '' and one session's digest: that session (logout).
-- Returns how many sessions ended.
local function end_one(digest)
  local key = k('session', digest)
  local user = redis.call('HGET', key, 'user')
  if not user then
    return 0
  end
  redis.call('DEL', key)
  redis.call('SREM', k('user', user, 'sessions'), digest)
  return 1
end

if ARGV[2] == '' then
  return end_one(ARGV[3])
end
local listed = k('user', ARGV[2], 'sessions')
local ended = 0
for _, digest in ipairs(redis.call('SMEMBERS', listed)) do
  ended = ended + redis.call('DEL', k('session', digest))
end
redis.call('DEL', listed)
return ended
