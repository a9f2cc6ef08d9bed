"""The package version (one place: the package and the files written by ``save()`` read it)."""

__version__ = "0.2.0"
