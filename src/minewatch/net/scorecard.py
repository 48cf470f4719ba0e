"""An additive model over binned features (a scorecard), evaluated with plain NumPy.

Every feature is cut into ``nbins`` bins of equal width between two edges fixed at training
time (values below the first edge fall in bin 0, above the last in the last bin). The model's
log-odds is a sum of table look-ups::

    logit(x) = intercept + Σ_f single[f, bin_f(x)] + Σ_(a,b) pair[p, bin_a(x), bin_b(x)]

Scoring a row costs one multiply, one floor and one ``take`` per term, whatever the number of
boosting rounds it was trained with; the sum of the terms says exactly which features pushed a
score up, which is what the detection reasons show.

:meth:`Scorecard.from_trees` builds the tables from a fitted scikit-learn
``HistGradientBoostingClassifier`` trained on the bin codes (:meth:`Scorecard.codes`) with trees
of depth 1 (boosted stumps: a purely additive model) or 2 (at most two features on any path
from the root to a leaf, so each leaf adds to one single or pair table). The conversion is
exact: the scorecard gives the classifier's own log-odds (tested).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass
class Scorecard:
    """Per-feature bin edges and per-bin log-odds, plus optional pair tables."""

    names: tuple[str, ...]
    lo: np.ndarray  # (F,) lower edge of bin 1 is lo + 1 / scale
    scale: np.ndarray  # (F,) bins per unit of the feature
    nbins: int
    single: np.ndarray  # (F, nbins) log-odds added by each bin of each feature
    pairs: np.ndarray  # (P, 2) feature indices of the pair terms
    pair_tables: np.ndarray  # (P, nbins, nbins)
    intercept: float

    # ---- binning ---------------------------------------------------------------------------

    @classmethod
    def bins_from_data(
        cls, names: tuple[str, ...], x: np.ndarray, nbins: int, q: float = 0.002
    ) -> tuple[np.ndarray, np.ndarray]:
        """``lo`` and ``scale`` spanning the ``q`` to ``1 - q`` quantiles of each column."""
        lo_q = np.nanquantile(x, q, axis=0)
        hi_q = np.nanquantile(x, 1.0 - q, axis=0)
        span = np.where(hi_q > lo_q, hi_q - lo_q, 1.0)
        return lo_q.astype(np.float64), (nbins / span).astype(np.float64)

    def code(self, j: int, col: np.ndarray) -> np.ndarray:
        """Bin index of one feature column (NaN counts as the lowest bin, ±inf as the end
        bins)."""
        z = col - self.lo[j]
        z *= self.scale[j]
        np.fmax(z, 0.0, out=z)  # fmax: NaN → 0
        np.minimum(z, self.nbins - 1.0, out=z)
        return z.astype(np.intp)

    def codes(self, x: np.ndarray) -> np.ndarray:
        """Bin indices, one column per feature (rows of ``x`` are samples)."""
        out = np.empty(x.shape, dtype=np.intp)
        for j in range(x.shape[1]):  # one pass per feature, not per row
            out[:, j] = self.code(j, x[:, j])
        return out

    # ---- scoring ---------------------------------------------------------------------------

    @property
    def term_names(self) -> tuple[str, ...]:
        return self.names + tuple(f"{self.names[a]}×{self.names[b]}" for a, b in self.pairs)

    def used_single(self) -> np.ndarray:
        """Indices of the features whose single table is not all zero."""
        return np.flatnonzero(np.any(self.single != 0.0, axis=1))

    def logit_columns(self, columns: Iterator[np.ndarray], n: int) -> np.ndarray:
        """Log-odds from feature columns given one at a time (in :attr:`names` order), so a
        caller can compute each feature just before it is binned, never the whole matrix."""
        out = np.full(n, self.intercept)
        used = set(self.used_single().tolist())
        in_pairs = set(self.pairs.ravel().tolist())
        codes = {}
        for j, col in enumerate(columns):
            if j not in used and j not in in_pairs:
                continue
            c = self.code(j, col)
            if j in used:
                out += self.single[j].take(c)
            if j in in_pairs:
                codes[j] = c
        b = self.nbins
        for p, (i, j) in enumerate(self.pairs):
            out += self.pair_tables[p].ravel().take(codes[int(i)] * b + codes[int(j)])
        return out

    def logit_codes(self, c: np.ndarray) -> np.ndarray:
        """Log-odds from bin codes (as :meth:`codes` gives them)."""
        out = np.full(c.shape[0], self.intercept)
        for j in self.used_single():
            out += self.single[j].take(c[:, j])
        b = self.nbins
        for p, (i, j) in enumerate(self.pairs):
            out += self.pair_tables[p].ravel().take(c[:, i] * b + c[:, j])
        return out

    def logit(self, x: np.ndarray) -> np.ndarray:
        """Log-odds for a feature matrix (columns in :attr:`names` order)."""
        return self.logit_codes(self.codes(x))

    def contributions(self, x: np.ndarray) -> np.ndarray:
        """Each term's log-odds per row, shape (rows, len(term_names)); they sum, with the
        intercept, to :meth:`logit`."""
        c = self.codes(x)
        cols = [self.single[j].take(c[:, j]) for j in range(len(self.names))]
        b = self.nbins
        cols += [self.pair_tables[p].ravel().take(c[:, i] * b + c[:, j]) for p, (i, j) in
                 enumerate(self.pairs)]  # fmt: skip
        return np.stack(cols, axis=1) if cols else np.zeros((x.shape[0], 0))

    def centered(self, x: np.ndarray, weight: np.ndarray | None = None) -> Scorecard:
        """The same function with every term shifted to a (weighted) mean of zero over ``x``
        and the shifts moved into the intercept, so a term's value reads "how much this
        feature moves the log-odds compared with a typical row of ``x``"."""
        contrib = self.contributions(x)
        w = np.ones(x.shape[0]) if weight is None else weight
        means = (contrib * w[:, None]).sum(axis=0) / w.sum()
        f = len(self.names)
        single = self.single - means[:f, None]  # an unused feature's table stays all zero
        pair_tables = self.pair_tables - means[f:, None, None]
        return Scorecard(
            names=self.names,
            lo=self.lo,
            scale=self.scale,
            nbins=self.nbins,
            single=single,
            pairs=self.pairs,
            pair_tables=pair_tables,
            intercept=self.intercept + float(means.sum()),
        )

    # ---- from boosted trees ----------------------------------------------------------------

    @classmethod
    def from_trees(
        cls,
        est: Any,
        names: tuple[str, ...],
        lo: np.ndarray,
        scale: np.ndarray,
        nbins: int,
    ) -> Scorecard:
        """Tables from a fitted binary ``HistGradientBoostingClassifier`` trained on
        :meth:`codes` (numerical features, trees of depth ≤ 2)."""
        f = len(names)
        single = np.zeros((f, nbins))
        pair_index: dict[tuple[int, int], int] = {}
        pair_list: list[np.ndarray] = []
        intercept = float(np.ravel(est._baseline_prediction)[0])
        grid = np.arange(nbins, dtype=np.float64)
        for (pred,) in est._predictors:
            nodes = pred.nodes
            if nodes["is_categorical"].any():
                raise ValueError("categorical splits cannot become a scorecard")
            stack: list[tuple[int, list[tuple[int, float, bool]]]] = [(0, [])]
            while stack:  # walks the nodes of one small tree (≤ 7), not the data
                i, path = stack.pop()
                node = nodes[i]
                if node["is_leaf"]:
                    value = float(node["value"])
                    feats = sorted({p[0] for p in path})
                    masks = {}
                    for j in feats:
                        m = np.ones(nbins, dtype=bool)
                        for fj, thr, left in path:
                            if fj == j:
                                m &= (grid <= thr) if left else (grid > thr)
                        masks[j] = m
                    if not feats:
                        intercept += value
                    elif len(feats) == 1:
                        single[feats[0]] += value * masks[feats[0]]
                    elif len(feats) == 2:
                        key = (feats[0], feats[1])
                        if key not in pair_index:
                            pair_index[key] = len(pair_list)
                            pair_list.append(np.zeros((nbins, nbins)))
                        pair_list[pair_index[key]] += value * np.outer(masks[key[0]], masks[key[1]])
                    else:
                        raise ValueError("a leaf depends on more than two features")
                    continue
                j, thr = int(node["feature_idx"]), float(node["num_threshold"])
                stack.append((int(node["left"]), [*path, (j, thr, True)]))
                stack.append((int(node["right"]), [*path, (j, thr, False)]))
        pairs = np.array(list(pair_index), dtype=np.int64).reshape(-1, 2)
        tables = np.stack(pair_list) if pair_list else np.zeros((0, nbins, nbins))
        return cls(
            names=tuple(names),
            lo=np.asarray(lo, dtype=np.float64),
            scale=np.asarray(scale, dtype=np.float64),
            nbins=int(nbins),
            single=single,
            pairs=pairs,
            pair_tables=tables,
            intercept=intercept,
        )

    # ---- storage ---------------------------------------------------------------------------

    def arrays(self) -> dict[str, np.ndarray]:
        """Arrays under ``card_``-prefixed names (for an .npz file)."""
        return {
            "card_names": np.array(self.names),
            "card_lo": self.lo,
            "card_scale": self.scale,
            "card_nbins": np.array([self.nbins]),
            "card_single": self.single,
            "card_pairs": self.pairs,
            "card_pair_tables": self.pair_tables,
            "card_intercept": np.array([self.intercept]),
        }

    @classmethod
    def from_arrays(cls, a: Any) -> Scorecard:
        return cls(
            names=tuple(str(n) for n in a["card_names"]),
            lo=np.asarray(a["card_lo"], dtype=np.float64),
            scale=np.asarray(a["card_scale"], dtype=np.float64),
            nbins=int(a["card_nbins"][0]),
            single=np.asarray(a["card_single"], dtype=np.float64),
            pairs=np.asarray(a["card_pairs"], dtype=np.int64).reshape(-1, 2),
            pair_tables=np.asarray(a["card_pair_tables"], dtype=np.float64),
            intercept=float(a["card_intercept"][0]),
        )
