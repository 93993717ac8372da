"""Output folders that never lose the user's files and are complete or visibly incomplete.

`OutputDir(path)` is the folder a command writes into (`--out`):

- It is checked before any work: an existing file, an empty path or a folder that cannot be
  created or written is refused (DataError, one line).
- The run names the entries it will create (`claim`); an entry that exists and is not a
  previous densecorr output is refused unless `overwrite`. A marker file, `.densecorr-output`
  (JSON), lists the entries densecorr wrote there; nothing else in the folder is touched.
- Each entry (a sequence folder, `masks/`, `results.csv`, ...) is written into a staging
  path `.<name>.partial-XXXXXXXX` inside the folder and moved into place only when complete,
  by an atomic exchange (Linux renameat2) or, where the file system lacks it, by two renames
  that the next run completes. So a kill at any moment leaves the old or the new entry, and
  `.partial-` leftovers, which the next run into the folder removes.
- A folder the run created and wrote nothing into is removed again when the run fails.

See docs/design.md ("Outputs").
"""
from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import re
import secrets
import shutil
import tempfile
from typing import Iterable, Iterator

from densecorr.data.io import DataError
from densecorr.system import signals_deferred

MARKER = ".densecorr-output"
PARTIAL_MARKER = ".densecorr-partial"
_LEFTOVER = re.compile(r"^\.(?P<name>.+)\.(?P<kind>partial|old)-[0-9a-f]{8}$")


def _exchange(a: str, b: str) -> bool:
    """Atomically swap paths a and b (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    AT_FDCWD, RENAME_EXCHANGE = -100, 2
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if renameat2(AT_FDCWD, os.fsencode(a), AT_FDCWD, os.fsencode(b), RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EXDEV, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), b)


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.lexists(path):
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)


def _token() -> str:
    return secrets.token_hex(4)


class OutputDir:
    """A command's output folder (see the module docstring).

    Args:
        path: the folder (created when needed, at the first write).
        overwrite: replace entries that exist and are not densecorr outputs.
        option: how the folder is named in error messages ("--out").
    """

    def __init__(self, path, overwrite: bool = False, option: str = "--out"):
        text = os.fspath(path) if path is not None else ""
        if not text.strip():
            raise DataError(f"{option} is empty; give the path of a folder")
        self.option = option
        self.given = text
        self.path = os.path.abspath(text)
        self.overwrite = overwrite
        if os.path.lexists(self.path) and not os.path.isdir(self.path):
            raise DataError(f"{option} {text!r} is an existing file, not a folder; give a folder path (it is left untouched)")
        ancestor = self.path
        while not os.path.exists(ancestor):
            ancestor = os.path.dirname(ancestor)
        if not os.path.isdir(ancestor):
            raise DataError(f"{option} {text!r} cannot be created: {ancestor!r} is a file")
        where = "the folder" if ancestor == self.path else f"{ancestor!r}"
        if not os.access(ancestor, os.W_OK | os.X_OK):
            raise DataError(f"{option} {text!r} is not writable (no write permission in {where}); choose another folder")
        try:  # the real test (permissions can lie: root, read-only mounts, /proc)
            os.rmdir(tempfile.mkdtemp(prefix=".densecorr-probe-", dir=ancestor))
        except OSError as exc:
            raise DataError(f"{option} {text!r} is not writable ({exc.strerror or exc} in {where}); choose another folder") from None
        self.created = not os.path.exists(self.path)
        self.entries = self._read_marker()
        self.committed: list[str] = []
        self.claimed: list[str] = []
        self._opened = False

    # -- the marker ---------------------------------------------------------------------
    def _read_marker(self) -> list[str]:
        path = os.path.join(self.path, MARKER)
        if not os.path.lexists(path):
            return []
        try:
            with open(path) as f:
                data = json.load(f)
            entries = data["entries"]
            if not isinstance(entries, list) or not all(isinstance(e, str) for e in entries):
                raise ValueError("entries is not a list of names")
        except (OSError, ValueError, KeyError, TypeError) as exc:
            if self.overwrite:
                return []
            raise DataError(f"{self.option} {self.given!r} has a damaged {MARKER} file ({exc}); remove it, choose another folder or pass --overwrite") from None
        return entries

    def _write_marker(self) -> None:
        path = os.path.join(self.path, MARKER)
        tmp = os.path.join(self.path, f".{MARKER.lstrip('.')}.partial-{_token()}")
        with open(tmp, "w") as f:
            json.dump({"densecorr": "output folder written by densecorr; these entries are replaced by later runs", "entries": sorted(self.entries)}, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    @property
    def is_output(self) -> bool:
        """Whether the folder holds densecorr outputs (a marker)."""
        return os.path.isfile(os.path.join(self.path, MARKER))

    def owns(self, name: str) -> bool:
        return name in self.entries

    # -- checks before work ---------------------------------------------------------------
    def claim(self, names: Iterable[str]) -> None:
        """Check that every entry the run will create may be written: absent, a previous
        densecorr output, or `overwrite`. DataError (one line) otherwise, before any work."""
        names = list(names)
        for name in names:
            if os.sep in name or name in ("", ".", "..") or name == MARKER or _LEFTOVER.match(name):
                raise DataError(f"cannot write an entry named {name!r} into {self.option} {self.given!r}")
        clashes = [n for n in names if os.path.lexists(os.path.join(self.path, n)) and not self.owns(n)]
        if clashes and not self.overwrite:
            shown = ", ".join(repr(n) for n in clashes[:3]) + (f" and {len(clashes) - 3} more" if len(clashes) > 3 else "")
            raise DataError(
                f"{self.option} {self.given!r} already holds {shown}, not written by densecorr; "
                "choose another folder, move it away, or pass --overwrite to replace it"
            )
        self.claimed += [n for n in names if n not in self.claimed]

    # -- writing ----------------------------------------------------------------------------
    def open(self) -> None:
        """Create the folder if needed and remove the leftovers of killed runs."""
        try:
            os.makedirs(self.path, exist_ok=True)
        except OSError as exc:
            raise DataError(f"cannot create {self.option} {self.given!r} ({exc.strerror or exc}); choose another folder") from None
        self._opened = True
        self.cleanup()

    def cleanup(self) -> list[str]:
        """Remove `.partial-` leftovers of killed runs; complete an interrupted two-rename
        replacement (restore `.<name>.old-` where `<name>` is missing). Returns what it removed."""
        removed = []
        if not os.path.isdir(self.path):
            return removed
        ours = self.is_output
        for entry in sorted(os.listdir(self.path)):
            m = _LEFTOVER.match(entry)
            if not m:
                continue
            full = os.path.join(self.path, entry)
            is_dir = os.path.isdir(full) and not os.path.islink(full)
            marked = is_dir and (os.path.exists(os.path.join(full, PARTIAL_MARKER)) or not os.listdir(full))
            if m["kind"] == "old":
                target = os.path.join(self.path, m["name"])
                if not ours:
                    continue
                if not os.path.lexists(target):
                    os.rename(full, target)  # the new one never arrived: the old one is back
                else:
                    _remove(full)
                    removed.append(entry)
            elif marked or (ours and m["name"] in self.entries + [MARKER.lstrip(".")]) or (ours and not is_dir):
                _remove(full)
                removed.append(entry)
        return removed

    def stage(self, name: str, kind: str = "dir") -> str:
        """A fresh staging path for entry `name` (a folder, created, or a file path)."""
        if name not in self.claimed:
            raise RuntimeError(f"entry {name!r} was not claimed")
        if not self._opened:
            self.open()
        path = os.path.join(self.path, f".{name}.partial-{_token()}")
        if kind == "dir":
            os.mkdir(path)
            open(os.path.join(path, PARTIAL_MARKER), "w").close()
        return path

    def commit(self, items: dict[str, str]) -> None:
        """Move staged entries {name: staging path} into place, together (signals deferred):
        the marker first lists them, then each one replaces the old entry atomically."""
        with signals_deferred():
            new = [n for n in items if n not in self.entries]
            if new or not self.is_output:
                self.entries += new
                self._write_marker()
            for name, stage in items.items():
                target = os.path.join(self.path, name)
                if os.path.isdir(stage):
                    with contextlib.suppress(FileNotFoundError):
                        os.remove(os.path.join(stage, PARTIAL_MARKER))
                self._replace(stage, target)
                self.committed.append(name)

    def _replace(self, stage: str, target: str) -> None:
        if not os.path.lexists(target):
            os.rename(stage, target)
            return
        stage_dir, target_dir = os.path.isdir(stage), os.path.isdir(target) and not os.path.islink(target)
        if not stage_dir and not target_dir:
            os.replace(stage, target)  # files: atomic
            return
        if _exchange(stage, target):
            _remove(stage)  # now the old entry
            return
        old = os.path.join(os.path.dirname(target), f".{os.path.basename(target)}.old-{_token()}")
        os.rename(target, old)
        os.rename(stage, target)
        _remove(old)

    @contextlib.contextmanager
    def entry(self, name: str, kind: str = "dir") -> Iterator[str]:
        """Stage one entry: yields its staging path; committed when the block ends normally,
        removed when it raises (also on Ctrl-C / SIGTERM)."""
        path = self.stage(name, kind)
        try:
            yield path
        except BaseException:
            _remove(path)
            raise
        self.commit({name: path})

    @contextlib.contextmanager
    def entries_together(self, names: list[str]) -> Iterator[dict[str, str]]:
        """Stage several entries in one staging folder and commit them together: yields
        {name: staging path} (folders for names without a '.', file paths otherwise)."""
        holder = self.stage(names[0], "dir")
        paths = {}
        for n in names:
            paths[n] = os.path.join(holder, n)
            if "." not in n:
                os.mkdir(paths[n])
        try:
            yield paths
        except BaseException:
            _remove(holder)
            raise
        self.commit({n: p for n, p in paths.items() if os.path.lexists(p)})
        _remove(holder)

    def abandon(self) -> None:
        """After a failure: remove the folder again if this run created it and committed
        nothing into it (so a failed run leaves no trace)."""
        if self.created and not self.committed and os.path.isdir(self.path):
            leftovers = [e for e in os.listdir(self.path) if not _LEFTOVER.match(e) and e != MARKER]
            if not leftovers:
                shutil.rmtree(self.path, ignore_errors=True)


__all__ = ["OutputDir", "MARKER", "signals_deferred"]
