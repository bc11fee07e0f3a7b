"""Compiles a CUDA module's source for the emulated device: the emulator's header, the source as it is,
and one C entry point per instantiated kernel, built by the system C++ compiler into a shared library.

Libraries are cached by content (header, source, kernels, flags, compiler) in
``$SCRATCHNET_CACHE_DIR`` or ``~/.cache/scratchnet``, so a module compiles once per machine.
"""

import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

HEADER = Path(__file__).with_name("emulated_cuda.h")
_FLAGS = ("-std=c++17", "-O2", "-fPIC", "-shared", "-fvisibility=hidden", "-w")
# Under AddressSanitizer an out-of-bounds access in a kernel stops the process with its file and line.
_SANITIZE_FLAGS = ("-fsanitize=address", "-fno-omit-frame-pointer", "-g")


class CompilerError(RuntimeError):
    """No C++ compiler, or the source does not compile for the emulated device."""


def compiler():
    """The C++ compiler the emulator builds with: ``$CXX``, else ``g++``."""
    name = os.environ.get("CXX", "g++")
    path = shutil.which(name)
    if path is None:
        raise CompilerError(
            f"the emulated CUDA device compiles the kernels with a C++ compiler, and {name!r} is not on PATH "
            f"(install g++ or set CXX)")
    return path


def sanitizing():
    """Whether modules are built with AddressSanitizer (``SCRATCHNET_CUDA_EMULATOR_ASAN=1``; the process
    must then preload the sanitizer's runtime)."""
    return os.environ.get("SCRATCHNET_CUDA_EMULATOR_ASAN") == "1"


def build(code, name_expressions):
    """The path of the shared library for ``code`` whose entry ``scratchnet_launch_<i>`` launches
    ``name_expressions[i]`` and ``scratchnet_arity_<i>`` gives its parameter count."""
    cxx = compiler()
    flags = _FLAGS + (_SANITIZE_FLAGS if sanitizing() else ())
    source = _translation_unit(code, name_expressions)
    key = hashlib.sha256("\0".join((HEADER.read_text(), source, " ".join(flags), _version(cxx))).encode()).hexdigest()
    library = _cache_dir() / f"module-{key[:32]}.so"
    if library.exists():
        return library
    library.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=library.parent) as work:
        unit = Path(work, "module.cpp")
        unit.write_text(source)
        built = Path(work, "module.so")
        result = subprocess.run([cxx, *flags, f"-I{HEADER.parent}", str(unit), "-o", str(built)],
                                capture_output=True, text=True)
        if result.returncode != 0:
            raise CompilerError(f"the emulated device could not compile the CUDA module:\n{result.stderr.strip()}")
        os.replace(built, library)  # atomic: a concurrent process sees the whole library or none
    return library


def _translation_unit(code, name_expressions):
    entries = []
    for index, expression in enumerate(name_expressions):
        entries.append(
            f'extern "C" __attribute__((visibility("default"))) int scratchnet_launch_{index}('
            f"const unsigned* geometry, void** slots, int team, char* error, std::size_t error_size)\n"
            f"{{ return ::emu::launch(&{expression}, geometry, slots, team, error, error_size); }}\n"
            f'extern "C" __attribute__((visibility("default"))) int scratchnet_arity_{index}()\n'
            f"{{ return ::emu::arity(&{expression}); }}\n")
    return f'#include "{HEADER.name}"\n{code}\n\n// ---- entry points ----\n' + "".join(entries)


def _version(cxx):
    return subprocess.run([cxx, "--version"], capture_output=True, text=True).stdout


def _cache_dir():
    root = os.environ.get("SCRATCHNET_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "scratchnet")
    return Path(root, "cuda-emulator")


_FUNCTION_HEAD = re.compile(r"\b(?:__global__|__device__)\b[^;{(]*?\b(\w+)\s*\(")


def kernels_with_barriers(code):
    """Names of the functions in ``code`` that reach ``__syncthreads()``, directly or through the
    ``__device__`` functions they call: their blocks run as teams of fibers, every other kernel serially."""
    bodies = {}
    for head in _FUNCTION_HEAD.finditer(code):
        body_start = code.find("{", _closing_paren(code, head.end() - 1))
        bodies[head.group(1)] = code[body_start:_closing_brace(code, body_start) + 1]
    syncing = {name for name, body in bodies.items() if "__syncthreads" in body}
    while True:
        callers = {name for name, body in bodies.items() if name not in syncing
                   and any(re.search(rf"\b{callee}\s*\(", body) for callee in syncing)}
        if not callers:
            return syncing
        syncing |= callers


def _closing_paren(code, start):
    return _matching(code, start, "(", ")")


def _closing_brace(code, start):
    return _matching(code, start, "{", "}")


def _matching(code, start, opening, closing):
    depth = 0
    for index in range(start, len(code)):
        depth += (code[index] == opening) - (code[index] == closing)
        if depth == 0:
            return index
    raise CompilerError(f"unbalanced {opening}{closing} in the CUDA source")
