"""Shared prefixes: score rows that begin alike without recomputing what they share.

Under causal attention a position's hidden state depends only on the tokens up to it, so rows
that share a prefix (the ``G`` rollouts of a prompt, the ``c+`` and ``c-`` teacher contexts of a
group, identical responses) need that prefix computed once. :func:`layout` merges rows into a
token trie whose nodes are the rows' prefixes, cut into *units* of at most ``max_len`` nodes; a
unit is one sequence in which each node attends to its ancestors and itself only
(:func:`unit_inputs`) and sits at the position of its depth. The logits at the node of a row's
prefix ``s[:k]`` then predict ``s[k]`` exactly as in a forward pass over the row alone (up to the
order of floating-point sums).

Nodes are laid out in depth-first order (rows sorted, each adding the nodes of its new suffix),
so the descendants of node ``j`` are the nodes ``j+1 .. end[j]-1`` and node ``i`` may attend to
``j`` iff ``j <= i < end[j]``. A row's last token predicts nothing and is not a node.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class Unit:
    """One packed sequence of trie nodes.

    Attributes:
        tokens: the token of each node.
        depths: each node's depth (0: a row's first token), i.e. its position id.
        ends: one past each node's last descendant (depth-first order).
    """

    tokens: list[int] = field(default_factory=list)
    depths: list[int] = field(default_factory=list)
    ends: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.tokens)


@dataclass
class Layout:
    """Rows merged into trie units.

    Attributes:
        units: the packed sequences.
        unit: per row, the unit holding its nodes.
        nodes: per row, the node of each prefix ``s[:k]`` for ``k = 1 .. len(s) - 1`` (whose
            logits predict ``s[k]``).
    """

    units: list[Unit]
    unit: list[int]
    nodes: list[list[int]]

    @property
    def size(self) -> int:
        """Positions the units hold (what a forward pass over them computes, before padding)."""
        return sum(len(u) for u in self.units)


def _close(unit: Unit) -> None:
    """Fill ``unit.ends`` from the depths (depth-first order)."""
    ends = [len(unit.tokens)] * len(unit.tokens)
    open_nodes: list[int] = []
    for k, d in enumerate(unit.depths):
        while open_nodes and unit.depths[open_nodes[-1]] >= d:
            ends[open_nodes.pop()] = k
        open_nodes.append(k)
    unit.ends = ends


def layout(rows: list[list[int]], max_len: int) -> Layout:
    """Merge token rows into trie units of at most ``max_len`` nodes.

    Args:
        rows: ``N`` token lists (each at least one token).
        max_len: nodes per unit; a row that needs more gets a unit of its own.

    Returns:
        The :class:`Layout`; rows keep their order in ``unit`` and ``nodes``.
    """
    inputs = [r[:-1] for r in rows]  # a row's last token predicts nothing
    order = sorted(range(len(rows)), key=lambda i: inputs[i])
    units: list[Unit] = []
    unit_of = [0] * len(rows)
    nodes: list[list[int]] = [[] for _ in rows]
    prev: list[int] = []
    prev_path: list[int] = []
    for i in order:
        s = inputs[i]
        common = 0
        if units:
            limit = min(len(s), len(prev))
            while common < limit and s[common] == prev[common]:
                common += 1
            if units[-1].tokens and len(units[-1]) + len(s) - common > max_len:
                units.append(Unit())
                common = 0
        else:
            units.append(Unit())
        unit = units[-1]
        path = prev_path[:common]
        for d in range(common, len(s)):
            path.append(len(unit.tokens))
            unit.tokens.append(s[d])
            unit.depths.append(d)
        unit_of[i], nodes[i] = len(units) - 1, path
        prev, prev_path = s, path
    if units and not units[-1].tokens:
        units.pop()  # only rows of a single token, which need no node
    for unit in units:
        _close(unit)
    return Layout(units, unit_of, nodes)


def unit_inputs(units: list[Unit], pad_id: int, device=None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(input_ids [B, L], position_ids [B, L], attention [B, 1, L, L] bool)`` of ``units``,
    right-padded to the longest; ``attention[b, 0, i, j]``: node ``i`` may attend to node ``j``
    (its ancestors and itself; a padding position attends to itself only)."""
    width = max(len(u) for u in units)
    ids = torch.tensor([u.tokens + [pad_id] * (width - len(u)) for u in units], dtype=torch.long)
    pos = torch.tensor([u.depths + [0] * (width - len(u)) for u in units], dtype=torch.long)
    ends = torch.tensor([u.ends + list(range(len(u) + 1, width + 1)) for u in units], dtype=torch.long)
    i = torch.arange(width)[:, None]  # query
    j = torch.arange(width)[None, :]  # key
    attention = (j <= i) & (i < ends[:, None, :])  # [B, L, L]; padding: its own end
    return ids.to(device), pos.to(device), attention[:, None].to(device)


def plan_units(units: list[Unit], budget: int) -> list[list[int]]:
    """Unit indices per forward pass, grouped by length, each pass holding at most ``budget``
    positions (its units x its longest unit; 0: one pass; a unit longer than ``budget`` alone)."""
    order = sorted(range(len(units)), key=lambda k: (len(units[k]), k))
    passes: list[list[int]] = []
    for k in order:
        if passes and (not budget or len(units[k]) * (len(passes[-1]) + 1) <= budget):
            passes[-1].append(k)
        else:
            passes.append([k])
    return passes
