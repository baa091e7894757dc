"""``/metrics`` over HTTP, from a thread of the supervisor; nothing else is served."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry

__all__ = ["serve_metrics"]


def serve_metrics(registry: CollectorRegistry, host: str, port: int) -> Any:
    """Serve ``registry`` at ``http://host:port/metrics`` from a thread; nothing else is served.

    Returns the server (``server_port``, ``shutdown()``, ``server_close()``).
    A port in use or an unusable host is a ConfigError naming the setting.
    """
    import socket
    import threading
    from wsgiref.simple_server import WSGIRequestHandler, make_server

    from prometheus_client import make_wsgi_app
    from prometheus_client.exposition import ThreadingWSGIServer

    from collector.exceptions import ConfigError

    metrics_app = make_wsgi_app(registry)

    def app(environ: dict[str, Any], start_response: Any) -> Any:
        if environ.get("PATH_INFO") != "/metrics":
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [b"only /metrics is served here\n"]
        if environ.get("REQUEST_METHOD") not in ("GET", "HEAD"):
            start_response("405 Method Not Allowed", [("Allow", "GET, HEAD")])
            return [b""]
        return metrics_app(environ, start_response)

    class Quiet(WSGIRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

    try:
        server = make_server(host, port, app, ThreadingWSGIServer, handler_class=Quiet)
    except socket.gaierror as exc:
        raise ConfigError(
            "COLLECTOR_METRICS_HOST", f"{host!r} is not an address here ({exc.strerror})"
        ) from None
    except OSError as exc:
        raise ConfigError(
            "COLLECTOR_METRICS_PORT", f"cannot listen on {host}:{port}: {exc.strerror}"
        ) from None
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    return server
