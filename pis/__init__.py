"""PruningInferSim: predict how fast a pruned LLM really runs, from measured latency profiles."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("pruninginfersim")
except PackageNotFoundError:  # running from a source tree without install
    __version__ = "0.0.0+unknown"
