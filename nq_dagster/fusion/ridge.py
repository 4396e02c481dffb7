"""Ridge regressions of the fusion models: fitted stages stored as plain coefficients (`LinearStage`), the
penalty chosen among ALPHAS by exact leave-one-out error or on held-out rows (`RidgeBasis`), and the running
Gram sums that let a walk-forward's growing fit rows reuse earlier products (`GramSums`). Used by the fused
model's walk-forward (fusion/walkforward.py) and the ESN baseline (fusion/baselines.py)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

ALPHAS = np.logspace(-9, 5, 15)


@dataclass
class LinearStage:
    """One fitted stage as plain coefficients: ((X[:, cols] - mean) / scale) @ coef + intercept, cols the
    slice start:stop or, when set, the index array `columns`. (Storing numbers, not estimators, keeps
    artifacts free of pickles and prediction free of scikit-learn's per-call overhead.)"""

    start: int
    stop: int
    mean: np.ndarray
    scale: np.ndarray
    coef: np.ndarray
    intercept: float
    alpha: float = 0.0  # the ridge penalty chosen by leave-one-out CV
    columns: np.ndarray | None = None

    def predict(self, X: np.ndarray) -> np.ndarray:
        A = X[:, self.columns] if self.columns is not None else X[:, self.start : self.stop]
        return ((A - self.mean) / self.scale) @ self.coef + self.intercept


class RidgeBasis:
    """Ridge regressions on fixed columns of the fit rows, the penalty chosen by exact leave-one-out error
    among ALPHAS: the computation of scikit-learn's RidgeCV (standardised columns, unpenalised intercept),
    done through one eigen-decomposition of the p x p Gram matrix shared by every target and intercept choice
    instead of an SVD of the n x p matrix per fit (the same penalty and predictions to 1e-9:
    tests/test_walkforward.py; the time against scikit-learn's: bench/train_bench.py, bench/RESULTS.md). The
    walk-forward refits hundreds."""

    def __init__(self, X: np.ndarray, cols: np.ndarray, gram: GramSums | None = None):
        """X: the fit rows. With `gram` (running sums over exactly these rows and columns) the Gram matrix
        comes from the sums (O(p^2) instead of O(n p^2)) and only fits with `held` rows are possible
        (leave-one-out needs every row's leverage, an O(n p^2) product)."""
        self.cols = np.asarray(cols, dtype=np.int64)
        A = X[:, self.cols]
        self.A = A
        if gram is None:
            self.mean = A.mean(axis=0)
            sd = A.std(axis=0)
        else:
            if gram.n != len(A):
                raise ValueError(f"the sums cover {gram.n} rows, the fit has {len(A)}")
            self.mean = gram.sx / gram.n
            sd = np.sqrt(np.maximum(np.diag(gram.sxx) / gram.n - self.mean**2, 0.0))
        # StandardScaler's rule
        self.scale = np.where(sd > 1e-12 * np.maximum(1.0, np.abs(self.mean)), sd, 1.0)
        if gram is None:
            Z = (A - self.mean) / self.scale
            G = Z.T @ Z
        else:
            Z = None
            G = (gram.sxx - gram.n * np.outer(self.mean, self.mean)) / np.outer(self.scale, self.scale)
        s, V = np.linalg.eigh(G)
        self.s, self.V, self.Z = np.clip(s, 0.0, None), V, Z
        self.ZV = Z @ V if Z is not None else None
        self.ZV2 = self.ZV**2 if Z is not None else None
        self.leverage = None  # ZV2 @ (1 / (s + ALPHAS)): the same for every target and intercept choice

    def fit(
        self, y: np.ndarray, intercept: bool, held: tuple[np.ndarray, np.ndarray] | None = None
    ) -> LinearStage:
        """The ridge fit whose penalty has the lowest leave-one-out error on the fit rows or, with `held`
        = (X, y) of later rows, the lowest squared error on those."""
        n = len(y)
        ybar = float(y.mean()) if intercept else 0.0
        yc = y - ybar
        b = self.V.T @ ((self.A.T @ yc - self.mean * yc.sum()) / self.scale)  # V' Z' yc without forming Z
        if held is None and self.ZV is None:
            raise ValueError("leave-one-out needs the fit rows' leverages: build the basis without sums")
        # every penalty at once (one matrix product per quantity instead of two per penalty)
        inv = 1.0 / (self.s[:, None] + ALPHAS[None, :])  # (p, n_alphas)
        W = b[:, None] * inv  # coefficients in the eigenbasis, one column per penalty
        if held is None:
            if self.leverage is None:
                self.leverage = self.ZV2 @ inv
            H = self.leverage + (1.0 / n if intercept else 0.0)
            errs = np.mean(((yc[:, None] - self.ZV @ W) / (1.0 - H)) ** 2, axis=0)
        else:
            Zh = (held[0][:, self.cols] - self.mean) / self.scale
            errs = np.mean((held[1][:, None] - ybar - Zh @ (self.V @ W)) ** 2, axis=0)
        k = int(np.argmin(errs))  # the first (smallest) penalty among equals
        alpha, w = float(ALPHAS[k]), W[:, k]
        cols = self.cols
        contiguous = len(cols) and np.array_equal(cols, np.arange(cols[0], cols[0] + len(cols)))
        return LinearStage(
            int(cols[0]) if len(cols) else 0,
            int(cols[-1]) + 1 if len(cols) else 0,
            self.mean.copy(),
            self.scale.copy(),
            self.V @ w,
            ybar,
            float(alpha),
            None if contiguous else cols.copy(),
        )


class GramSums:
    """Running sums (count, sum, cross-products) of X[:, cols] over rows [lo, hi); `upto(hi)` adds the rows up
    to hi. The walk-forward's fit rows only ever grow, so a source's reservoir Gram matrices cost O(T p^2)
    over all refits instead of O(T^2 p^2 / refit_every)."""

    def __init__(self, X: np.ndarray, cols: np.ndarray, lo: int, keep: np.ndarray | None = None):
        """`keep`: per row of X, whether it is a fit row (None: all; the walk-forward leaves out rows whose
        horizon tick came after a gap in the feed)."""
        self.X, self.cols, self.lo, self.hi = X, np.asarray(cols, dtype=np.int64), lo, lo
        self.keep, self.count = keep, 0
        p = len(self.cols)
        self.sxx, self.sx = np.zeros((p, p)), np.zeros(p)

    @property
    def n(self) -> int:
        return self.count

    def upto(self, hi: int) -> GramSums:
        if hi < self.hi:
            raise ValueError("fit rows only grow in a walk-forward")
        if hi > self.hi:
            A = self.X[self.hi : hi, self.cols]
            if self.keep is not None:
                A = A[self.keep[self.hi : hi]]
            self.count += len(A)
            self.sxx += A.T @ A
            self.sx += A.sum(axis=0)
            self.hi = hi
        return self
