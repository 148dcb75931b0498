"""The bundle exception tree.

    BundleError(ValueError)      a bundle (or a manifest) is malformed, incomplete or inconsistent;
                                 str(err) == "<path relative to the bundle root>: <problem>"

Every check in `lmroute.bundle` raises `BundleError`; the service maps it to a refused startup or a
refused reload, never to a half-loaded bundle.
"""

from __future__ import annotations

__all__ = ["BundleError"]


class BundleError(ValueError):
    """A bundle failed validation. `path` is relative to the bundle root (e.g. "manifest.json",
    "routers/mf/pair_vector.npy"); `problem` says what is wrong with it."""

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = path
        self.problem = problem

    def __reduce__(self) -> tuple[type[BundleError], tuple[str, str]]:
        return (type(self), (self.path, self.problem))
