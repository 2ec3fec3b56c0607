"""Serve the static page in web/ locally, cross-origin isolated so that ONNX Runtime Web runs WASM on
several threads (any static host works too; without these headers the page runs single-threaded).

    python web/serve.py                       # http://127.0.0.1:8000
    python web/serve.py --port 8080 --models other/models/

It is Python's http.server with two headers on every answer (Cross-Origin-Opener-Policy: same-origin,
Cross-Origin-Embedder-Policy: require-corp) and, with --models, models/ served from another folder.
For this machine only: it binds 127.0.0.1 unless --host says otherwise.
"""
import functools
import http.server
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ISOLATION = {"Cross-Origin-Opener-Policy": "same-origin", "Cross-Origin-Embedder-Policy": "require-corp"}


class Handler(http.server.SimpleHTTPRequestHandler):
    """Files of web/ (models/ from `models` where given), with the isolation headers if `isolate`."""

    def __init__(self, *args, models: Path | None = None, isolate: bool = True, quiet: bool = False, **kw):
        self.models, self.isolate, self.quiet = models, isolate, quiet
        super().__init__(*args, directory=str(HERE), **kw)

    def translate_path(self, path):
        local = super().translate_path(path)
        if self.models is not None and Path(local).is_relative_to(HERE / "models"):
            return str(self.models / Path(local).relative_to(HERE / "models"))
        return local

    def end_headers(self):
        if self.isolate:
            for name, value in ISOLATION.items():
                self.send_header(name, value)
        self.send_header("Cache-Control", "no-cache")
        super().end_headers()

    def log_message(self, format, *args):
        if not self.quiet:
            super().log_message(format, *args)


def server(host="127.0.0.1", port=0, models=None, isolate=True, quiet=False) -> http.server.ThreadingHTTPServer:
    """A server for web/ (port 0: a free one, see .server_address), not yet serving."""
    handler = functools.partial(Handler, models=None if models is None else Path(models).resolve(),
                                isolate=isolate, quiet=quiet)
    return http.server.ThreadingHTTPServer((host, port), handler)


def main(argv=None):
    from cli import command_parser
    p = command_parser("Serve web/ on this machine, cross-origin isolated (WASM threads).")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on")
    p.add_argument("--port", type=int, default=8000, help="port to listen on")
    p.add_argument("--models", help="folder served as models/ (default: web/models)")
    p.add_argument("--no-isolation", action="store_true", help="leave the two headers out, as a plain static "
                   "host does (the page then runs WASM single-threaded)")
    args = p.parse_args(argv)
    if not 0 <= args.port <= 65535:
        p.error(f"--port {args.port}: expected a port number from 0 to 65535")
    if args.models is not None and not Path(args.models).is_dir():
        p.error(f"--models {args.models}: no such folder")
    with server(args.host, args.port, args.models, not args.no_isolation) as httpd:
        host, port = httpd.server_address[:2]
        print(f"serving {HERE} on http://{host}:{port} (Ctrl-C stops)")
        try:
            httpd.serve_forever()
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(HERE.parent))
    from cli import run_command
    sys.exit(run_command(main))
