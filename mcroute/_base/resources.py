"""Where mcroute's data files live: the model/hardware cards and the shared (external) data.

May import: the standard library and ``_validate``.

Cards live in the repository's top-level ``models/`` folder. In a source checkout or an editable
install that folder sits next to the ``mcroute`` package directory; in a wheel it is installed as
the package data ``mcroute.models`` (see ``[tool.setuptools.package-dir]`` in pyproject.toml).
The shared data the project does not own (quality tables, traces) is never copied into the
project: it is found through the environment variable ``MCROUTE_SHARED_DATA``, else
``../shared/data`` relative to the current working directory, else relative to the repository
root.
"""

from __future__ import annotations

import importlib.resources
import os
from pathlib import Path

from mcroute._base.validate import McrouteError

__all__ = ["cards_dir", "models_dir", "hardware_dir", "kernels_dir", "shared_data_dir",
           "project_data_dir", "SHARED_DATA_ENV"]

#: Environment variable naming the shared data folder.
SHARED_DATA_ENV = "MCROUTE_SHARED_DATA"

_REPO_ROOT = Path(__file__).resolve().parents[2]


def cards_dir():
    """Return the folder holding the cards (with subfolders ``llm`` and ``hardware``).

    Returns
    -------
    pathlib.Path or importlib.resources.abc.Traversable
        The repository's ``models/`` folder when it exists next to the package (source checkout,
        editable install), else the installed package data ``mcroute.models``.
    """
    local = _REPO_ROOT / "models"
    if (local / "llm").is_dir():
        return local
    try:
        root = importlib.resources.files("mcroute.models")
    except ModuleNotFoundError:  # pragma: no cover - broken install
        root = None
    if root is None or not root.joinpath("llm").is_dir():  # pragma: no cover - broken install
        raise McrouteError(
            f"cannot find the model cards: neither {local} nor the installed package data "
            "mcroute.models exists; reinstall mcroute"
        )
    return root  # pragma: no cover - only in a non-editable install


def models_dir():
    """Folder of the model cards (``models/llm``)."""
    return cards_dir().joinpath("llm")


def hardware_dir():
    """Folder of the hardware cards (``models/hardware``)."""
    return cards_dir().joinpath("hardware")


def kernels_dir():
    """Folder of the calibrated kernel-efficiency cards (``models/kernels``)."""
    return cards_dir().joinpath("kernels")


def shared_data_dir() -> Path:
    """Return the shared data folder (data the project reads but does not own).

    Looks, in order, at the environment variable ``MCROUTE_SHARED_DATA``, at ``../shared/data``
    relative to the current working directory, and at ``../shared/data`` relative to the
    repository root.

    Returns
    -------
    pathlib.Path
        An existing directory.

    Raises
    ------
    McrouteError
        If ``MCROUTE_SHARED_DATA`` is set but is not a directory, or no candidate exists.
    """
    env = os.environ.get(SHARED_DATA_ENV)
    if env:
        p = Path(env).expanduser()
        if not p.is_dir():
            raise McrouteError(f"{SHARED_DATA_ENV}={env!r} is not a directory")
        return p
    candidates = [Path.cwd() / ".." / "shared" / "data", _REPO_ROOT / ".." / "shared" / "data"]
    for c in candidates:
        if c.is_dir():
            return c.resolve()
    tried = ", ".join(str(c) for c in candidates)
    raise McrouteError(
        f"cannot find the shared data folder (tried {tried}); set the environment variable "
        f"{SHARED_DATA_ENV} to its path"
    )


def project_data_dir():
    """Return the folder of data the project itself produces (``data/``, or ``mcroute.data``).

    Returns
    -------
    pathlib.Path or importlib.resources.abc.Traversable
    """
    local = _REPO_ROOT / "data"
    if local.is_dir():
        return local
    return importlib.resources.files("mcroute.data")
