"""Which identities a set of endpoint records names, counted per record: so a watch of those
records can tell when an identity comes (its first record) or goes (its last), and nothing
for the records in between."""

from collections import Counter
from collections.abc import Iterable, Iterator


class IdentitiesInUse:
    """Identity -> how many records name it. Pure bookkeeping; callers serialise calls."""

    def __init__(self, identities: Iterable[int] = ()):
        self._count = Counter(identities)

    def replace(self, old: int | None, new: int | None) -> bool:
        """A record that named old (None: there was none) now names new (None: it is gone).
        Whether an identity came or went."""
        if old == new:
            return False
        went = old is not None and self._drop(old)
        came = new is not None and self._add(new)
        return went or came

    def _drop(self, identity: int) -> bool:
        self._count[identity] -= 1
        if self._count[identity]:
            return False
        del self._count[identity]
        return True

    def _add(self, identity: int) -> bool:
        self._count[identity] += 1
        return self._count[identity] == 1

    def __contains__(self, identity: object) -> bool:
        return identity in self._count

    def __iter__(self) -> Iterator[int]:
        return iter(self._count)
