"""create_app(): one Flask application for Docker's plugin protocol and the management API."""

import logging

from flask import Flask, Response, json, request
from werkzeug.exceptions import HTTPException

from driver.config import Config
from driver.control.plane import ControlPlane, DatapathError
from driver.errors import BadRequest, DriverError

from . import api, plugin, ui
from .metrics import Metrics, MetricsServer

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 1 << 20


def create_app(config: Config, datapath=None, watch_docker: bool = True) -> Flask:
    """Build and start the control plane. `datapath` defaults to the real kernel datapath;
    `watch_docker` starts the Docker events watcher that gives endpoints their identity."""
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    # Bound before the control plane starts: a taken port fails the start before any change.
    server = MetricsServer(config.metrics_address) if config.metrics_address else None
    ui_server = _bind_ui(config, server)
    try:
        plane = ControlPlane.open(config, datapath)
    except BaseException:
        for bound in (server, ui_server):
            if bound is not None:
                bound.close()
        raise
    metrics = Metrics(plane)
    if server is not None:
        metrics.serve(server)
    plane.on_close(metrics.close)
    if watch_docker:
        plane.watch_docker()
    app.extensions["pycilium"] = plane
    app.register_blueprint(plugin.bp)
    app.register_blueprint(api.bp)
    app.register_blueprint(ui.bp)
    if ui_server is not None:
        ui_server.start(app)
        plane.on_close(ui_server.close)
    metrics.install(app)
    app.register_error_handler(DriverError, _driver_error)
    app.register_error_handler(DatapathError, _datapath_error)
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(Exception, _unexpected_error)
    return app


def _bind_ui(config: Config, metrics_server: MetricsServer | None) -> ui.UiServer | None:
    """The service map's loopback server, bound like the metrics' (closing that one if this
    one cannot be bound)."""
    if not config.ui_address:
        return None
    try:
        return ui.UiServer(config.ui_address)
    except BaseException:
        if metrics_server is not None:
            metrics_server.close()
        raise


def _error(message: str, status: int) -> Response:
    return Response(json.dumps({"Err": message}), status=status, mimetype=plugin.CONTENT_TYPE)


def _driver_error(exc: DriverError) -> Response:
    # The plugin protocol knows 400 (bad body) and 500; the management API uses every status.
    use_own_status = isinstance(exc, BadRequest) or request.path.startswith(("/v1/", "/ui/"))
    status = exc.status if use_own_status else 500
    log.warning("%s failed: %s", request.path, exc)
    return _error(str(exc), status)


def _datapath_error(exc: DatapathError) -> Response:
    """The kernel refused something (a full map, a taken name): the message says what."""
    log.warning("%s failed: %s", request.path, exc)
    return _error(str(exc), 500)


def _http_error(exc: HTTPException) -> Response:
    return _error(f"{request.method} {request.path}: {exc.description}", exc.code or 500)


def _unexpected_error(exc: Exception) -> Response:
    log.exception("%s failed", request.path)
    return _error(f"{request.path.lstrip('/')}: {exc}", 500)
