"""Checking a skeleton's opcodes before it is unpickled under ``weights_only=True``.

The skeleton is unpickled by the C unpickler (`pickle.Unpickler`, whose `find_class` enforces
the allowlist), about ten times faster than a pure-Python unpickler such as torch's. What the
C unpickler cannot refuse, this pass refuses first, walking the opcodes once with a coarse
model of the stack and the memo, building no object:

- calls (REDUCE, NEWOBJ) of anything but a global, which the allowlist then resolves: so a
  stream cannot call what an allowed function returns (``getattr(cls, "__init__")``), as
  torch's own weights_only unpickler refuses;
- BUILD, APPEND(S), SETITEM(S) and ADDITEMS on a tensor or on a global (BUILD on a tensor
  would call ``Tensor.__setstate__``, whose ``set_`` can grow a storage into uninitialized
  memory; torch allows it, this library does not);
- memo indices that skip ahead (the C unpickler's memo is an array: one ``LONG_BINPUT 2**27``
  would allocate 2 GiB), and reads of memo entries never written;
- tuples whose expansion (shared sub-tuples counted each time they appear) outgrows the
  skeleton by far, or nests deeper than `MAX_TUPLE_DEPTH`: hashing one as a dict key, or
  comparing it, would take exponential time or overflow the C stack;
- opcodes of protocols 0 and 1 and out-of-band buffers, which `save` never writes.

Refusals of what torch's weights_only unpickler refuses too (calls and objects of anything
but a global, BUILD or item assignment on what it does not allow) are `UnsafeGlobalError`s
(``pickle.UnpicklingError``s, as torch's), with torch's words; malformed or oversized
skeletons are `FormatError`s. Both name the opcode's offset.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ._errors import FormatError, UnsafeGlobalError

MAX_TUPLE_DEPTH = 256
_WEIGHT_SLACK = 1 << 20  # tuple leaves allowed beyond 8 per skeleton byte
_DEPTH_BITS = 16
_DEPTH_MASK = (1 << _DEPTH_BITS) - 1
_LEAF = (1 << _DEPTH_BITS) | 1  # weight 1, depth 1


class _Global(str):
    """A global's name on the modelled stack: the only thing a stream may call."""


class _Marker:
    def __init__(self, name: str) -> None:
        self.name = name


_TENSOR = _Marker("a tensor")  # a persistent id's tensor, or what a codec's global returns
_NAME = b"name"  # a string on the modelled stack (STACK_GLOBAL takes two)

_FIXED = {  # opcode: bytes of argument, for leaves that push one scalar
    0x4B: 1,  # BININT1
    0x4D: 2,  # BININT2
    0x4A: 4,  # BININT
    0x47: 8,  # BINFLOAT
    0x4E: 0,  # NONE
    0x88: 0,  # NEWTRUE
    0x89: 0,  # NEWFALSE
    0x29: 0,  # EMPTY_TUPLE
}
_SIZED = {  # opcode: bytes of the length prefix, for strings and bytes
    0x58: 4,  # BINUNICODE
    0x8C: 1,  # SHORT_BINUNICODE
    0x8D: 8,  # BINUNICODE8
    0x55: 1,  # SHORT_BINSTRING
    0x54: 4,  # BINSTRING
    0x42: 4,  # BINBYTES
    0x43: 1,  # SHORT_BINBYTES
    0x8E: 8,  # BINBYTES8
    0x96: 8,  # BYTEARRAY8
    0x8A: 1,  # LONG1
    0x8B: 4,  # LONG4
}
_NAMES = {0x58, 0x8C, 0x8D}  # strings that STACK_GLOBAL may take as module and name


def _weight(item: object) -> int:
    return item if type(item) is int else _LEAF


def check(data: bytes, tensor_global: Callable[[str], Any]) -> None:
    """Refuse `data` unless every opcode is one the safe subset allows (module docstring).

    `tensor_global(name)` is not None for the globals whose calls return tensors (codecs'
    rebuild functions).
    """
    end = len(data)
    max_weight = 8 * end + _WEIGHT_SLACK
    stack: list[object] = []
    marks: list[list[object]] = []
    memo: list[object] = []
    pos = 0
    stopped = False

    def fail(what: str) -> FormatError:
        return FormatError(f"skeleton refused at byte {op_pos}: {what}")

    def unsafe(what: str) -> UnsafeGlobalError:
        return UnsafeGlobalError(f"Weights only load failed. {what} (skeleton byte {op_pos})")

    def tuple_of(items: list[object]) -> int:
        weight = 1
        depth = 0
        for item in items:
            w = _weight(item)
            weight += w >> _DEPTH_BITS
            d = w & _DEPTH_MASK
            if d > depth:
                depth = d
        if weight > max_weight:
            raise fail(f"a tuple expands to {weight} items (shared sub-tuples), too many")
        if depth >= MAX_TUPLE_DEPTH:
            raise fail(f"tuples nest deeper than {MAX_TUPLE_DEPTH}")
        return (weight << _DEPTH_BITS) | (depth + 1)

    def pop_mark() -> list[object]:
        nonlocal stack
        if not marks:
            raise fail("no MARK to pop to")
        items = stack
        stack = marks.pop()
        return items

    def target(what: str) -> None:
        if not stack:
            raise fail(f"{what} on an empty stack")
        top = stack[-1]
        if top is _TENSOR or type(top) is _Global:
            name = "a tensor" if top is _TENSOR else f"the global {top}"
            raise unsafe(f"Can only {what} objects of allowlisted types, but got {name}")

    try:
        while pos < end:
            op_pos = pos
            op = data[pos]
            pos += 1
            size = _FIXED.get(op)
            if size is not None:
                pos += size
                stack.append(_LEAF)
                continue
            size = _SIZED.get(op)
            if size is not None:
                n = int.from_bytes(data[pos : pos + size], "little", signed=op == 0x54)
                pos += size
                if n < 0 or pos + n > end:
                    raise fail("a string or number runs past the skeleton")
                stack.append(data[pos : pos + n] if op in _NAMES and n <= 512 else _LEAF)
                pos += n
                continue
            if op == 0x51:  # BINPERSID
                stack.pop()
                stack.append(_TENSOR)
            elif op == 0x71 or op == 0x72 or op == 0x94:  # BINPUT, LONG_BINPUT, MEMOIZE
                if op == 0x94:
                    index = len(memo)
                else:
                    size = 1 if op == 0x71 else 4
                    index = int.from_bytes(data[pos : pos + size], "little")
                    pos += size
                if not stack:
                    raise fail("memoizing an empty stack")
                if index < len(memo):
                    memo[index] = stack[-1]
                elif index == len(memo):
                    memo.append(stack[-1])
                else:
                    raise fail(f"memo index {index} skips ahead of {len(memo)} entries")
            elif op == 0x68 or op == 0x6A:  # BINGET, LONG_BINGET
                size = 1 if op == 0x68 else 4
                index = int.from_bytes(data[pos : pos + size], "little")
                pos += size
                if index >= len(memo):
                    raise fail(f"memo entry {index} was never written")
                stack.append(memo[index])
            elif op == 0x28:  # MARK
                marks.append(stack)
                stack = []
            elif op == 0x75 or op == 0x65 or op == 0x90:  # SETITEMS, APPENDS, ADDITEMS
                pop_mark()
                target("add items to")
            elif op == 0x73:  # SETITEM
                del stack[-2:]
                target("SETITEM on")
            elif op == 0x61:  # APPEND
                stack.pop()
                target("APPEND to")
            elif op == 0x74:  # TUPLE
                items = pop_mark()  # rebinds `stack`: append after it
                stack.append(tuple_of(items))
            elif op == 0x85 or op == 0x86 or op == 0x87:  # TUPLE1, TUPLE2, TUPLE3
                n = op - 0x84
                if len(stack) < n:
                    raise fail("a tuple of missing items")
                items = stack[-n:]
                del stack[-n:]
                stack.append(tuple_of(items))
            elif op == 0x5D or op == 0x7D or op == 0x8F:  # EMPTY_LIST, _DICT, _SET
                stack.append(_LEAF)
            elif op == 0x91:  # FROZENSET
                items = pop_mark()
                stack.append(tuple_of(items))
            elif op == 0x63:  # GLOBAL: "module\nname\n"
                first = data.find(b"\n", pos)
                second = data.find(b"\n", first + 1) if first >= 0 else -1
                if second < 0:
                    raise fail("a GLOBAL without its two lines")
                module = data[pos:first].decode("utf-8", "replace")
                name = data[first + 1 : second].decode("utf-8", "replace")
                pos = second + 1
                stack.append(_Global(f"{module}.{name}"))
            elif op == 0x93:  # STACK_GLOBAL
                name_b, module_b = stack.pop(), stack.pop()
                if type(name_b) is not bytes or type(module_b) is not bytes:
                    raise fail("STACK_GLOBAL of something other than two strings")
                module = module_b.decode("utf-8", "replace")
                stack.append(_Global(f"{module}.{name_b.decode('utf-8', 'replace')}"))
            elif op == 0x52:  # REDUCE
                stack.pop()
                func = stack.pop()
                if type(func) is not _Global:
                    raise unsafe(
                        "Trying to call reduce for unrecognized function (not a global)"
                    )
                stack.append(_LEAF if tensor_global(func) is None else _TENSOR)
            elif op == 0x81 or op == 0x92:  # NEWOBJ, NEWOBJ_EX
                del stack[-(2 if op == 0x81 else 3) + 1 :]
                cls = stack.pop()
                if type(cls) is not _Global:
                    raise unsafe("Can only create new object for classes allowlisted")
                stack.append(_LEAF)
            elif op == 0x62:  # BUILD
                stack.pop()
                target("build")
            elif op == 0x30:  # POP
                stack.pop()
            elif op == 0x31:  # POP_MARK
                pop_mark()
            elif op == 0x32:  # DUP
                stack.append(stack[-1])
            elif op == 0x80:  # PROTO
                if not 2 <= data[pos] <= 5:
                    raise fail(f"pickle protocol {data[pos]}")
                pos += 1
            elif op == 0x95:  # FRAME
                pos += 8
            elif op == 0x2E:  # STOP
                stopped = True
                break
            else:
                raise fail(f"opcode {bytes([op])!r} is not allowed under weights_only")
    except IndexError:
        raise FormatError(f"skeleton is malformed at byte {op_pos}") from None
    if not stopped or pos > end:
        raise FormatError("skeleton ends before its STOP opcode")
