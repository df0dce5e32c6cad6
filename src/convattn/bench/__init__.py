"""Cost measurement: parameters, MACs, latency and memory, and the ``convattn bench`` tool.

* :mod:`.flops`: ``count_macs`` / ``count_train_macs`` (FlopCounterMode / 2, math SDPA backend),
  ``count_params``.
* :mod:`.runner`: ``run_benchmark(BenchConfig(...))`` runs each model in a fresh worker process
  (:mod:`.worker`) and returns the report; :mod:`.report` (and :mod:`.plots`, which it calls)
  write it out; :mod:`.derived` holds the derived quantities both use.
* :mod:`.command`: ``add_bench_arguments(parser)`` and ``bench_command(args)`` for the CLI.
"""

from .catalog import BENCH_ONLY_MODELS, build_model, deploy_form, resolve_models
from .command import add_bench_arguments, bench_command
from .derived import fit_exponent, scaling_exponents
from .flops import count_macs, count_params, count_train_macs
from .machine import environment, matmul_rate
from .report import write_outputs
from .runner import BenchConfig, run_benchmark
from .vit_reference import VitReference

__all__ = [
    "BENCH_ONLY_MODELS",
    "BenchConfig",
    "VitReference",
    "add_bench_arguments",
    "bench_command",
    "build_model",
    "count_macs",
    "count_params",
    "count_train_macs",
    "deploy_form",
    "environment",
    "fit_exponent",
    "matmul_rate",
    "resolve_models",
    "run_benchmark",
    "scaling_exponents",
    "write_outputs",
]
