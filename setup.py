"""Builds the native core `edgeai._core` with pybind11 and ships the model recipes.

Flags target a baseline instruction set (no -march=native): wheels run on other people's machines.
Wider instructions, where they pay, are chosen at run time inside the core.

The version has one source, pyproject.toml's [project] version: it is compiled into the core as VERSION_INFO
(`edgeai._core.__version__`, re-exported as `edgeai.__version__`), as in pybind11's scikit_build_example.

EDGEAI_SANITIZE=address,undefined (any -fsanitize list) builds the core with those sanitizers, unoptimised
enough for useful reports; tools/sanitize.sh runs the test suite against such a build.
"""
import glob
import os
import re
import sys

from pybind11.setup_helpers import Pybind11Extension, build_ext
from setuptools import find_packages, setup


def project_version() -> str:
    text = open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "pyproject.toml"), encoding="utf-8").read()
    project = text.split("[project]", 1)[1].split("\n[", 1)[0]
    return re.search(r'^version\s*=\s*"([^"]+)"', project, re.M).group(1)


extra_compile, extra_link = [], []
sanitize = os.environ.get("EDGEAI_SANITIZE", "").strip()
if sys.platform != "win32":
    extra_compile = ["-O3", "-fvisibility=hidden", "-ffp-contract=off", "-fno-trapping-math"]
    if sanitize:
        if not re.fullmatch(r"[a-z]+(,[a-z]+)*", sanitize):
            raise SystemExit(f"EDGEAI_SANITIZE must be a comma-separated sanitizer list, got {sanitize!r}")
        flags = [f"-fsanitize={sanitize}", "-fno-omit-frame-pointer", "-fno-sanitize-recover=all", "-g"]
        extra_compile = ["-O1" if f == "-O3" else f for f in extra_compile] + flags
        extra_link = flags
else:
    extra_compile = ["/fp:precise"]
    if sanitize:
        raise SystemExit("EDGEAI_SANITIZE is supported with GCC/Clang builds only")

core = Pybind11Extension(
    "edgeai._core",
    sorted(glob.glob("csrc/*.cpp")),
    include_dirs=["csrc"],
    cxx_std=17,
    define_macros=[("VERSION_INFO", project_version())],
    extra_compile_args=extra_compile,
    extra_link_args=extra_link,
)

setup(
    # The top-level models/ folder (one recipe per model) is installed as edgeai._recipes.
    packages=find_packages(include=["edgeai", "edgeai.*"]) + ["edgeai._recipes"],
    package_dir={"edgeai._recipes": "models"},
    package_data={"edgeai._recipes": ["*.toml"], "edgeai.evaluate": ["data/*.jsonl"]},
    ext_modules=[core],
    cmdclass={"build_ext": build_ext},
)
