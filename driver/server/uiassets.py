"""The service map's one third-party file, cytoscape.js, fetched at setup time.

Not in the repository: scripts/setup-host.sh runs ``python -m driver.server.uiassets DIR``,
which downloads this pinned version's tarball from the npm registry, checks it against the
registry's sha512 integrity string, and keeps the library's minified build in DIR (the
driver's --ui-assets), where the driver serves it at /ui/vendor/cytoscape.min.js.
cytoscape.js: a well-kept graph library (MIT, maintained since 2011, no dependencies, one
file, no build step), with the layouts and tap events the map needs.
"""

import base64
import hashlib
import io
import sys
import tarfile
import urllib.request
from pathlib import Path

VERSION = "3.35.0"
TARBALL = f"https://registry.npmjs.org/cytoscape/-/cytoscape-{VERSION}.tgz"
INTEGRITY = (  # `npm view cytoscape@3.35.0 dist.integrity`
    "sha512-sMvBIXiGMnhkCaWz2R06FwF/27MNlS+Tqvi17foO9UhnUg3XG"
    "ZccKjxsvEqQFAQYMSSZmN5SxYzUYlQ0DOJJ3g=="
)
MEMBER = "package/dist/cytoscape.min.js"
FILE = f"cytoscape-{VERSION}.min.js"
DEFAULT_DIR = "/var/cache/pycilium/ui"


def path_in(directory: str | Path) -> Path:
    return Path(directory) / FILE


def check_integrity(data: bytes, integrity: str | None = None) -> None:
    """data is what the npm integrity string (default: the pinned one's) says."""
    algorithm, _, expected = (integrity or INTEGRITY).partition("-")
    digest = base64.b64encode(hashlib.new(algorithm, data).digest()).decode()
    if digest != expected:
        raise ValueError(f"{TARBALL}: {algorithm} {digest} is not the pinned {expected}")


def extract(tarball: bytes) -> bytes:
    with tarfile.open(fileobj=io.BytesIO(tarball), mode="r:gz") as archive:
        member = archive.extractfile(MEMBER)
        if member is None:
            raise ValueError(f"{TARBALL} has no {MEMBER}")
        return member.read()


def fetch(directory: str | Path, url: str = TARBALL) -> bool:
    """Put the library into directory unless it is there; True if it was fetched."""
    target = path_in(directory)
    if target.is_file():
        return False
    with urllib.request.urlopen(url, timeout=60) as response:
        tarball = response.read()
    check_integrity(tarball)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(".partial")
    partial.write_bytes(extract(tarball))
    partial.replace(target)
    return True


def main(argv: list[str]) -> int:
    directory = argv[1] if len(argv) > 1 else DEFAULT_DIR
    if fetch(directory):
        print(f"fetched cytoscape.js {VERSION} into {directory} (sha512 checked)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
