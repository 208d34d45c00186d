-- Store some of a participant's settings (workspaces/settings.py) within her caps, checked and
-- written in one step, so settings the frontend sends at once cannot pass them together.
-- ARGV: prefix, user, max_settings, max_bytes, settings... (name, JSON value pairs).
-- Returns {'ok'} | {'closed'} | {'count'} | {'bytes', the total the update would bring}.
if closed() then
  return {'closed'}
end
local key = k('ws', 'settings', ARGV[2])
local updated, count, total = {}, 0, 0
for i = 5, #ARGV, 2 do
  if not updated[ARGV[i]] then
    updated[ARGV[i]] = true
    count = count + 1
  end
  total = total + #ARGV[i + 1]
end
local names = redis.call('HKEYS', key)
for _, name in ipairs(names) do
  if not updated[name] then
    count = count + 1
    total = total + redis.call('HSTRLEN', key, name)
  end
end
if count > tonumber(ARGV[3]) then
  return {'count'}
end
if total > tonumber(ARGV[4]) then
  return {'bytes', total}
end
for i = 5, #ARGV, 2 do
  redis.call('HSET', key, ARGV[i], ARGV[i + 1])
end
return {'ok'}
