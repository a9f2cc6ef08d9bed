"""tqdm progress bars shown when ``verbose`` asks for them."""

from __future__ import annotations

import contextlib


@contextlib.contextmanager
def progress_bar(verbose, total, desc, unit="it"):
    """A tqdm bar when ``verbose > 0``, else ``None``."""
    if not verbose:
        yield None
        return
    from tqdm.auto import tqdm

    bar = tqdm(total=total, desc=desc, unit=unit, leave=verbose > 1)
    try:
        yield bar
    finally:
        bar.close()
