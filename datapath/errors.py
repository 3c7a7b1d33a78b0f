"""Errors raised by the datapath. Messages reach Docker users: say what failed and why."""


class DatapathError(Exception):
    """A datapath operation failed; the message is meant for the user."""


class VethExistsError(DatapathError):
    """The host-side veth of an endpoint already exists."""
