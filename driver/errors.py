"""One error hierarchy for the control plane, rendered as {"Err": ...} by the app."""


class DriverError(Exception):
    """A request that could not be carried out; the message is shown to the Docker user."""

    status = 500


class BadRequest(DriverError):
    """The request body is empty, not JSON, or not the shape the call expects."""

    status = 400


class InvalidArgument(DriverError):
    """A well-formed request with an unusable value (a bad subnet, an address outside its pool)."""


class NotFound(DriverError):
    status = 404


class Conflict(DriverError):
    """The request collides with something that exists (an address in use, an overlapping pool)."""

    status = 409
