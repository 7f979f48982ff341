"""Start the server: bind, announce the address, serve until SIGTERM/SIGINT, shut down cleanly.

`--port 0` binds a free port; the first line on stdout is then machine-readable JSON
({"event": "listening", "url": ..., "host": ..., "port": ...}) so an application that starts the server as
a child process can read where it listens. On SIGTERM uvicorn stops accepting connections and lets
in-flight requests finish for up to `shutdown_timeout` seconds; whatever still runs after that is
cancelled at its next token, the request log is closed, and the process exits with status 0.
"""
from __future__ import annotations

import ipaddress
import json
import signal
import socket
import sys
import threading


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_exposure(host: str, api_key, insecure: bool) -> None:
    """Binding beyond loopback without an API key must be asked for explicitly."""
    if not is_loopback(host) and not api_key and not insecure:
        raise ValueError(f"--host {host} exposes the server beyond this machine: pass --api-key KEY, or "
                         f"--insecure to serve without one")


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ValueError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def serve(server, host: str = "127.0.0.1", port: int = 8080, shutdown_timeout: float = 10.0,
          announce=sys.stdout) -> None:
    """Run `server` (an EdgeServer) on host:port until a signal; closes it on the way out."""
    import uvicorn

    sock = bind(host, port)
    real_port = sock.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    announce.write(json.dumps({"event": "listening", "url": f"http://{shown}:{real_port}/v1", "host": host,
                               "port": real_port}) + "\n")
    announce.flush()
    config = uvicorn.Config(server.app(), log_level="warning", timeout_graceful_shutdown=shutdown_timeout,
                            lifespan="off", access_log=False)
    if threading.current_thread() is threading.main_thread():
        # uvicorn handles SIGTERM/SIGINT while serving and re-raises them, to the handlers found before it
        # started, once it has shut down; a shutdown we completed is a normal exit, so those handlers do nothing.
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: None)
    try:
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        server.close()
        sock.close()
