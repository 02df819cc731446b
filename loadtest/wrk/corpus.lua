-- GET every request of the corpus files WRK_CORPUS (space-separated; base64 DER, one per
-- line) in turn, percent-encoded as openssl sends them. Requests are formatted once.
dofile(os.getenv("WRK_LUA_DIR") .. "/common.lua")

local reqs = {}
for file in string.gmatch(assert(os.getenv("WRK_CORPUS"), "WRK_CORPUS is required"), "%S+") do
   for line in io.lines(file) do
      if #line > 0 then
         local p = line:gsub("%+", "%%2B"):gsub("/", "%%2F"):gsub("=", "%%3D")
         reqs[#reqs + 1] = wrk.format("GET", "/" .. p)
      end
   end
end
assert(#reqs > 0, "empty corpus")
local i = 0

function init(args)
   -- Threads start at different points of the corpus.
   i = math.random(#reqs) - 1
end

function request()
   i = i % #reqs + 1
   return reqs[i]
end
