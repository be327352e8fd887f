"""Paths in a study's shareable record, without the machine that made it.

A published record must read the same on every machine: no absolute path of the machine that wrote it appears in
it. Each absolute path is written against an anchor the study itself names: an environment variable its file uses
(``${LOWMED_SHARED_DATA}/chest_xray/...``, and its parent folder as ``${LOWMED_SHARED_DATA}/../``), the folder the
study runs from (paths below it become relative, as the study file writes ``out:``), or the home folder (``~/``).
The same anchors, read on another machine, give that machine's paths back.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class PortablePaths:
    """``anchors``: (absolute prefix on this machine, how a record writes it), the longest prefix first."""

    anchors: tuple[tuple[str, str], ...]

    @classmethod
    def for_study(cls, variables: dict[str, str], cwd: str | os.PathLike | None = None) -> "PortablePaths":
        """The anchors of a study: the environment variables its file names (``variables``, with their values;
        their parents too), the working folder and the home folder."""
        anchors = []
        for name, value in variables.items():
            if value:
                folder = Path(value).expanduser().resolve()
                anchors += [(str(folder), f"${{{name}}}"), (str(folder.parent), f"${{{name}}}/..")]
        anchors.append((str(Path(cwd or os.getcwd()).resolve()), "."))
        anchors.append((str(Path.home().resolve()), "~"))
        unique = {prefix: token for prefix, token in anchors if prefix != "/"}
        return cls(tuple(sorted(unique.items(), key=lambda item: len(item[0]), reverse=True)))

    def text(self, value: str) -> str:
        """``value`` with every absolute path below an anchor written against it (below the working folder:
        relative)."""
        for prefix, token in self.anchors:
            start = rf"(?<![\w.-]){re.escape(prefix)}"
            value = re.sub(start + "/", "" if token == "." else f"{token}/", value)
            value = re.sub(start + r"(?=[\s\"',;)\]]|$)", token, value)
        return value

    def local(self, value: str) -> str:
        """A record's ``value`` with its anchors read on this machine (relative paths stay relative)."""
        for prefix, token in self.anchors:
            if token != ".":
                value = value.replace(f"{token}/", f"{prefix}/")
        return value

    def identity(self, value: str) -> str:
        """A path as the same on every machine: resolved, then written against the anchors (a value that names
        no existing file, say ``imagenet``, as it is)."""
        path = Path(value).expanduser()
        return self.text(str(path.resolve())) if path.exists() else value

    def data(self, value):
        """``text`` applied to every string in a JSON/YAML structure."""
        return _mapped(value, self.text)

    def local_data(self, value):
        return _mapped(value, self.local)


def _mapped(value, function):
    if isinstance(value, str):
        return function(value)
    if isinstance(value, dict):
        return {key: _mapped(item, function) for key, item in value.items()}
    if isinstance(value, list):
        return [_mapped(item, function) for item in value]
    return value


ABSOLUTE_PATH = re.compile(r"(?:^|[\s\"'(=,\[])(/[\w.-]+/[\w./-]+|[A-Za-z]:\\[\w\\.-]+)")


def absolute_paths(text: str) -> list[str]:
    """The absolute file paths written in ``text`` (a test's and a publisher's check)."""
    return ABSOLUTE_PATH.findall(text)
