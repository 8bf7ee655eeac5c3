-- Pipelining: each write carries N requests (the script's argument: `wrk ... URL -- 16`), all sent before
-- any response is read (RFC 9112, section 9.3.2). wrk counts every response but times a whole batch as one,
-- so latency figures mean nothing here: we report throughput only.

local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
dofile(here .. "report.lua")

local batch

function init(args)
  local depth = tonumber(args[1]) or error("usage: wrk -s pipeline.lua URL -- DEPTH")
  batch = string.rep(wrk.format("GET", "/"), depth)
end

function request()
  return batch
end
