-- Queue places of many jobs in one call (read-only: no AOF write). ARGV: prefix, ids...
-- Returns a flat list {id, place, ...} for the jobs that wait in a queue (not in a backoff).
local out = {}
for i = 2, #ARGV do
  local id = ARGV[i]
  local f = redis.call('HMGET', k('job', id), 'scope', 'score', 'state')
  if f[3] == 'queued' and f[2] and redis.call('ZSCORE', k('queue', f[1]), id) then
    table.insert(out, id)
    table.insert(out, position(f[1], tonumber(f[2])))
  end
end
return out
