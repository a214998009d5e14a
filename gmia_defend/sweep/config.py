"""Sweep configs in the format ``wandb sweep`` accepts, expanded into concrete runs.

A config names a ``method`` (``grid`` or ``random``), ``parameters`` (each with ``value``,
``values`` or, for ``random``, ``distribution``/``min``/``max``), and a ``command`` list using
wandb's macros (``${env}``, ``${interpreter}``, ``${program}``, ``${args}``, ``${args_no_hyphens}``).
The same file can be given to ``wandb sweep`` on a connected machine or to ``gmia-defend sweep``
here, which runs every combination locally.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import random
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from gmia_defend.errors import UserError

DEFAULT_COMMAND = ["${env}", "${interpreter}", "-m", "gmia_defend.cli", "fit", "${args}"]


@dataclass(frozen=True)
class SweepRun:
    """One concrete run of a sweep: its parameters and the command line that executes it."""

    name: str
    params: dict[str, Any]
    command: list[str]


@dataclass
class SweepConfig:
    """A parsed sweep file."""

    name: str
    method: str
    parameters: dict[str, dict[str, Any]]
    command: list[str] = field(default_factory=lambda: list(DEFAULT_COMMAND))
    program: str | None = None
    run_cap: int | None = None
    seed: int = 0
    source: str | None = None

    @classmethod
    def load(cls, path: str | Path) -> "SweepConfig":
        path = Path(path)
        if not path.is_file():
            raise UserError(f"sweep config {path} does not exist; pass a YAML file such as "
                            "configs/sweeps/diversity.yaml")
        try:
            raw = yaml.safe_load(path.read_text())
        except yaml.YAMLError as err:
            raise UserError(f"sweep config {path} is not valid YAML ({err}); fix the syntax") from None
        return cls.from_dict(raw, name=path.stem, source=str(path))

    @classmethod
    def from_dict(cls, raw: Any, name: str = "sweep", source: str | None = None) -> "SweepConfig":
        where = source or name
        if not isinstance(raw, dict):
            raise UserError(f"sweep config {where} must be a mapping with 'method' and 'parameters'")
        method = raw.get("method", "grid")
        if method not in ("grid", "random"):
            raise UserError(f"sweep config {where}: method {method!r} is not supported here; "
                            "use 'grid' or 'random' (bayes needs the W&B server: run `wandb sweep`)")
        params = raw.get("parameters")
        if not isinstance(params, dict) or not params:
            raise UserError(f"sweep config {where}: 'parameters' must map option names "
                            "(e.g. data.num_members) to {{values: [...]}}")
        for key, spec in params.items():
            if not isinstance(spec, dict) or not ({"value", "values", "distribution", "min"} & set(spec)):
                raise UserError(f"sweep config {where}: parameter {key!r} needs 'value', 'values' "
                                "or 'distribution'/'min'/'max'")
            if method == "grid" and "values" not in spec and "value" not in spec:
                raise UserError(f"sweep config {where}: grid search needs 'values' (or 'value') "
                                f"for parameter {key!r}")
            if "values" in spec and (not isinstance(spec["values"], list) or not spec["values"]):
                raise UserError(f"sweep config {where}: 'values' of {key!r} must be a non-empty list")
        command = raw.get("command", DEFAULT_COMMAND)
        if not isinstance(command, list) or not all(isinstance(c, str) for c in command):
            raise UserError(f"sweep config {where}: 'command' must be a list of strings")
        run_cap = raw.get("run_cap")
        if method == "random" and not run_cap:
            raise UserError(f"sweep config {where}: a random sweep needs 'run_cap' (how many runs)")
        return cls(name=str(raw.get("name", name)), method=method, parameters=params,
                   command=list(command), program=raw.get("program"), run_cap=run_cap,
                   seed=int(raw.get("seed", 0)), source=source)

    def runs(self) -> list[SweepRun]:
        """Expand into concrete runs, in a stable order (grid: lexicographic over parameters)."""
        combos = self._grid() if self.method == "grid" else self._random()
        if self.method == "grid" and self.run_cap:
            combos = combos[: self.run_cap]
        return [SweepRun(name=run_name(p), params=p, command=self.expand_command(p)) for p in combos]

    def _grid(self) -> list[dict[str, Any]]:
        keys = list(self.parameters)
        choices = [self.parameters[k].get("values", [self.parameters[k].get("value")]) for k in keys]
        return [dict(zip(keys, combo)) for combo in itertools.product(*choices)]

    def _random(self) -> list[dict[str, Any]]:
        rng = random.Random(self.seed)
        combos = []
        for _ in range(int(self.run_cap or 1)):
            combo = {}
            for key, spec in self.parameters.items():
                if "value" in spec:
                    combo[key] = spec["value"]
                elif "values" in spec:
                    combo[key] = rng.choice(spec["values"])
                elif spec.get("distribution", "uniform") == "int_uniform":
                    combo[key] = rng.randint(int(spec["min"]), int(spec["max"]))
                else:
                    combo[key] = rng.uniform(float(spec["min"]), float(spec["max"]))
            combos.append(combo)
        return combos

    def expand_command(self, params: dict[str, Any]) -> list[str]:
        """Substitute wandb's command macros for a local run."""
        args = [f"--{k}={format_value(v)}" for k, v in params.items()]
        out: list[str] = []
        for token in self.command:
            if token == "${env}":
                continue
            if token == "${interpreter}":
                out.append(sys.executable)
            elif token == "${program}":
                if not self.program:
                    raise UserError("sweep config uses ${program} but sets no 'program'")
                out.extend(shlex.split(self.program))
            elif token == "${args}":
                out.extend(args)
            elif token == "${args_no_hyphens}":
                out.extend(a[2:] for a in args)
            elif token == "${args_json}":
                out.append(json.dumps(params))
            else:
                out.append(token)
        return out


def format_value(value: Any) -> str:
    """A parameter value as LightningCLI/jsonargparse reads it from the command line."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, (list, dict)):
        return json.dumps(value)
    return str(value)


def run_name(params: dict[str, Any]) -> str:
    """A readable, filesystem-safe and unique name for a parameter combination."""
    parts = []
    for key, value in params.items():
        items = value.items() if isinstance(value, dict) else [(key, value)]
        parts += [f"{str(k).split('.')[-1]}={format_value(v)}" for k, v in items]
    text = ",".join(parts)
    safe = "".join(c if c.isalnum() or c in "=,._-" else "_" for c in text)
    digest = hashlib.sha1(json.dumps(params, sort_keys=True, default=str).encode()).hexdigest()[:6]
    return f"{safe[:80]}-{digest}"
