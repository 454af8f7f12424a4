"""Generated kernels: the recurrence compiler's fused kernels, written as a module file named
by the hash of its source and imported from there, so that Numba's ``cache=True`` keeps
their machine code between processes (``$MINIGRAD_CACHE_DIR``, default
``~/.cache/minigrad``).  Their source compiles them with :func:`minigrad.kernels.kernel`."""

import hashlib
import importlib.util
import os
import sys
import tempfile


def cache_dir():
    """Where generated kernel modules (and Numba's cache of them) live."""
    d = os.environ.get("MINIGRAD_CACHE_DIR") or os.path.join(
        os.path.expanduser("~"), ".cache", "minigrad")
    d = os.path.join(d, "kernels")
    try:
        os.makedirs(d, exist_ok=True)
        return d
    except OSError:
        return tempfile.mkdtemp(prefix="minigrad-kernels-")


def load_kernels(source):
    """Import a generated kernel module from a file named by its hash, so that Numba's
    ``cache=True`` can keep the compiled code between processes."""
    name = "mg_" + hashlib.sha1(source.encode()).hexdigest()[:16]
    if name in sys.modules:
        return sys.modules[name]
    path = os.path.join(cache_dir(), name + ".py")
    if not os.path.exists(path):
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "w") as f:
            f.write(source)
        os.replace(tmp, path)
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    sys.modules[name] = module
    return module
