local range = tonumber(os.getenv("RANGE") or "1000")
math.randomseed(7)
function request()
  local n = math.random(1, range)
  return wrk.format("GET", "/api/s?n=" .. n .. "&t=" .. (n % 2))
end
