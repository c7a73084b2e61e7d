"""Load pickles that hold only plain data, without ever running code from the file.

A pickle can name any importable callable and make the loader call it (``os.system`` included), so
osctl never uses :func:`pickle.load` on user files. :func:`safe_load` uses an unpickler whose
``find_class`` refuses every global (except the value constructors old protocols need for sets and
bytes, :data:`SAFE_GLOBALS`) and which has no persistent-id hook: the file can then only build
``dict``, ``list``, ``tuple``, ``set``, ``frozenset``, ``str``, ``bytes``, ``bytearray``, ``int``,
``float``, ``bool`` and ``None``. A file that
needs anything else (a class instance, a numpy scalar, a pandas frame) is refused with
:class:`UnsafePickleError`, which names the first global the file asked for.

Refusal happens when the loader reaches the opcode that names the global, before it could be called.
The extension-code opcodes (``EXT1/2/4``) bypass ``find_class`` when the process has registered
extension codes with :mod:`copyreg`; in that (unusual) case the file is scanned first and refused if it
uses them.
"""

from __future__ import annotations

import codecs
import copyreg
import io
import pickle
import pickletools
from pathlib import Path
from typing import Any, BinaryIO

ALLOWED_TYPES = "dict, list, tuple, set, frozenset, str, bytes, bytearray, int, float, bool and None"


class UnsafePickleError(pickle.UnpicklingError):
    """A pickle asked for something other than plain containers and scalars; nothing was executed."""

    def __init__(self, message: str, *, global_name: str | None = None) -> None:
        super().__init__(message)
        self.global_name = global_name


SAFE_GLOBALS: dict[tuple[str, str], Any] = {
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("builtins", "bytearray"): bytearray,
    ("_codecs", "encode"): codecs.encode,
    ("__builtin__", "set"): set,  # the Python 2 spelling protocols 0-2 write
    ("__builtin__", "frozenset"): frozenset,
    ("__builtin__", "bytearray"): bytearray,
}
"""The only globals admitted: constructors that protocols 0-3 use to spell plain sets and bytes.

They build values from values and have no side effect, so admitting them cannot run code.
"""


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that admits no persistent ids and no globals except :data:`SAFE_GLOBALS` (plain data only)."""

    def find_class(self, module: str, name: str) -> Any:
        """Return an admitted value constructor, or refuse with :class:`UnsafePickleError`."""
        safe = SAFE_GLOBALS.get((module, name))
        if safe is not None:
            return safe
        qualified = f"{module}.{name}"
        raise UnsafePickleError(
            f"the pickle refers to {qualified}, but only plain data ({ALLOWED_TYPES}) is accepted; "
            "nothing from the file was executed",
            global_name=qualified,
        )

    def persistent_load(self, pid: Any) -> Any:
        """Refuse: plain data never needs persistent ids."""
        raise UnsafePickleError("the pickle uses a persistent id, which plain data never needs")


def _refuse_extension_codes(data: bytes) -> None:
    """Refuse ``EXT*`` opcodes when copyreg has extension codes registered (they skip ``find_class``)."""
    if not copyreg._extension_registry:  # type: ignore[attr-defined]  # empty: EXT opcodes cannot resolve
        return
    for opcode, _arg, pos in pickletools.genops(data):
        if opcode.name.startswith("EXT"):
            raise UnsafePickleError(
                f"the pickle uses the extension-code opcode {opcode.name} at byte {pos}, which can name "
                "arbitrary objects; only plain data is accepted"
            )


def safe_loads(data: bytes) -> Any:
    """Unpickle ``data`` allowing only plain containers and scalars (raises :class:`UnsafePickleError`)."""
    _refuse_extension_codes(data)
    return RestrictedUnpickler(io.BytesIO(data)).load()


def safe_load(source: str | Path | BinaryIO) -> Any:
    """Unpickle a file (path or binary handle) allowing only plain containers and scalars.

    Raises :class:`UnsafePickleError` when the file needs any global, and ``pickle.UnpicklingError``
    (or ``EOFError``) when it is truncated or not a pickle at all.
    """
    if isinstance(source, str | Path):
        with open(source, "rb") as handle:
            return safe_loads(handle.read())
    return safe_loads(source.read())
