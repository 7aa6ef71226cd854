"""Build the C extension: the Python-free core (src/core) and the binding (src/python)."""
import glob
import os

import numpy
from setuptools import Extension, setup

cflags = ["-std=c11", "-Wall", "-Wextra", "-O2", "-fvisibility=hidden"]
if os.environ.get("PYNQ_ALLOC_WERROR"):
    cflags.append("-Werror")
cflags += os.environ.get("PYNQ_ALLOC_CFLAGS", "").split()

setup(
    ext_modules=[
        Extension(
            "pynq_alloc._pynq_alloc",
            sources=sorted(glob.glob("src/python/*.c")) + sorted(glob.glob("src/core/*.c")),
            depends=glob.glob("src/*/*.h"),
            include_dirs=[numpy.get_include(), "src/core", "src/python"],
            extra_compile_args=cflags,
            libraries=["pthread", "dl"],
        )
    ]
)
