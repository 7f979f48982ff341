"""Where edgeai keeps downloaded sources and converted models."""
import os
from pathlib import Path


def cache_dir() -> Path:
    """$EDGEAI_HOME, else $XDG_CACHE_HOME/edgeai, else ~/.cache/edgeai."""
    env = os.environ.get("EDGEAI_HOME")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "edgeai"
