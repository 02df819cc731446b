-- POST a new request for every call: the template WRK_BODY (an OCSPRequest with a 16-octet
-- nonce, from `openssl ocsp -nonce -reqout`) with its nonce replaced by 16 random octets.
dofile(os.getenv("WRK_LUA_DIR") .. "/common.lua")

local f = assert(io.open(assert(os.getenv("WRK_BODY"), "WRK_BODY is required"), "rb"))
local template = f:read("*a")
f:close()

-- id-pkix-ocsp-nonce (1.3.6.1.5.5.7.48.1.2), then extnValue OCTET STRING (18) holding an
-- OCTET STRING (16).
local marker = "\6\9\43\6\1\5\5\7\48\1\2\4\18\4\16"
local at = assert(template:find(marker, 1, true), "no 16-octet nonce in the template")
local head = template:sub(1, at + #marker - 1)
local tail = template:sub(at + #marker + 16)
local headers = { ["Content-Type"] = "application/ocsp-request" }
local path = wrk.path
local char, random = string.char, math.random

function init(args)
   math.randomseed(os.time())
end

function request()
   local nonce = char(random(0, 255), random(0, 255), random(0, 255), random(0, 255),
      random(0, 255), random(0, 255), random(0, 255), random(0, 255),
      random(0, 255), random(0, 255), random(0, 255), random(0, 255),
      random(0, 255), random(0, 255), random(0, 255), random(0, 255))
   return wrk.format("POST", path, headers, head .. nonce .. tail)
end
