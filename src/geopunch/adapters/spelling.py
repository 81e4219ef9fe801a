"""The name a caller most likely meant by one that names nothing, for the
hints of both APIs' refusals (a query parameter, a body key, an HTTP route,
a gRPC method)."""

import difflib
from collections.abc import Iterable


def _folded(name: str) -> str:
    return name.replace("_", "").replace("-", "").lower()


def meant(name: str, takes: Iterable[str], longest: int = 64) -> str | None:
    """The name of ``takes`` that ``name``, which is not one of them, most
    likely stands for: the same but for case, underscores and hyphens
    (``user_id`` or ``userID`` for ``userId``), else a close spelling
    (``isPublish`` for ``isPublished``), else None. A name longer than
    ``longest`` gets none: no name is that long, and difflib's work grows
    with it."""
    if len(name) > longest:
        return None
    by_fold = {_folded(t): t for t in takes}
    folded = _folded(name)
    if folded in by_fold:
        return by_fold[folded]
    close = difflib.get_close_matches(folded, by_fold, n=1, cutoff=0.8)
    return by_fold[close[0]] if close else None
