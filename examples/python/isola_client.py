#!/usr/bin/env python3
"""A minimal client for `isola serve`, using only the standard library.

isola runs as a child process speaking JSON-RPC 2.0 over stdin/stdout, one message per line.
Requests may be in flight concurrently; answers are matched to requests by id, and lifecycle
events (plugin loaded, reloaded, ...) arrive as `event` notifications.

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


class IsolaError(Exception):
    """An error answered by isola; `code` is isola's code (TIMEOUT, JS_ERROR, ...)."""

    def __init__(self, error):
        data = error.get("data") or {}
        self.code = data.get("code", error.get("code"))
        self.data = data
        super().__init__(error.get("message"))


class Isola:
    def __init__(self, plugin_dir, isola="isola", watch=False, on_event=None):
        args = [isola, "serve", plugin_dir] + (["--watch"] if watch else [])
        self._proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)
        self._ids = itertools.count(1)
        self._pending = {}
        self._lock = threading.Lock()
        self._on_event = on_event or (lambda event: None)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self):
        for line in self._proc.stdout:
            msg = json.loads(line)
            if "id" not in msg:
                self._on_event(msg.get("params"))
                continue
            with self._lock:
                future = self._pending.pop(msg["id"], None)
            if future is None:
                continue
            if "error" in msg:
                future.set_exception(IsolaError(msg["error"]))
            else:
                future.set_result(msg.get("result"))

    def request(self, method, params=None):
        """Sends a request and returns a Future for its result."""
        request_id = next(self._ids)
        future = Future()
        with self._lock:
            self._pending[request_id] = future
            self._proc.stdin.write(json.dumps({"jsonrpc": "2.0", "id": request_id, "method": method, "params": params}) + "\n")
            self._proc.stdin.flush()
        return future

    def call(self, plugin, hook, *args, timeout_ms=None):
        params = {"plugin": plugin, "hook": hook, "args": list(args)}
        if timeout_ms is not None:
            params["timeoutMs"] = timeout_ms
        return self.request("call", params).result()

    def close(self):
        self._proc.stdin.close()
        self._proc.wait()


def main():
    plugin_dir = sys.argv[1] if len(sys.argv) > 1 else "plugins"
    client = Isola(plugin_dir, isola=os.environ.get("ISOLA", "isola"), on_event=lambda e: print("event:", e))
    print(client.call("greeter", "greet", "Ada"))
    # Several requests in flight at once; each Future gets its own answer.
    futures = [client.request("call", {"plugin": "weather", "hook": "report", "args": [i]}) for i in (1, 2, 3)]
    print([f.result()["forecast"] for f in futures])
    try:
        client.call("greeter", "missing")
    except IsolaError as e:
        print("error:", e.code)
    client.close()


if __name__ == "__main__":
    main()
