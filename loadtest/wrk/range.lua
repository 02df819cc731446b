-- Random slices of one file: GET the URL's path with `Range: bytes=a-b`, a uniformly random
-- slice of SLICE_BYTES (default 65536) inside the first SIZE_BYTES (the file's length).
-- Responses are not read by Lua (a response() callback would copy every body into the Lua
-- state and cap the rate); crl-range-bench.sh checks the bytes per request instead.
dofile(os.getenv("WRK_LUA_DIR") .. "/common.lua")

local size = assert(tonumber(os.getenv("SIZE_BYTES")), "SIZE_BYTES is required")
local slice = tonumber(os.getenv("SLICE_BYTES") or "65536")
local counter = 0

function setup(thread)
   counter = counter + 1
   thread:set("seed", counter)
end

function init(args)
   math.randomseed(os.time() * 1000 + (seed or 0))
end

function request()
   local first = math.random(0, size - slice)
   return wrk.format("GET", nil, { ["Range"] = string.format("bytes=%d-%d", first, first + slice - 1) })
end
