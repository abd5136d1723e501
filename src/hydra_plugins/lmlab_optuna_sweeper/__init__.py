"""lmlab's Optuna sweeper for Hydra (`hydra/sweeper=lmlab_optuna`), on the current Optuna.

Hydra finds it in the `hydra_plugins` namespace package: config.py registers its config
(and the pruner presets), sweeper.py is the Sweeper, search_space.py reads `params` in the
syntax of Hydra's own Optuna sweeper (choice, range, interval, tag(log, ...)). Nothing here
imports Optuna at import time: Hydra imports every plugin module at start-up.
"""
