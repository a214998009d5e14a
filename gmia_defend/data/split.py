"""IdentitySplit: which identities are trained on (members), which are not (non-members), and which
images of each are held out as references for the audit.

Why: the identity membership attack needs reference photos of member identities that the generator
never saw, and non-member identities never trained on at all. The split is made once, saved beside
the run as JSON (with the dataset's spec and fingerprint) and validated against the dataset every
time it is used, so a run can never silently audit on images it trained on.

One file on purpose: the split's rules (eligibility, disjointness, public people) and its JSON round trip must agree.
"""

from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from gmia_defend.data.specs import IdentityDataset, _format_list, open_dataset
from gmia_defend.errors import DataError
from gmia_defend.io import write_json_atomic

__all__ = ["IdentitySplit", "SPLIT_FORMAT"]

SPLIT_FORMAT = "gmia-defend/identity-split"
_VERSION = 1


def _problem(lines: list[str], fix: str, what: str = "invalid identity split") -> DataError:
    return DataError(f"{what}: {len(lines)} problem(s):{_format_list(lines)}\nFix: {fix}")


@dataclass
class IdentitySplit:
    """Members (identity -> training keys), their held-out references, non-members, population.

    ``population`` holds keys of images of extra identities that are neither trained on nor audited;
    the attack uses them to calibrate per-identity match frequencies. ``public`` names identities
    whose images may be used without privacy cost (e.g. pretraining, or selecting a release without
    touching protected people); they must not overlap any other group. ``dataset`` is the dataset's
    spec (``open_dataset(split.dataset)`` re-opens it); ``meta`` records how the split was built.

    The public audit (optional; see ``with_public_audit``): ``public_canaries`` are public identities
    mixed into the training set on purpose and ``public_controls`` public identities never trained
    on; ``public_references`` maps each of them to its held-out reference image keys (keys of the
    public people's dataset). They are written to JSON only when set, so splits without them (and
    their hashes) are unchanged, and old files load with them empty.

    Example:

    >>> from gmia_defend.data import SyntheticFaces
    >>> faces = SyntheticFaces(num_identities=30, images_per_identity=6, resolution=16)
    >>> split = IdentitySplit.create(faces, num_members=4, num_nonmembers=8, references_per_identity=2)
    >>> len(split.members), len(split.nonmembers), split.public
    (4, 8, [])
    >>> free = [n for n in faces.identities if n not in split.members and n not in split.nonmembers]
    >>> split.with_public(free[:3]).public == sorted(free[:3])
    True
    """

    members: dict[str, list[str]]
    references: dict[str, list[str]]
    nonmembers: dict[str, list[str]]
    population: list[str] = field(default_factory=list)
    dataset_fingerprint: str = ""
    seed: int = 0
    dataset: dict[str, Any] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    public: list[str] = field(default_factory=list)
    public_dataset: dict[str, Any] = field(default_factory=dict)
    public_canaries: list[str] = field(default_factory=list)
    public_controls: list[str] = field(default_factory=list)
    public_references: dict[str, list[str]] = field(default_factory=dict)

    # ---- views ---------------------------------------------------------------------------------
    @property
    def member_identities(self) -> list[str]:
        return list(self.members)

    @property
    def nonmember_identities(self) -> list[str]:
        return list(self.nonmembers)

    @property
    def train_counts(self) -> dict[str, int]:
        """Training images per member identity."""
        return {name: len(keys) for name, keys in self.members.items()}

    @property
    def num_train_images(self) -> int:
        return sum(len(keys) for keys in self.members.values())

    def summary(self) -> str:
        counts = list(self.train_counts.values()) or [0]
        text = (
            f"{len(self.members)} member identities ({self.num_train_images} training images, "
            f"{min(counts)}-{max(counts)} each), {len(self.nonmembers)} non-member identities, "
            f"{len(self.population)} population images"
        )
        if self.public_canaries:
            text += (f", public audit: {len(self.public_canaries)} canaries (trained on) vs "
                     f"{len(self.public_controls)} controls")
        return text

    # ---- creation ------------------------------------------------------------------------------
    @classmethod
    def create(
        cls,
        dataset: IdentityDataset,
        num_members: int | None,
        num_nonmembers: int,
        references_per_identity: int = 5,
        num_population_identities: int = 0,
        seed: int = 0,
        member_identities: Sequence[str] | None = None,
        min_member_images: int | None = None,
        population_images_per_identity: int | None = None,
    ) -> "IdentitySplit":
        """Pick members, non-members and population identities at random (seeded).

        Each member's images are shuffled: ``references_per_identity`` become held-out references,
        the rest are training images. Non-members contribute ``references_per_identity`` reference
        images, population identities ``population_images_per_identity`` (default: the same).
        ``member_identities`` fixes the members; ``min_member_images`` (default references + 1) is the
        fewest images an identity needs to be eligible.

        When members are drawn here, members and non-members meet the **same eligibility rule**
        (``min_member_images``) and come from one shuffled pool of eligible identities, so
        membership cannot correlate with how many photos a person has (on CelebA, with
        popularity). Given ``member_identities`` are the caller's choice; non-members then need
        ``min_member_images`` if set, else their references. Every audited identity gets exactly
        ``references_per_identity`` references, so scores do not depend on reference counts.
        """
        r = int(references_per_identity)
        if r < 1:
            raise DataError(f"references_per_identity must be >= 1, got {references_per_identity}")
        need = max(r + 1, int(min_member_images or 0))
        per_pop = int(population_images_per_identity or r)
        if member_identities is not None:
            member_identities = list(member_identities)
            if num_members is not None and int(num_members) != len(member_identities):
                raise DataError(
                    f"num_members={num_members} but {len(member_identities)} member_identities were "
                    "given; pass num_members=None or a matching list"
                )
            num_members = len(member_identities)
        if num_members is None or int(num_members) < 2 or int(num_nonmembers) < 2:
            raise DataError(
                f"an audit needs at least 2 member and 2 non-member identities, got "
                f"num_members={num_members}, num_nonmembers={num_nonmembers}; increase them"
            )
        num_members, num_nonmembers = int(num_members), int(num_nonmembers)
        if int(num_population_identities) < 0:
            raise DataError("num_population_identities must be >= 0")

        rng = random.Random(int(seed))
        counts = dataset.counts()
        order = list(dataset.identities)
        rng.shuffle(order)

        if member_identities is not None:
            unknown = [m for m in member_identities if m not in counts]
            if unknown:
                raise _problem(
                    [f"{m}: not an identity of this dataset" for m in unknown],
                    "name member identities from dataset.identities",
                    "bad member_identities",
                )
            if len(set(member_identities)) != len(member_identities):
                raise DataError("member_identities contains duplicates; list each identity once")
            short = [m for m in member_identities if counts[m] < need]
            if short:
                raise _problem(
                    [f"{m}: {counts[m]} images, needs >= {need}" for m in short],
                    f"members need >= {need} images (references_per_identity={r} held out + training "
                    "images); pick other identities or lower references_per_identity",
                    "bad member_identities",
                )
            members = list(member_identities)
        else:
            eligible = [n for n in order if counts[n] >= need]
            if len(eligible) < num_members:
                raise DataError(
                    f"only {len(eligible)} of {len(order)} identities have >= {need} images "
                    f"(references_per_identity={r} + training), but num_members={num_members}; "
                    "lower num_members or references_per_identity, or add images per identity"
                )
            members = eligible[:num_members]
        taken = set(members)
        rest = [n for n in order if n not in taken]
        # Drawn members: non-members meet the members' rule, not a laxer one. Given members (the caller
        # chose them, e.g. a synthetic set whose members got extra images after a random draw):
        # non-members need their references, or min_member_images when the caller set it.
        need_non = need if member_identities is None else max(r, int(min_member_images or 0))
        eligible_non = [n for n in rest if counts[n] >= need_non]
        if len(eligible_non) < num_nonmembers:
            raise DataError(
                f"only {len(eligible_non)} identities are left with >= {need_non} images (the members' "
                f"eligibility rule) for num_nonmembers={num_nonmembers} (after {num_members} members); "
                "lower num_nonmembers, num_members or min_member_images, or use a dataset with more identities"
            )
        nonmembers = eligible_non[:num_nonmembers]
        taken.update(nonmembers)
        rest = [n for n in rest if n not in taken]
        if len(rest) < int(num_population_identities):
            raise DataError(
                f"only {len(rest)} identities are left for num_population_identities="
                f"{num_population_identities} (after {num_members} members and {num_nonmembers} "
                "non-members); lower one of them or use a dataset with more identities"
            )
        population_ids = rest[: int(num_population_identities)]

        def shuffled_keys(name: str) -> list[str]:
            keys = [dataset.keys[i] for i in dataset.indices_of(name)]
            rng.shuffle(keys)
            return keys

        member_train: dict[str, list[str]] = {}
        member_refs: dict[str, list[str]] = {}
        for name in sorted(members):
            keys = shuffled_keys(name)
            member_refs[name] = sorted(keys[:r])
            member_train[name] = sorted(keys[r:])
        nonmember_refs = {name: sorted(shuffled_keys(name)[:r]) for name in sorted(nonmembers)}
        population = [k for name in sorted(population_ids) for k in sorted(shuffled_keys(name)[:per_pop])]
        return cls(
            members=member_train,
            references=member_refs,
            nonmembers=nonmember_refs,
            population=population,
            dataset_fingerprint=dataset.fingerprint(),
            seed=int(seed),
            dataset=dataset.spec(),
            meta={
                "builder": "create",
                "min_images": need,
                "nonmember_min_images": need_non,
                "references_per_identity": r,
                "num_population_identities": int(num_population_identities),
            },
        )

    def with_training(self, members: dict[str, list[str]], **meta: Any) -> "IdentitySplit":
        """A copy with other training keys per member (references and the rest unchanged)."""
        extra = dict(self.meta)
        extra.update(meta)
        return IdentitySplit(
            members={k: list(v) for k, v in members.items()},
            references={k: list(self.references[k]) for k in members},
            nonmembers={k: list(v) for k, v in self.nonmembers.items()},
            population=list(self.population),
            dataset_fingerprint=self.dataset_fingerprint,
            seed=self.seed,
            dataset=dict(self.dataset),
            meta=extra,
            public=list(self.public),
            public_dataset=dict(self.public_dataset),
            public_canaries=list(self.public_canaries),
            public_controls=list(self.public_controls),
            public_references={k: list(v) for k, v in self.public_references.items()},
        )

    def with_public(self, names: Sequence[str], dataset: dict[str, Any] | None = None) -> "IdentitySplit":
        """A copy whose ``public`` identities are ``names`` (sorted, unique).

        ``dataset``: the spec of another dataset holding them (e.g. a public folder or a separate
        synthetic range); by default they are identities of the split's own dataset. Raises
        ``DataError`` (a ``UserError``) naming any identity that is also a member, a non-member or a
        population identity: public data must be disjoint from what is protected or audited. Any
        public audit (canaries, controls) is dropped: set it again with ``with_public_audit``.
        """
        names = sorted({str(n) for n in names})
        pop_owners = self._population_identities()
        clash = [f"{n}: is a member" for n in names if n in self.members]
        clash += [f"{n}: is a non-member" for n in names if n in self.nonmembers]
        clash += [f"{n}: has population images" for n in names if n in pop_owners]
        if clash:
            raise _problem(clash, "public identities must be neither members, non-members nor population "
                           "identities; pick identities outside the split", "bad public identities")
        copy = IdentitySplit.from_dict(self.to_dict())
        copy.public = names
        copy.public_dataset = dict(dataset or {})
        copy.public_canaries, copy.public_controls, copy.public_references = [], [], {}
        return copy

    def with_public_audit(self, canaries: Sequence[str], controls: Sequence[str],
                          references: dict[str, Sequence[str]]) -> "IdentitySplit":
        """A copy recording a public audit: ``canaries`` (public identities trained on), ``controls``
        (public identities never trained on) and ``references`` (held-out reference keys of each).

        Both are public identities of this split (``with_public`` first), disjoint, at least 2 each,
        and each has >= 1 reference. Raises ``DataError`` listing every problem otherwise.
        """
        copy = IdentitySplit.from_dict(self.to_dict())
        copy.public_canaries = sorted({str(n) for n in canaries})
        copy.public_controls = sorted({str(n) for n in controls})
        copy.public_references = {str(n): sorted(str(k) for k in keys) for n, keys in sorted(references.items())}
        problems = copy._public_audit_problems()
        if problems:
            raise _problem(problems, "canaries and controls must be distinct public identities (at least 2 of "
                           "each), each with held-out reference images", "bad public audit")
        return copy

    def _public_audit_problems(self) -> list[str]:
        if not (self.public_canaries or self.public_controls or self.public_references):
            return []
        problems: list[str] = []
        if len(self.public_canaries) < 2 or len(self.public_controls) < 2:
            problems.append(f"{len(self.public_canaries)} canaries and {len(self.public_controls)} controls "
                            "(a public audit needs >= 2 of each)")
        public = set(self.public)
        for label, names in (("canary", self.public_canaries), ("control", self.public_controls)):
            problems += [f"{n}: {label} is not a public identity" for n in names if n not in public]
        problems += [f"{n}: both canary and control" for n in sorted(set(self.public_canaries) & set(self.public_controls))]
        audited = set(self.public_canaries) | set(self.public_controls)
        problems += [f"{n}: canary/control without reference images" for n in sorted(audited)
                     if not self.public_references.get(n)]
        problems += [f"{n}: references for a name that is neither canary nor control"
                     for n in sorted(set(self.public_references) - audited)]
        seen: set[str] = set()
        for n, keys in self.public_references.items():
            for k in keys:
                if k in seen:
                    problems.append(f"{k}: public reference listed twice")
                seen.add(k)
        return problems

    def _population_identities(self) -> set[str]:
        """Owners of population images, read from their keys (``identity/file``); ``validate`` checks
        the real owners against the dataset."""
        owners: set[str] = set()
        for key in self.population:
            owners.add(key.split("/", 1)[0] if "/" in key else key)
        return owners

    # ---- checks --------------------------------------------------------------------------------
    def check(self) -> None:
        """Structural checks that need no dataset (raises DataError naming the fix)."""
        if len(self.members) < 2 or len(self.nonmembers) < 2:
            raise DataError(
                f"an identity split needs at least 2 member and 2 non-member identities, this one has "
                f"{len(self.members)} and {len(self.nonmembers)}; recreate it with more identities"
            )
        problems: list[str] = []
        overlap = sorted(set(self.members) & set(self.nonmembers))
        problems += [f"{n}: listed as both member and non-member" for n in overlap]
        if set(self.members) != set(self.references):
            for n in sorted(set(self.members) - set(self.references)):
                problems.append(f"{n}: member without a references entry")
            for n in sorted(set(self.references) - set(self.members)):
                problems.append(f"{n}: references entry for an identity that is not a member")
        for n, keys in self.members.items():
            refs = self.references.get(n, [])
            if len(keys) < 1 or len(refs) < 1:
                problems.append(
                    f"{n}: member with {len(keys)} training and {len(refs)} reference images "
                    "(needs >= 1 of each, i.e. >= references_per_identity + 1 images)"
                )
            both = sorted(set(keys) & set(refs))
            if both:
                problems.append(f"{n}: {len(both)} reference image(s) also used for training, e.g. {both[0]}")
        for n, keys in self.nonmembers.items():
            if len(keys) < 1:
                problems.append(f"{n}: non-member without reference images")
        seen: dict[str, str] = {}
        groups = [("members", self.members), ("references", self.references), ("nonmembers", self.nonmembers)]
        for label, group in groups:
            for n, keys in group.items():
                for k in keys:
                    where = f"{label}[{n}]"
                    if k in seen and not (label == "references" and seen[k] == f"members[{n}]"):
                        problems.append(f"{k}: listed twice ({seen[k]} and {where})")
                    seen.setdefault(k, where)
        for k in self.population:
            if k in seen:
                problems.append(f"{k}: population image also listed in {seen[k]}")
        for n in self.public:
            if n in self.members or n in self.nonmembers:
                problems.append(f"{n}: public identity is also audited (member or non-member)")
        problems += self._public_audit_problems()
        if problems:
            raise _problem(
                problems,
                "members and non-members must be disjoint identities, every member needs training "
                "and held-out reference images, and no image may appear twice; recreate the split "
                "with IdentitySplit.create(...)",
            )

    def validate(self, dataset: IdentityDataset, check_fingerprint: bool = True) -> None:
        """Check the split against ``dataset``: fingerprint, keys, identities (DataError on any)."""
        self.check()
        if check_fingerprint and self.dataset_fingerprint and self.dataset_fingerprint != dataset.fingerprint():
            known = dataset._key_index()
            all_keys = self._all_keys()
            missing = sum(1 for k in all_keys if k not in known)
            raise DataError(
                f"this split was made for another dataset (fingerprint {self.dataset_fingerprint}, "
                f"spec {self.dataset}) but the dataset given has fingerprint {dataset.fingerprint()} "
                f"(spec {dataset.spec()}; {missing} of the split's {len(all_keys)} image keys are not in "
                "it). Fix: open the dataset the split was made for (open_dataset(split.dataset)) or "
                "create a new split for this dataset."
            )
        all_keys = self._all_keys()
        indices = dataset.indices_of_keys(all_keys)  # unknown keys -> DataError listing them
        targets = dataset.targets[indices].tolist() if indices else []
        owners = {k: dataset.identities[t] for k, t in zip(all_keys, targets)}
        problems: list[str] = []
        names = set(dataset.identities)
        for label, group in (("member", self.members), ("non-member", self.nonmembers)):
            for n in group:
                if n not in names:
                    problems.append(f"{n}: {label} identity not in this dataset")
        for label, group in (("members", self.members), ("references", self.references), ("nonmembers", self.nonmembers)):
            for n, keys in group.items():
                for k in keys:
                    owner = owners[k]
                    if owner != n:
                        problems.append(f"{k}: listed under {label}[{n}] but belongs to {owner}")
        audited = set(self.members) | set(self.nonmembers)
        for k in self.population:
            owner = owners[k]
            if owner in audited:
                problems.append(f"{k}: population image of audited identity {owner}")
            if owner in self.public:
                problems.append(f"{k}: population image of public identity {owner}")
        if not self.public_dataset:  # public people of another dataset are checked by name only
            problems += [f"{n}: public identity not in this dataset" for n in self.public if n not in names]
            public_keys = [(n, k) for n, keys in self.public_references.items() for k in keys]
            if public_keys:
                known = dataset._key_index()
                for n, k in public_keys:
                    if k not in known:
                        problems.append(f"{k}: public reference of {n} is not in this dataset")
                    elif dataset.identities[int(dataset.targets[known[k]])] != n:
                        problems.append(f"{k}: listed as a public reference of {n} but belongs to "
                                        f"{dataset.identities[int(dataset.targets[known[k]])]}")
        if problems:
            raise _problem(
                problems,
                "keys must sit under their own identity and population images must come from "
                "identities that are neither members nor non-members; recreate the split",
                "identity split does not match its dataset",
            )

    def _all_keys(self) -> list[str]:
        keys = [k for group in (self.members, self.references, self.nonmembers) for ks in group.values() for k in ks]
        return keys + list(self.population)

    # ---- indices -------------------------------------------------------------------------------
    def train_indices(self, dataset: IdentityDataset) -> list[int]:
        """Dataset indices of every training image (members in order, keys in order)."""
        self.validate(dataset)
        return dataset.indices_of_keys([k for keys in self.members.values() for k in keys])

    def reference_indices(self, dataset: IdentityDataset, side: str = "members") -> list[list[int]]:
        """Per identity (in split order), dataset indices of its references (side: members|nonmembers)."""
        group = self.references if side == "members" else self.nonmembers
        if side not in ("members", "nonmembers"):
            raise ValueError("side must be 'members' or 'nonmembers'")
        names = self.members if side == "members" else self.nonmembers
        return [dataset.indices_of_keys(group[n]) for n in names]

    def population_indices(self, dataset: IdentityDataset) -> list[int]:
        return dataset.indices_of_keys(self.population)

    def open_dataset(self, resolution: int | None = None) -> IdentityDataset:
        """Re-open the dataset this split was made for (optionally at another resolution)."""
        if not self.dataset:
            raise DataError("this split stores no dataset spec; open the dataset yourself and call split.validate(dataset)")
        spec = dict(self.dataset)
        if resolution is not None:
            spec["resolution"] = int(resolution)
        return open_dataset(spec)

    # ---- JSON ----------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        data = {
            "format": SPLIT_FORMAT,
            "version": _VERSION,
            "seed": self.seed,
            "dataset_fingerprint": self.dataset_fingerprint,
            "dataset": self.dataset,
            "meta": self.meta,
            "members": self.members,
            "references": self.references,
            "nonmembers": self.nonmembers,
            "population": self.population,
            "public": self.public,
            "public_dataset": self.public_dataset,
        }
        if self.public_canaries or self.public_controls or self.public_references:
            # only when set: splits without a public audit keep their JSON (and hash) unchanged
            data["public_canaries"] = self.public_canaries
            data["public_controls"] = self.public_controls
            data["public_references"] = self.public_references
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "split") -> "IdentitySplit":
        if not isinstance(data, dict):
            raise DataError(f"{source} is not a JSON object; it must be a file written by IdentitySplit.save")
        if data.get("format", SPLIT_FORMAT) != SPLIT_FORMAT:
            raise DataError(f"{source} has format {data.get('format')!r}, expected {SPLIT_FORMAT!r}")
        missing = [k for k in ("members", "references", "nonmembers") if k not in data]
        if missing:
            raise DataError(f"{source} lacks field(s) {missing}; recreate it with IdentitySplit.create(...).save(path)")

        def groups(name: str) -> dict[str, list[str]]:
            value = data[name]
            if not isinstance(value, dict) or not all(isinstance(v, list) for v in value.values()):
                raise DataError(f"{source}: field {name!r} must map identity -> list of image keys")
            return {str(k): [str(x) for x in v] for k, v in value.items()}

        population = data.get("population") or []
        if not isinstance(population, list):
            raise DataError(f"{source}: field 'population' must be a list of image keys")
        public = data.get("public") or []
        if not isinstance(public, list):
            raise DataError(f"{source}: field 'public' must be a list of identity names")
        audit_names: dict[str, list[str]] = {}
        for name in ("public_canaries", "public_controls"):
            value = data.get(name) or []
            if not isinstance(value, list):
                raise DataError(f"{source}: field {name!r} must be a list of identity names")
            audit_names[name] = [str(n) for n in value]
        public_refs = data.get("public_references") or {}
        if not isinstance(public_refs, dict) or not all(isinstance(v, list) for v in public_refs.values()):
            raise DataError(f"{source}: field 'public_references' must map identity -> list of image keys")
        return cls(
            members=groups("members"),
            references=groups("references"),
            nonmembers=groups("nonmembers"),
            population=[str(k) for k in population],
            dataset_fingerprint=str(data.get("dataset_fingerprint") or ""),
            seed=int(data.get("seed") or 0),
            dataset=dict(data.get("dataset") or {}),
            meta=dict(data.get("meta") or {}),
            public=[str(n) for n in public],
            public_dataset=dict(data.get("public_dataset") or {}),
            public_canaries=audit_names["public_canaries"],
            public_controls=audit_names["public_controls"],
            public_references={str(k): [str(x) for x in v] for k, v in public_refs.items()},
        )

    def save(self, path: str | os.PathLike) -> Path:
        """Write the split as JSON, atomically."""
        return write_json_atomic(path, self.to_dict())

    @classmethod
    def load(cls, path: str | os.PathLike) -> "IdentitySplit":
        """Read a split written by ``save`` (structure checked; call ``validate(dataset)`` too)."""
        path = Path(path).expanduser()
        if not path.is_file():
            raise DataError(
                f"split file {str(path)!r} not found; create one with "
                "IdentitySplit.create(dataset, ...).save(path) or let IdentityDataModule write it"
            )
        try:
            data = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise DataError(f"split file {str(path)!r} is not valid JSON ({exc}); recreate it") from exc
        split = cls.from_dict(data, source=f"split file {str(path)!r}")
        split.check()
        return split
