"""Builds the native core `edgeai._core` with pybind11 and ships the model recipes.

Flags target a baseline instruction set (no -march=native): wheels run on other people's machines.
Wider instructions, where they pay, are chosen at run time inside the core.
"""
import glob
import sys

from pybind11.setup_helpers import Pybind11Extension, build_ext
from setuptools import find_packages, setup

extra = []
if sys.platform != "win32":
    extra = ["-O3", "-fvisibility=hidden", "-ffp-contract=off", "-fno-trapping-math"]

core = Pybind11Extension(
    "edgeai._core",
    sorted(glob.glob("csrc/*.cpp")),
    include_dirs=["csrc"],
    cxx_std=17,
    extra_compile_args=extra,
)

setup(
    # The top-level models/ folder (one recipe per model) is installed as edgeai._recipes.
    packages=find_packages(include=["edgeai", "edgeai.*"]) + ["edgeai._recipes"],
    package_dir={"edgeai._recipes": "models"},
    package_data={"edgeai._recipes": ["*.toml"], "edgeai.evaluate": ["data/*.jsonl"]},
    ext_modules=[core],
    cmdclass={"build_ext": build_ext},
)
