"""The service map page: GET /ui on the app's sockets and, if configured, on a loopback TCP
address of its own (which answers the page and the two read-only API calls it makes).

The page (driver/server/ui/) is plain HTML and JavaScript, served as files: no build step.
It draws with cytoscape.js, which setup fetches into --ui-assets (driver/server/uiassets.py)
and this serves at /ui/vendor/cytoscape.min.js. It polls GET /v1/servicemap every second
rather than holding a stream: a stream would keep one of the management socket's few
request threads for as long as a browser tab stays open.
"""

from ipaddress import ip_address
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from flask import Blueprint, current_app, redirect, send_file, send_from_directory

from driver.errors import NotFound

from . import uiassets
from .metrics import MetricsServer

PAGES = Path(__file__).parent / "ui"
# What the loopback TCP address answers: the page, its files and the data it reads.
SERVED = ("/ui", "/v1/servicemap", "/v1/flows")

bp = Blueprint("ui", __name__, url_prefix="/ui")


@bp.get("")
def root():
    return redirect("/ui/", code=302)


@bp.get("/")
def index():
    return send_from_directory(PAGES, "index.html")


@bp.get("/vendor/cytoscape.min.js")
def cytoscape():
    path = uiassets.path_in(current_app.extensions["pycilium"].config.ui_assets)
    if not path.is_file():
        raise NotFound(
            f"{path} is missing: fetch it with `python -m driver.server.uiassets {path.parent}` "
            "(scripts/setup-host.sh does)"
        )
    return send_file(path, mimetype="text/javascript", max_age=86400)


@bp.get("/<name>")
def page_file(name):
    return send_from_directory(PAGES, name)


class UiServer(MetricsServer):
    """The page on a loopback port, like the metrics: never the rest of the API."""

    what = "the service map"
    path = "/ui/"

    @staticmethod
    def only_served(app):
        return _only_ui(app)


def _only_ui(app):
    def served(environ, start_response):
        path = environ.get("PATH_INFO", "")
        read = environ.get("REQUEST_METHOD") in ("GET", "HEAD")
        if not read or not any(path == p or path.startswith(p + "/") for p in SERVED):
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [b"only the service map (/ui/) is served here\n"]
        if not _loopback_host(environ.get("HTTP_HOST", "")):
            # A page of another site whose name was made to resolve to 127.0.0.1 (DNS
            # rebinding) would name its own host here: it reads nothing.
            start_response("403 Forbidden", [("Content-Type", "text/plain")])
            return [b"the service map answers only a loopback address or localhost\n"]
        if "follow" in parse_qs(environ.get("QUERY_STRING", "")):
            # The page polls; a stream per request would hold a thread each, unbounded.
            start_response("400 Bad Request", [("Content-Type", "text/plain")])
            return [b"follow is served on the API socket only (cilium observe --follow)\n"]
        return app(environ, start_response)

    return served


def _loopback_host(host: str) -> bool:
    name = urlsplit(f"//{host}").hostname or ""
    if name == "localhost":
        return True
    try:
        return ip_address(name).is_loopback
    except ValueError:
        return False
