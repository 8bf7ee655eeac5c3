-- A browser's page load: the paths given as the script's arguments (`wrk ... URL -- / /static/app.css ...`),
-- asked for in turn, each with the headers Firefox sends for that kind of resource: its User-Agent, an Accept
-- line per kind, the languages and encodings it takes, the page as Referer, a session cookie and two
-- analytics cookies, the Sec-Fetch-* and Priority lines. 12 to 14 header lines a request, Host included, in
-- the order wrk.format gives them (a Lua table's, not Firefox's: no server here depends on the order).
-- Every request is built once, in init(): request() only hands out the next one, so wrk's cost per request
-- stays what it is in the other scenarios.

local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
dofile(here .. "report.lua")

local USER_AGENT = "Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0"
local COOKIE = "session=7f3c9a1e5b2d4c8f9e0a6b3d2c1f4e5a; _ga=GA1.1.1843077385.1733580115;"
  .. " _ga_Q4TR3K9XWZ=GS1.1.1733580115.3.1.1733580342.0.0.0"

-- What differs by kind of resource, as Firefox 133 sends it.
local KINDS = {
  document = {
    Accept = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
    ["Sec-Fetch-Dest"] = "document", ["Sec-Fetch-Mode"] = "navigate", ["Sec-Fetch-Site"] = "none",
    ["Sec-Fetch-User"] = "?1", ["Upgrade-Insecure-Requests"] = "1", Priority = "u=0, i",
    ["Cache-Control"] = "max-age=0", -- a reload: the page is asked for again, its assets may be cached
  },
  style = {
    Accept = "text/css,*/*;q=0.1",
    ["Sec-Fetch-Dest"] = "style", ["Sec-Fetch-Mode"] = "no-cors", ["Sec-Fetch-Site"] = "same-origin",
    Priority = "u=2",
  },
  script = {
    Accept = "*/*",
    ["Sec-Fetch-Dest"] = "script", ["Sec-Fetch-Mode"] = "no-cors", ["Sec-Fetch-Site"] = "same-origin",
    Priority = "u=2",
  },
  image = {
    Accept = "image/avif,image/webp,image/png,image/svg+xml,image/*;q=0.8,*/*;q=0.5",
    ["Sec-Fetch-Dest"] = "image", ["Sec-Fetch-Mode"] = "no-cors", ["Sec-Fetch-Site"] = "same-origin",
    Priority = "u=5, i",
  },
  fetch = { -- the page's script asking for data: fetch("/users/42")
    Accept = "application/json",
    ["Sec-Fetch-Dest"] = "empty", ["Sec-Fetch-Mode"] = "cors", ["Sec-Fetch-Site"] = "same-origin",
    Priority = "u=4",
  },
}

local function kind_of(path)
  if path == "/" then return "document" end
  local extension = path:match("%.(%w+)$")
  if extension == "css" then return "style" end
  if extension == "js" then return "script" end
  if extension then return "image" end
  return "fetch"
end

local requests = {}
local count = 0

function init(args)
  if #args == 0 then error("usage: wrk -s browser.lua URL -- PATH...") end
  local page = string.format("%s://%s:%s/", wrk.scheme, wrk.host, wrk.port)
  for _, path in ipairs(args) do
    local kind = kind_of(path)
    local headers = {
      ["User-Agent"] = USER_AGENT,
      ["Accept-Language"] = "en-US,en;q=0.5",
      ["Accept-Encoding"] = "gzip, deflate, br, zstd",
      Connection = "keep-alive",
      Cookie = COOKIE,
      Referer = kind ~= "document" and page or nil,
    }
    for name, value in pairs(KINDS[kind]) do headers[name] = value end
    requests[#requests + 1] = wrk.format("GET", path, headers)
  end
end

function request()
  count = count % #requests + 1
  return requests[count]
end
