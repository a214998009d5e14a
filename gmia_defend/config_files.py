"""The configs that ship inside the package, found by name or by path.

``gmia-defend fit --config demo`` and ``--config sweeps/diversity`` name a shipped config;
``--config path/to/my.yaml`` is read from disk. The shipped files are read through
``importlib.resources``, so they work the same from a source checkout, an editable install and a wheel.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from gmia_defend.errors import UserError

PACKAGE_DIR = "configs"
SUFFIX = ".yaml"


def _root() -> Path:
    return Path(str(resources.files("gmia_defend") / PACKAGE_DIR))


def shipped_configs() -> list[str]:
    """Names of the configs that ship with the package, e.g. ``["celeba64", "demo", "sweeps/dp", ...]``."""
    root = _root()
    return sorted(p.relative_to(root).with_suffix("").as_posix() for p in root.rglob(f"*{SUFFIX}"))


def resolve_config(spec: str | Path) -> Path:
    """A path to an existing config file: ``spec`` as a path if it exists, else a shipped config's name.

    ``"demo"``, ``"demo.yaml"``, ``"configs/demo.yaml"`` and ``"sweeps/diversity"`` all name shipped
    files; an existing path always wins, so a user's own ``demo.yaml`` in the working directory is used.
    """
    path = Path(spec).expanduser()
    if path.is_file():
        return path
    name = path.as_posix()
    if name.startswith(f"{PACKAGE_DIR}/"):
        name = name[len(PACKAGE_DIR) + 1:]
    if name.endswith(SUFFIX):
        name = name[: -len(SUFFIX)]
    candidate = _root() / f"{name}{SUFFIX}"
    if candidate.is_file():
        return candidate
    raise UserError(f"config {str(spec)!r} is neither a file nor a shipped config; shipped configs: "
                    f"{', '.join(shipped_configs())} (list them with `gmia-defend configs`)")


def resolve_config_args(argv: list[str]) -> list[str]:
    """``argv`` with the value of every ``--config X`` / ``--config=X`` replaced by a resolved path."""
    out: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--config" and i + 1 < len(argv):
            out += [arg, str(resolve_config(argv[i + 1]))]
            i += 2
            continue
        if arg.startswith("--config="):
            arg = "--config=" + str(resolve_config(arg.split("=", 1)[1]))
        out.append(arg)
        i += 1
    return out
