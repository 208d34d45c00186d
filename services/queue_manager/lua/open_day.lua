-- The organizer's restore is written: dispatch and participants' changes go on ({p}:opened set,
-- {p}:paused gone, every queue woken), unless the evening's save closed the workshop meanwhile
-- ({p}:closed): then nothing changes, and the destroy goes on with the workshop closed. In one step,
-- so a save that closes the workshop while the restore runs is never undone by it.
-- ARGV: prefix. Returns 1 when the workshop is open, 0 when it stays closed.
if redis.call('EXISTS', k('closed')) == 1 then
  return 0
end
redis.call('SET', k('opened'), '1')
redis.call('DEL', k('paused'))
redis.call('PUBLISH', k('wake'), '*')
for _, scope in ipairs(redis.call('SMEMBERS', k('scopes'))) do
  redis.call('PUBLISH', k('wake'), scope)
end
return 1
