"""One helpful error for a misspelt name, shared by the loaders."""
from __future__ import annotations

import difflib


def unknown_name(what: str, name: object, valid: tuple[str, ...]) -> ValueError:
    """A ValueError naming the valid choices and, when one is close, the likely intended one."""
    close = difflib.get_close_matches(str(name), valid, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return ValueError(f"unknown {what} {name!r}.{hint} Valid names: {', '.join(valid)}")
