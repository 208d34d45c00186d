"""The Python-Lua contract: each script's ARGV dataclass lists the names its Lua header documents,
in the same order, so a Lua edit that reorders or adds an argument fails here until both agree."""

from __future__ import annotations

import re
import types
import typing
from dataclasses import fields, is_dataclass

import pytest

from services.queue_manager.scripts import LUA_DIR, SCRIPT_ARGS, Argv, Claimant, ScriptArgs, SubmitArgs


def documented_argv(script: str) -> list[str]:
    """The names after ``ARGV:`` in the header comment of ``lua/<script>.lua``, up to a period, a colon
    or a line not ending in a comma (parenthesised remarks and an optional part's brackets dropped)."""
    header = "\n".join(
        line.removeprefix("--").strip()
        for line in (LUA_DIR / f"{script}.lua").read_text().splitlines()
        if line.startswith("--")
    )
    listed = re.sub(r"\([^)]*\)", "", header.split("ARGV:", 1)[1])
    listed = re.split(r"(?<!\.)\.(?!\.)|:|(?<!,)\n", listed, maxsplit=1)[0]
    return [name.strip(" []\n") for name in listed.split(",")]


def argv_names(cls: type[Argv]) -> list[str]:
    """A dataclass's ARGV names in order: a nested part's names in its place, a tuple as ``name...``."""
    hints = typing.get_type_hints(cls)
    names: list[str] = []
    for spec in fields(cls):
        hint = hints[spec.name]
        parts = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
        nested = [p for p in parts if is_dataclass(p) and issubclass(p, Argv)]
        if nested:
            names += argv_names(nested[0])
        elif typing.get_origin(hint) is tuple:
            names.append(f"{spec.name}...")
        else:
            names.append(spec.name)
    return names


@pytest.mark.parametrize("cls", SCRIPT_ARGS, ids=lambda cls: cls.script)
def test_each_dataclass_is_its_scripts_documented_argv(cls: type[ScriptArgs]) -> None:
    assert argv_names(cls) == documented_argv(cls.script)


def test_every_script_has_one_typed_argv() -> None:
    scripts = {path.stem for path in LUA_DIR.glob("*.lua")} - {"lib"}
    assert sorted(cls.script for cls in SCRIPT_ARGS) == sorted(scripts)


def test_a_reordered_header_is_caught(tmp_path: typing.Any, monkeypatch: pytest.MonkeyPatch) -> None:
    reordered = (
        "-- Lease. ARGV: prefix, worker_id, pool, token, now_ms,\n"
        "-- lease_ms, max_running_per_user, scan_limit.\n"
    )
    (tmp_path / "claim.lua").write_text(reordered)
    monkeypatch.setattr(f"{__name__}.LUA_DIR", tmp_path)
    from services.queue_manager.scripts import ClaimArgs

    assert argv_names(ClaimArgs) != documented_argv("claim")


def test_flattening_puts_a_parked_claim_and_variadic_tails_in_place() -> None:
    claimant = Claimant("h100", "w1", "tok", 5, 60_000, 2, 1000)
    submit = SubmitArgs("qm", "j1", "ada", "*", "", 0, "fifo", 20, 5, 3, "{}")
    assert submit.flat() == ["qm", "j1", "ada", "*", "", 0, "fifo", 20, 5, 3, "{}", 0]
    with_claim = SubmitArgs("qm", "j1", "ada", "*", "", 0, "fifo", 20, 5, 3, "{}", 1, claimant)
    assert with_claim.flat()[11:] == [1, "h100", "w1", "tok", 5, 60_000, 2, 1000]
