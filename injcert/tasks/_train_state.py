"""The optimizer's state as flat named tensors (the training state file stores tensors and JSON
metadata only) and back; used by :mod:`injcert.tasks.train`."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor


def _flatten_optimizer(opt: torch.optim.Optimizer) -> tuple[dict[str, Tensor], list[dict[str, Any]]]:
    sd = opt.state_dict()
    tensors = {}
    for idx, st in sd["state"].items():
        for key, val in st.items():
            if not isinstance(val, Tensor):
                val = torch.tensor(val)
            tensors[f"optim/{idx}/{key}"] = val.detach().clone()
    groups = []
    for g in sd["param_groups"]:
        groups.append({k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()})
    return tensors, groups


def _restore_optimizer(opt: torch.optim.Optimizer, tensors: dict[str, Tensor], groups: list[dict[str, Any]]) -> None:
    state: dict[int, dict[str, Tensor]] = {}
    for name, val in tensors.items():
        if not name.startswith("optim/"):
            continue
        _, idx, key = name.split("/", 2)
        state.setdefault(int(idx), {})[key] = val
    fixed = []
    for g in groups:
        g = dict(g)
        if "betas" in g:
            g["betas"] = tuple(g["betas"])
        fixed.append(g)
    opt.load_state_dict({"state": state, "param_groups": fixed})


def _prefixed(tensors: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    n = len(prefix)
    return {k[n:]: v for k, v in tensors.items() if k.startswith(prefix)}
