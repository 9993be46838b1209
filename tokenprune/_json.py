"""One JSON helper shared by the command line and the evaluation records (no heavy imports)."""

from __future__ import annotations

import json
from typing import Any

__all__ = ["jsonable"]


def jsonable(value: Any) -> Any:
    """``value`` if it is strictly JSON-serializable (no NaN/inf), else its ``repr``.

    >>> jsonable(0.2), jsonable(float("nan")), jsonable({1, 2})
    (0.2, 'nan', '{1, 2}')
    """
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError):
        return repr(value)
    return value
