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
# Top-level keys of the wandb sweep format, and the keys a parameter may have.
SWEEP_KEYS = {"name", "description", "program", "method", "parameters", "command", "metric",
              "early_terminate", "run_cap", "project", "entity", "seed"}
PARAMETER_KEYS = {"value", "values", "distribution", "min", "max", "mu", "sigma", "q", "probabilities"}
RANDOM_DISTRIBUTIONS = {"uniform", "int_uniform"}


def is_sweep(raw: Any) -> bool:
    """Whether a parsed YAML file is a sweep (has ``method`` or ``parameters``), not a fit config.

    >>> is_sweep({"method": "grid", "parameters": {"a": {"values": [1, 2]}}}), is_sweep({"trainer": {}})
    (True, False)
    """
    return isinstance(raw, dict) and bool({"method", "parameters"} & set(raw))


def key_lines(text: str) -> dict[str, int]:
    """1-based line of each top-level key and of each ``parameters.<name>`` entry of a YAML text."""
    lines: dict[str, int] = {}
    try:
        root = yaml.compose(text)
    except yaml.YAMLError:
        return lines
    if not isinstance(root, yaml.MappingNode):
        return lines
    for key, value in root.value:
        lines[str(key.value)] = key.start_mark.line + 1
        if key.value == "parameters" and isinstance(value, yaml.MappingNode):
            for pkey, _ in value.value:
                lines[f"parameters.{pkey.value}"] = pkey.start_mark.line + 1
    return lines


@dataclass(frozen=True)
class SweepRun:
    """One concrete run of a sweep: its parameters and the command line that executes it.

    >>> run = SweepRun("n=2", {"n": 2}, ["gmia-defend", "fit", '--m={"unit": "image"}'])
    >>> print(run.shell_command())
    gmia-defend fit '--m={"unit": "image"}'
    """

    name: str
    params: dict[str, Any]
    command: list[str]

    def shell_command(self) -> str:
        """The command quoted for a POSIX shell: it can be pasted as it is."""
        return shlex.join(self.command)


@dataclass
class SweepConfig:
    """A parsed sweep file (wandb sweep format), expanded into runs by :meth:`runs`.

    >>> config = SweepConfig.from_dict({"method": "grid", "parameters": {
    ...     "data.num_members": {"values": [32, 96]}, "data.member_image_budget": {"value": 9600}}})
    >>> [run.params["data.num_members"] for run in config.runs()]
    [32, 96]
    >>> config.runs()[0].command[-2:]
    ['--data.num_members=32', '--data.member_image_budget=9600']
    """

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
        """Read a sweep YAML file; every problem is one line naming it and its line in the file."""
        path = Path(path)
        if not path.is_file():
            raise UserError(f"sweep config {path} does not exist; pass a YAML file such as "
                            "configs/sweeps/diversity.yaml or a shipped name such as sweeps/diversity")
        text = path.read_text()
        try:
            raw = yaml.safe_load(text)
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            line = f":{mark.line + 1}" if mark is not None else ""
            problem = getattr(err, "problem", None) or str(err).splitlines()[0]
            raise UserError(f"{path}{line}: not valid YAML ({problem}); fix the syntax") from None
        return cls.from_dict(raw, name=path.stem, source=str(path), lines=key_lines(text))

    @classmethod
    def from_dict(cls, raw: Any, name: str = "sweep", source: str | None = None,
                  lines: dict[str, int] | None = None) -> "SweepConfig":
        """Check ``raw`` against the wandb sweep format; ``lines`` (from :func:`key_lines`) locates errors."""
        lines = lines or {}
        where_file = source or name

        def fail(problem: str, key: str | None = None) -> UserError:
            line = lines.get(key) if key else None
            return UserError(f"{where_file}{f':{line}' if line else ''}: {problem}")

        if not isinstance(raw, dict):
            raise fail("a sweep config must be a mapping with 'method' and 'parameters' (wandb sweep format)")
        if not is_sweep(raw):
            raise fail("not a sweep config (wandb sweep format needs 'method' and 'parameters'); "
                       "a fit config runs with `gmia-defend fit --config FILE`", next(iter(raw), None))
        unknown = [k for k in raw if k not in SWEEP_KEYS]
        if unknown:
            raise fail(f"unknown key {unknown[0]!r}: a wandb sweep config has only "
                       f"{', '.join(sorted(SWEEP_KEYS))}", str(unknown[0]))
        if "method" not in raw:
            raise fail("missing 'method': add `method: grid` (or `random` with `run_cap`)", "parameters")
        method = raw["method"]
        if method not in ("grid", "random"):
            raise fail(f"method {method!r} is not supported here; use 'grid' or 'random' with 'run_cap' "
                       "(bayes needs the W&B server: run `wandb sweep`)", "method")
        params = raw.get("parameters")
        if not isinstance(params, dict) or not params:
            raise fail("'parameters' is empty or missing: map option names (e.g. data.num_members) "
                       "to {values: [...]}", "parameters" if "parameters" in raw else "method")
        for key, spec in params.items():
            pline = f"parameters.{key}"
            if not isinstance(spec, dict) or not ({"value", "values", "distribution", "min"} & set(spec)):
                raise fail(f"parameter {key!r} needs 'value', 'values' or 'distribution'/'min'/'max'", pline)
            bad = [k for k in spec if k not in PARAMETER_KEYS]
            if bad:
                raise fail(f"parameter {key!r}: unknown key {bad[0]!r} (nested 'parameters' are not "
                           f"supported here; give the whole value in 'values')", pline)
            if method == "grid" and "values" not in spec and "value" not in spec:
                raise fail(f"grid search needs 'values' (or 'value') for parameter {key!r}", pline)
            if "values" in spec and (not isinstance(spec["values"], list) or not spec["values"]):
                raise fail(f"'values' of {key!r} must be a non-empty list", pline)
            if method == "random" and "value" not in spec and "values" not in spec:
                dist = spec.get("distribution", "uniform")
                if dist not in RANDOM_DISTRIBUTIONS or "min" not in spec or "max" not in spec:
                    raise fail(f"parameter {key!r}: random search here draws from 'uniform' or 'int_uniform' "
                               "with 'min' and 'max' (or from 'values')", pline)
        command = raw.get("command", DEFAULT_COMMAND)
        if not isinstance(command, list) or not all(isinstance(c, str) for c in command) or not command:
            raise fail("'command' must be a non-empty list of strings", "command")
        run_cap = raw.get("run_cap")
        if run_cap is not None and (isinstance(run_cap, bool) or not isinstance(run_cap, int) or run_cap < 1):
            raise fail(f"'run_cap' must be a positive integer, got {run_cap!r}", "run_cap")
        if method == "random" and not run_cap:
            raise fail("a random sweep needs 'run_cap' (how many runs to draw)", "method")
        return cls(name=str(raw.get("name", name)), method=method, parameters=params,
                   command=list(command), program=raw.get("program"), run_cap=run_cap,
                   seed=int(raw.get("seed", 0)), source=source)

    def wandb_notes(self) -> list[str]:
        """Parameters that run here but not under ``wandb agent``, which writes values with Python's ``str``.

        >>> SweepConfig.from_dict({"method": "grid", "parameters": {"data.x": {"value": None}}}).wandb_notes()
        ["parameter 'data.x' has a null value: wandb's agent passes it as 'None'; put --data.x=null in 'command'"]
        """
        notes = []
        for key, spec in self.parameters.items():
            values = spec.get("values", [spec.get("value")] if "value" in spec else [])
            if any(v is None for v in values):
                notes.append(f"parameter {key!r} has a null value: wandb's agent passes it as 'None'; "
                             f"put --{key}=null in 'command'")
        return notes

    def identity(self) -> dict[str, Any]:
        """What makes two sweep files the same sweep (a sweep folder holds runs of one identity)."""
        return {"method": self.method, "parameters": self.parameters, "command": self.command,
                "program": self.program, "run_cap": self.run_cap, "seed": self.seed}

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
