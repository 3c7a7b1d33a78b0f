"""Durable control-plane state in SQLite (WAL): pools, addresses, networks, endpoints.

One connection, used under the control plane's lock. Every change runs in a transaction
that either commits whole or leaves nothing behind.

Longer than ~300 lines because it is the one module that speaks SQL: the schema and its
check, the transaction and its error messages, and a short accessor per query for each of
the five tables; the rest of the control plane sees only the dataclasses below.
"""

import contextlib
import json
import logging
import os
import sqlite3
import time
from dataclasses import dataclass, field

from datapath.abi import INIT_ID
from driver.errors import DriverError

log = logging.getLogger(__name__)

# 2: networks.outbound (a version 1 database gains it, as "masquerade", when opened)
SCHEMA_VERSION = 2
# How long a write waits for another process's lock on the database: well below the 30 s
# Docker gives a managed plugin's call, so Docker gets our error, not its own timeout.
BUSY_TIMEOUT_MS = 5000
BUSY_CODES = (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS pools (
    pool_id TEXT PRIMARY KEY,
    cidr TEXT NOT NULL,
    alloc_range TEXT NOT NULL,
    version INTEGER NOT NULL,
    gateway TEXT,
    shared INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS addresses (
    address TEXT PRIMARY KEY,
    alloc_range TEXT NOT NULL,
    owner TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS addresses_by_range ON addresses (alloc_range);
CREATE TABLE IF NOT EXISTS networks (
    network_id TEXT PRIMARY KEY,
    pool4 TEXT,
    gateway4 TEXT,
    pool6 TEXT,
    gateway6 TEXT,
    ipv6_by_driver INTEGER NOT NULL,
    mtu INTEGER NOT NULL,
    owned_routes TEXT NOT NULL,
    name TEXT,
    outbound TEXT NOT NULL DEFAULT 'masquerade'
);
CREATE TABLE IF NOT EXISTS endpoints (
    endpoint_id TEXT PRIMARY KEY,
    network_id TEXT NOT NULL,
    numeric_id INTEGER NOT NULL UNIQUE,
    host_ifname TEXT NOT NULL UNIQUE,
    peer_ifname TEXT NOT NULL,
    mac TEXT NOT NULL,
    ipv6 TEXT NOT NULL,
    ipv4 TEXT,
    router6 TEXT NOT NULL,
    router4 TEXT,
    mtu INTEGER NOT NULL,
    returned TEXT NOT NULL,
    sandbox_key TEXT,
    container_id TEXT,
    container_name TEXT,
    labels TEXT NOT NULL DEFAULT '{}',
    identity INTEGER NOT NULL,
    ports TEXT NOT NULL DEFAULT '[]'
);
CREATE TABLE IF NOT EXISTS identities (
    identity INTEGER PRIMARY KEY,
    kind TEXT NOT NULL,
    key TEXT NOT NULL UNIQUE,
    labels TEXT NOT NULL
);
"""


@dataclass(frozen=True)
class Pool:
    pool_id: str
    cidr: str
    alloc_range: str
    version: int
    gateway: str | None
    shared: bool


@dataclass(frozen=True)
class Network:
    network_id: str
    pool4: str | None
    gateway4: str | None
    pool6: str | None
    gateway6: str | None
    ipv6_by_driver: bool
    mtu: int
    owned_routes: tuple[str, ...]
    name: str | None = None
    outbound: str = "masquerade"  # a datapath.Outbound value


@dataclass(frozen=True)
class Endpoint:
    endpoint_id: str
    network_id: str
    numeric_id: int
    host_ifname: str
    peer_ifname: str
    mac: str
    ipv6: str
    ipv4: str | None
    router6: str
    router4: str | None
    mtu: int
    # The Interface fields this driver filled in for Docker (replayed verbatim on a repeated call).
    returned: dict
    sandbox_key: str | None = None
    container_id: str | None = None
    container_name: str | None = None
    labels: dict = field(default_factory=dict)
    identity: int = INIT_ID
    ports: list = field(default_factory=list)


@dataclass(frozen=True)
class IdentityRecord:
    """A row of the identities table: a number allocated to labels or a prefix. The policy
    engine sees identities as driver.control.policy.Identity (number and labels only)."""

    identity: int
    kind: str  # "endpoint" (labels of containers) or "cidr" (a prefix named by policy)
    key: str
    labels: dict


class StateError(DriverError):
    pass


class Store:
    def __init__(self, path: str):
        self.path = path
        self._db: sqlite3.Connection | None = None
        # Until then, a write tries once without waiting: another one just waited in vain.
        self._locked_until = 0.0

    def open(self) -> None:
        os.makedirs(os.path.dirname(self.path), mode=0o700, exist_ok=True)
        # Root's alone; SQLite gives its -wal and -shm files the database file's mode.
        os.close(os.open(self.path, os.O_CREAT | os.O_RDWR, 0o600))
        os.chmod(self.path, 0o600)
        db = None
        try:
            db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            db.row_factory = sqlite3.Row
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise StateError(
                    f"state database {self.path} has schema {version}, newer than this driver"
                )
            db.executescript(SCHEMA)
            _migrate(db, version)
            db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            _check_layout(db, self.path)
        except (sqlite3.Error, StateError) as exc:
            if db is not None:
                db.close()
            if isinstance(exc, StateError):
                raise
            raise StateError(f"cannot open state database {self.path}: {exc}") from exc
        self._db = db

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    @contextlib.contextmanager
    def transaction(self):
        """All writes inside commit together; an exception rolls every one of them back."""
        db = self._db
        try:
            self._begin()
        except sqlite3.Error as exc:
            raise self._error(exc) from exc
        try:
            yield self
            db.execute("COMMIT")
        except BaseException as exc:
            self._rollback()
            if isinstance(exc, sqlite3.Error):
                raise self._error(exc) from exc
            raise

    def _begin(self) -> None:
        """BEGIN IMMEDIATE, waiting up to the busy timeout for another process's lock. Calls
        queued behind one that waited in vain try once without waiting: else the n-th of
        them would answer Docker only after n timeouts."""
        hurry = time.monotonic() < self._locked_until
        if hurry:
            self._db.execute("PRAGMA busy_timeout=0")
        try:
            self._db.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            if _primary_code(exc) in BUSY_CODES:
                self._locked_until = time.monotonic() + BUSY_TIMEOUT_MS / 1000
            raise
        finally:
            if hurry:
                self._db.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")

    def _rollback(self) -> None:
        # SQLite may have rolled back itself (a full disk does): a second ROLLBACK would
        # fail and hide the error that matters.
        if not self._db.in_transaction:
            return
        try:
            self._db.execute("ROLLBACK")
        except sqlite3.Error as exc:
            log.warning("rollback of state database %s failed: %s", self.path, exc)

    def _error(self, exc: sqlite3.Error) -> "StateError":
        return StateError(_error_message(exc, self.path))

    def _write(self, sql: str, args=()) -> sqlite3.Cursor:
        try:
            return self._db.execute(sql, args)
        except sqlite3.Error as exc:
            raise self._error(exc) from exc

    def _rows(self, sql: str, args=()) -> list[sqlite3.Row]:
        try:
            return self._db.execute(sql, args).fetchall()
        except sqlite3.Error as exc:
            raise self._error(exc) from exc

    # meta

    def get_meta(self, key: str) -> str | None:
        rows = self._rows("SELECT value FROM meta WHERE key = ?", (key,))
        return rows[0]["value"] if rows else None

    def set_meta(self, key: str, value: str) -> None:
        self._write("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))

    def delete_meta(self, key: str) -> None:
        self._write("DELETE FROM meta WHERE key = ?", (key,))

    def meta_with_prefix(self, prefix: str) -> list[tuple[str, str]]:
        rows = self._rows(
            "SELECT key, value FROM meta WHERE substr(key, 1, ?) = ? ORDER BY key",
            (len(prefix), prefix),
        )
        return [(r["key"], r["value"]) for r in rows]

    # pools and addresses

    def add_pool(self, pool: Pool) -> None:
        self._write(
            "INSERT INTO pools VALUES (?, ?, ?, ?, ?, ?)",
            (pool.pool_id, pool.cidr, pool.alloc_range, pool.version, pool.gateway, pool.shared),
        )

    def get_pool(self, pool_id: str) -> Pool | None:
        rows = self._rows("SELECT * FROM pools WHERE pool_id = ?", (pool_id,))
        return _pool(rows[0]) if rows else None

    def pools(self) -> list[Pool]:
        return [_pool(r) for r in self._rows("SELECT * FROM pools ORDER BY pool_id")]

    def delete_pool(self, pool_id: str) -> None:
        self._write("DELETE FROM addresses WHERE owner = ?", ("pool:" + pool_id,))
        self._write("DELETE FROM pools WHERE pool_id = ?", (pool_id,))

    def set_pool_gateway(self, pool_id: str, gateway: str) -> None:
        self._write("UPDATE pools SET gateway = ? WHERE pool_id = ?", (gateway, pool_id))

    def add_address(self, address: str, alloc_range: str, owner: str) -> None:
        self._write("INSERT INTO addresses VALUES (?, ?, ?)", (address, alloc_range, owner))

    def address_owner(self, address: str) -> str | None:
        rows = self._rows("SELECT owner FROM addresses WHERE address = ?", (address,))
        return rows[0]["owner"] if rows else None

    def used_addresses(self, alloc_range: str) -> set[str]:
        rows = self._rows("SELECT address FROM addresses WHERE alloc_range = ?", (alloc_range,))
        return {r["address"] for r in rows}

    def delete_address(self, address: str) -> None:
        self._write("DELETE FROM addresses WHERE address = ?", (address,))

    def addresses(self) -> list[dict]:
        rows = self._rows("SELECT * FROM addresses ORDER BY alloc_range, address")
        return [dict(r) for r in rows]

    def address_count(self) -> int:
        return self._rows("SELECT COUNT(*) AS n FROM addresses")[0]["n"]

    # networks

    def add_network(self, net: Network) -> None:
        self._write(
            "INSERT INTO networks VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                net.network_id,
                net.pool4,
                net.gateway4,
                net.pool6,
                net.gateway6,
                net.ipv6_by_driver,
                net.mtu,
                json.dumps(list(net.owned_routes)),
                net.name,
                net.outbound,
            ),
        )

    def get_network(self, network_id: str) -> Network | None:
        rows = self._rows("SELECT * FROM networks WHERE network_id = ?", (network_id,))
        return _network(rows[0]) if rows else None

    def networks(self) -> list[Network]:
        return [_network(r) for r in self._rows("SELECT * FROM networks ORDER BY network_id")]

    def set_network_name(self, network_id: str, name: str) -> None:
        self._write("UPDATE networks SET name = ? WHERE network_id = ?", (name, network_id))

    def delete_network(self, network_id: str) -> None:
        self._write("DELETE FROM networks WHERE network_id = ?", (network_id,))

    # endpoints

    def add_endpoint(self, ep: Endpoint) -> None:
        self._write(
            "INSERT INTO endpoints VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                ep.endpoint_id,
                ep.network_id,
                ep.numeric_id,
                ep.host_ifname,
                ep.peer_ifname,
                ep.mac,
                ep.ipv6,
                ep.ipv4,
                ep.router6,
                ep.router4,
                ep.mtu,
                json.dumps(ep.returned),
                ep.sandbox_key,
                ep.container_id,
                ep.container_name,
                json.dumps(ep.labels),
                ep.identity,
                json.dumps(ep.ports),
            ),
        )

    def get_endpoint(self, endpoint_id: str) -> Endpoint | None:
        rows = self._rows("SELECT * FROM endpoints WHERE endpoint_id = ?", (endpoint_id,))
        return _endpoint(rows[0]) if rows else None

    def endpoints(self, network_id: str | None = None) -> list[Endpoint]:
        if network_id is None:
            rows = self._rows("SELECT * FROM endpoints ORDER BY numeric_id")
        else:
            rows = self._rows(
                "SELECT * FROM endpoints WHERE network_id = ? ORDER BY numeric_id", (network_id,)
            )
        return [_endpoint(r) for r in rows]

    def set_sandbox(self, endpoint_id: str, sandbox_key: str | None) -> None:
        self._write(
            "UPDATE endpoints SET sandbox_key = ? WHERE endpoint_id = ?", (sandbox_key, endpoint_id)
        )

    def set_container(
        self, endpoint_id: str, container_id: str, name: str, labels: dict, identity: int
    ) -> None:
        self._write(
            "UPDATE endpoints SET container_id = ?, container_name = ?, labels = ?, identity = ?"
            " WHERE endpoint_id = ?",
            (container_id, name, json.dumps(labels), identity, endpoint_id),
        )

    def set_ports(self, endpoint_id: str, ports: list[dict]) -> None:
        self._write(
            "UPDATE endpoints SET ports = ? WHERE endpoint_id = ?", (json.dumps(ports), endpoint_id)
        )

    def delete_endpoint(self, endpoint_id: str) -> None:
        self._write("DELETE FROM endpoints WHERE endpoint_id = ?", (endpoint_id,))

    def used_numeric_ids(self) -> set[int]:
        return {r["numeric_id"] for r in self._rows("SELECT numeric_id FROM endpoints")}

    # identities

    def add_identity(self, identity: IdentityRecord) -> None:
        self._write(
            "INSERT INTO identities VALUES (?, ?, ?, ?)",
            (identity.identity, identity.kind, identity.key, json.dumps(identity.labels)),
        )

    def identity_by_key(self, key: str) -> IdentityRecord | None:
        rows = self._rows("SELECT * FROM identities WHERE key = ?", (key,))
        return _identity(rows[0]) if rows else None

    def get_identity(self, identity: int) -> IdentityRecord | None:
        rows = self._rows("SELECT * FROM identities WHERE identity = ?", (identity,))
        return _identity(rows[0]) if rows else None

    def identities(self, kind: str | None = None) -> list[IdentityRecord]:
        if kind is None:
            rows = self._rows("SELECT * FROM identities ORDER BY identity")
        else:
            rows = self._rows("SELECT * FROM identities WHERE kind = ? ORDER BY identity", (kind,))
        return [_identity(r) for r in rows]

    def delete_identity(self, identity: int) -> None:
        self._write("DELETE FROM identities WHERE identity = ?", (identity,))

    def unreferenced_identities(self) -> list[int]:
        rows = self._rows(
            "SELECT identity FROM identities WHERE kind = 'endpoint' AND identity NOT IN "
            "(SELECT identity FROM endpoints)"
        )
        return [r["identity"] for r in rows]


def _primary_code(exc: sqlite3.Error) -> int:
    # Errors raised by the sqlite3 module itself (a closed connection) carry no SQLite code.
    return (getattr(exc, "sqlite_errorcode", None) or 0) & 0xFF


def _error_message(exc: sqlite3.Error, path: str) -> str:
    """What a Docker user reads when the state database refuses: the cause and what to do."""
    code = _primary_code(exc)
    if code in BUSY_CODES:
        return (
            f"state database {path} is locked by another process (held for "
            f"{BUSY_TIMEOUT_MS / 1000:g} s or more); retry when it is released"
        )
    if code == sqlite3.SQLITE_FULL:
        return f"no space left on device for state database {path}; free space and retry"
    if code == sqlite3.SQLITE_IOERR:
        return f"state database {path}: disk I/O error ({exc.sqlite_errorname})"
    return f"state database {path}: {exc}"


def _migrate(db: sqlite3.Connection, version: int) -> None:
    """Bring a database of an older schema version to this one (a new one has it all)."""
    if version == 1 and "outbound" not in _columns(db)["networks"]:
        db.execute("ALTER TABLE networks ADD COLUMN outbound TEXT NOT NULL DEFAULT 'masquerade'")


def _columns(db: sqlite3.Connection) -> dict[str, list[str]]:
    tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
    return {t: [c[1] for c in db.execute(f"PRAGMA table_info({t})")] for t in sorted(tables)}


def _check_layout(db: sqlite3.Connection, path: str) -> None:
    """Refuse at start, not on the first request, a database whose tables differ from
    this driver's (one written by a development build of the same schema version)."""
    reference = sqlite3.connect(":memory:")
    try:
        reference.executescript(SCHEMA)
        expected = _columns(reference)
    finally:
        reference.close()
    found = _columns(db)
    for table, columns in expected.items():
        if found.get(table) != columns:
            raise StateError(
                f"state database {path}: table {table} has columns {found.get(table)}, this "
                f"driver expects {columns}; move the file away to start afresh"
            )


def _pool(row: sqlite3.Row) -> Pool:
    return Pool(
        pool_id=row["pool_id"],
        cidr=row["cidr"],
        alloc_range=row["alloc_range"],
        version=row["version"],
        gateway=row["gateway"],
        shared=bool(row["shared"]),
    )


def _network(row: sqlite3.Row) -> Network:
    return Network(
        network_id=row["network_id"],
        pool4=row["pool4"],
        gateway4=row["gateway4"],
        pool6=row["pool6"],
        gateway6=row["gateway6"],
        ipv6_by_driver=bool(row["ipv6_by_driver"]),
        mtu=row["mtu"],
        owned_routes=tuple(json.loads(row["owned_routes"])),
        name=row["name"],
        outbound=row["outbound"],
    )


def _endpoint(row: sqlite3.Row) -> Endpoint:
    return Endpoint(
        endpoint_id=row["endpoint_id"],
        network_id=row["network_id"],
        numeric_id=row["numeric_id"],
        host_ifname=row["host_ifname"],
        peer_ifname=row["peer_ifname"],
        mac=row["mac"],
        ipv6=row["ipv6"],
        ipv4=row["ipv4"],
        router6=row["router6"],
        router4=row["router4"],
        mtu=row["mtu"],
        returned=json.loads(row["returned"]),
        sandbox_key=row["sandbox_key"],
        container_id=row["container_id"],
        container_name=row["container_name"],
        labels=json.loads(row["labels"]),
        identity=row["identity"],
        ports=json.loads(row["ports"]),
    )


def _identity(row: sqlite3.Row) -> IdentityRecord:
    return IdentityRecord(
        identity=row["identity"], kind=row["kind"], key=row["key"], labels=json.loads(row["labels"])
    )
