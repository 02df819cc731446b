-- One fixed request, prepared once: GET the URL's path, or, with WRK_BODY=file, POST the file
-- (application/ocsp-request) to it.
dofile(os.getenv("WRK_LUA_DIR") .. "/common.lua")

local body_file = os.getenv("WRK_BODY")
if body_file then
   local f = assert(io.open(body_file, "rb"))
   wrk.method = "POST"
   wrk.body = f:read("*a")
   f:close()
   wrk.headers["Content-Type"] = "application/ocsp-request"
end
