"""The applications the packaged servers run in the scenarios (configuration, not servers).

- `wsgi` (gunicorn): `/hang` never returns (a handler stuck on a lock that is never
  released), `/slow?s=N` answers after N seconds, anything else at once.
- `asgi` (uvicorn): `/block` calls a blocking sleep inside the event loop, the classic
  async bug: the worker stops reading, closing and accepting; anything else at once.
"""

import threading
import time
from urllib.parse import parse_qs

NEVER = threading.Event()


def wsgi(environ, start_response):
    path = environ.get("PATH_INFO", "/")
    if path == "/hang":
        NEVER.wait()
    if path == "/slow":
        seconds = float(parse_qs(environ.get("QUERY_STRING", "")).get("s", ["3"])[0])
        time.sleep(seconds)
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok\n"]


async def asgi(scope, receive, send):
    if scope["type"] != "http":
        return
    if scope["path"] == "/block":
        time.sleep(3600)
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok\n"})
