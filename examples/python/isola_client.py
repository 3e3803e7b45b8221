#!/usr/bin/env python3
"""A client for `isola serve`, using only the standard library.

isola runs as a child process speaking JSON-RPC 2.0 over stdin/stdout, one message per line
(the README has the protocol). The client starts with `initialize`, declaring the host
functions it serves to plugins; when a plugin calls one, isola sends a `host` request and
this client answers it from Python. Requests may be in flight concurrently; answers are
matched by id, and lifecycle events (plugin loaded, reloaded, ...) arrive as `event`
notifications.

    python3 examples/python/isola_client.py plugins            # uses `isola` from PATH
    ISOLA=target/debug/isola python3 examples/python/isola_client.py plugins
"""

import itertools
import json
import os
import subprocess
import sys
import threading
from concurrent.futures import Future

PROTOCOL_VERSION = 1


class IsolaError(Exception):
    """An error answered by isola; `code` is isola's code (TIMEOUT, JS_ERROR, ...)."""

    def __init__(self, error):
        data = error.get("data") or {}
        self.code = data.get("code", error.get("code"))
        self.data = data
        super().__init__(error.get("message"))


class HostError(Exception):
    """Raise it in a host function to give the plugin a code (`e.hostCode`) and data (`e.data`)."""

    def __init__(self, message, code=None, data=None):
        super().__init__(message)
        self.code = code
        self.data = data


class Isola:
    """One `isola serve` process. `host` maps names to Python functions served to plugins:
    `{"lookup": fn}` or `{"lookup": (fn, {"async": False, "permission": "users"})}`."""

    def __init__(self, plugin_dir, isola="isola", host=None, values=None, policy=None, watch=False, on_event=None, extra_args=()):
        args = [isola, *extra_args] + ["serve", plugin_dir] + (["--watch"] if watch else [])
        self._proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)
        self._ids = itertools.count(1)
        self._pending = {}
        self._lock = threading.Lock()
        self._on_event = on_event or (lambda event: None)
        self._host = {}
        functions = []
        for name, entry in (host or {}).items():
            fn, options = entry if isinstance(entry, tuple) else (entry, {})
            self._host[name] = fn
            functions.append({"name": name, **options})
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.info = self.request(
            "initialize",
            {
                "protocolVersion": PROTOCOL_VERSION,
                "clientInfo": {"name": "isola_client.py"},
                "host": {"functions": functions, "values": [{"name": k, "value": v} for k, v in (values or {}).items()]},
                "policy": policy or {},
            },
        ).result()

    def _send(self, msg):
        with self._lock:
            if self._proc.stdin.closed:  # a host function answering after close()
                return
            self._proc.stdin.write(json.dumps(msg) + "\n")
            self._proc.stdin.flush()

    def _read(self):
        for line in self._proc.stdout:
            msg = json.loads(line)
            if isinstance(msg, list):  # a batch's replies
                for m in msg:
                    self._settle(m)
            elif msg.get("method") == "host":
                # Answered on a thread of its own, so that a slow host function holds up
                # nothing else.
                threading.Thread(target=self._serve_host, args=(msg,), daemon=True).start()
            elif "id" not in msg:
                if msg.get("method") == "event":
                    self._on_event(msg.get("params"))
            else:
                self._settle(msg)

    def _settle(self, msg):
        with self._lock:
            future = self._pending.pop(msg.get("id"), None)
        if future is None:
            return
        if "error" in msg:
            future.set_exception(IsolaError(msg["error"]))
        else:
            future.set_result(msg.get("result"))

    def _serve_host(self, msg):
        params = msg["params"]
        try:
            result = self._host[params["name"]](*params["args"])
            reply = {"jsonrpc": "2.0", "id": msg["id"], "result": result}
        except HostError as e:
            error = {"code": e.code if e.code is not None else -32000, "message": str(e)}
            if e.data is not None:
                error["data"] = e.data
            reply = {"jsonrpc": "2.0", "id": msg["id"], "error": error}
        except Exception as e:  # any other failure reaches the plugin as its message
            reply = {"jsonrpc": "2.0", "id": msg["id"], "error": {"code": -32000, "message": f"{type(e).__name__}: {e}"}}
        self._send(reply)

    def request(self, method, params=None):
        """Sends a request and returns a Future for its result."""
        request_id = next(self._ids)
        future = Future()
        with self._lock:
            self._pending[request_id] = future
        self._send({"jsonrpc": "2.0", "id": request_id, "method": method, "params": params})
        return future

    def call(self, plugin, hook, *args, timeout_ms=None):
        params = {"plugin": plugin, "hook": hook, "args": list(args)}
        if timeout_ms is not None:
            params["timeoutMs"] = timeout_ms
        return self.request("call", params).result()

    def close(self):
        with self._lock:
            self._proc.stdin.close()
        self._proc.wait()
        # The reader ends at isola's last line; waiting for it keeps a daemon thread from
        # printing an event while the interpreter shuts down.
        self._reader.join(timeout=10)


USERS = {1: ("Ada", "London"), 2: ("Grace", "Arlington"), 3: ("Linus", "Helsinki")}


def fetch_user(user_id):
    """Served to plugins as the async `host.fetchUser(id)` (it needs the `users` permission)."""
    if user_id not in USERS:
        raise HostError(f"no user with id {user_id}", code="NOT_FOUND")
    name, city = USERS[user_id]
    return {"id": user_id, "name": name, "city": city}


_print_lock = threading.Lock()


def say(*parts):
    """print(), one line at a time: host functions run on threads of their own and events on
    the reader thread, and print() from several threads at once can interleave its pieces
    (seen: "plugin says:event: greeting Ada")."""
    with _print_lock:
        print(*parts, flush=True)


def main():
    plugin_dir = sys.argv[1] if len(sys.argv) > 1 else "plugins"
    client = Isola(
        plugin_dir,
        isola=os.environ.get("ISOLA", "isola"),
        host={
            "log": (lambda msg: say("plugin says:", msg), {"async": False}),
            "fetchUser": (fetch_user, {"permission": "users"}),
        },
        values={"config": {"app": "python-host", "version": "1.0"}},
        on_event=lambda e: say("event:", e),
    )
    say("isola", client.info["serverInfo"]["version"], "loaded", [p["id"] for p in client.info["plugins"]])
    say(client.call("greeter", "greet", "Ada"))
    # Several requests in flight at once; each Future gets its own answer.
    futures = [client.request("call", {"plugin": "weather", "hook": "report", "args": [i]}) for i in (1, 2, 3)]
    say([f.result()["forecast"] for f in futures])
    try:
        client.call("weather", "report", 9)
    except IsolaError as e:
        say("error:", e.code, e)
    try:
        client.call("greeter", "missing")
    except IsolaError as e:
        say("error:", e.code)
    report = client.request("dispatch", {"event": "chat", "payload": {"user": "ada", "text": "hello :)"}}).result()
    say("chat payload after the chain:", report["payload"])
    client.close()


if __name__ == "__main__":
    main()
