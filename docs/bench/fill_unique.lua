local counter = 0
local tid = 0
local threads = 0
function setup(thread)
  thread:set("tid", threads)
  threads = threads + 1
end
function request()
  counter = counter + 1
  return wrk.format("GET", "/api/s?n=" .. counter .. "&t=" .. tid)
end
