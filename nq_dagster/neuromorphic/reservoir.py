"""Reservoir computing in torch, batched over sources, on CPU or CUDA.

Two modes over one interface (`Reservoir.run(u, state) -> (features, state)`):

- `esn`: leaky-tanh echo-state network (Jaeger 2001; Lukosevicius 2012):
      x_t = (1 - a) x_{t-1} + a tanh(W_in u_t + W x_{t-1} + b)
- `lif`: liquid state machine of leaky integrate-and-fire neurons (Maass 2002),
  one Euler step of dt = 1 per input step:
      v_t = v_{t-1} exp(-1/tau_m) + (1 - exp(-1/tau_m)) (W_in u_t + W z_{t-1} + b)
      z_t = [v_t >= v_th and not refractory];  v_t <- v_reset where z_t
  the features are exponentially filtered spike trains r_t = (1 - a) r_{t-1} + a z_t.

W is sparse (fraction `connectivity` non-zero), scaled so that its spectral
radius (largest eigenvalue modulus, computed exactly with LAPACK in float64)
equals `spectral_radius`. State is returned and accepted, so a stream run in
chunks equals the stream run at once. The readout is ridge regression in closed
form (`ridge_fit`).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch


def scale_to_spectral_radius(w: np.ndarray, radius: float) -> tuple[np.ndarray, float]:
    """Scale `w` so that max |eigenvalue| == radius; returns (scaled w, radius before scaling)."""
    if radius <= 0 or not np.isfinite(radius):
        raise ValueError(f"spectral_radius must be > 0 and finite; got {radius}")
    current = float(np.max(np.abs(np.linalg.eigvals(w.astype(np.float64)))))
    if current == 0:
        raise ValueError("recurrent matrix has spectral radius 0 (too sparse); raise connectivity or size")
    return w * (radius / current), current


@dataclass
class ReservoirState:
    """Everything a stream needs to continue: (B, size) tensors, on the reservoir's device."""

    x: torch.Tensor  # esn activation / lif filtered spikes
    v: torch.Tensor | None = None  # lif membrane potential
    z: torch.Tensor | None = None  # lif spikes of the last step
    refr: torch.Tensor | None = None  # lif remaining refractory steps

    def to(self, device: str) -> ReservoirState:
        return ReservoirState(
            *[t.to(device) if t is not None else None for t in (self.x, self.v, self.z, self.refr)]
        )


class Reservoir:
    def __init__(
        self,
        n_inputs: int,
        size: int = 500,
        spectral_radius: float = 0.95,
        leak: float = 0.3,
        connectivity: float = 0.1,
        input_scaling: float = 1.0,
        bias_scaling: float = 0.2,
        mode: str = "esn",
        seed: int = 0,
        device: str = "cpu",
        dtype: torch.dtype = torch.float32,
        tau_m: float = 4.0,
        v_th: float = 0.5,
        v_reset: float = 0.0,
        refractory: int = 1,
    ):
        if mode not in ("esn", "lif"):
            raise ValueError(f"mode must be 'esn' or 'lif'; got {mode!r}")
        if n_inputs < 1 or size < 2:
            raise ValueError("need n_inputs >= 1 and size >= 2")
        if not 0 < leak <= 1:
            raise ValueError(f"leak must be in (0, 1]; got {leak}")
        if not 0 < connectivity <= 1:
            raise ValueError(f"connectivity must be in (0, 1]; got {connectivity}")
        if tau_m <= 0 or refractory < 0:
            raise ValueError("tau_m must be > 0 and refractory >= 0")
        rng = np.random.default_rng(seed)
        w = rng.uniform(-1, 1, (size, size)) * (rng.random((size, size)) < connectivity)
        w, self.radius_before_scaling = scale_to_spectral_radius(w, spectral_radius)
        w_in = rng.uniform(-1, 1, (size, n_inputs)) * input_scaling
        bias = rng.uniform(-1, 1, size) * bias_scaling
        self.mode, self.size, self.n_inputs, self.leak = mode, size, n_inputs, leak
        self.spectral_radius, self.connectivity = spectral_radius, connectivity
        self._csr: torch.Tensor | None = None
        self.device, self.dtype = device, dtype
        # row-vector convention: x @ W^T
        self.W = torch.as_tensor(w.T, dtype=dtype, device=device).contiguous()
        self.W_in = torch.as_tensor(w_in.T, dtype=dtype, device=device).contiguous()
        self.b = torch.as_tensor(bias, dtype=dtype, device=device)
        self.decay = float(np.exp(-1.0 / tau_m))
        self.v_th, self.v_reset, self.refractory = v_th, v_reset, refractory

    def actual_spectral_radius(self) -> float:
        return float(np.max(np.abs(np.linalg.eigvals(self.W.double().cpu().numpy()))))

    def initial_state(self, batch: int, x0: torch.Tensor | None = None) -> ReservoirState:
        z = torch.zeros((batch, self.size), dtype=self.dtype, device=self.device)
        x = z.clone() if x0 is None else torch.as_tensor(x0, dtype=self.dtype, device=self.device).clone()
        if self.mode == "esn":
            return ReservoirState(x)
        return ReservoirState(x, v=z.clone(), z=z.clone(), refr=z.clone())

    @torch.no_grad()
    def run(
        self, u: torch.Tensor | np.ndarray, state: ReservoirState | None = None
    ) -> tuple[torch.Tensor, ReservoirState]:
        """Drive the reservoir with u (B, T, n_inputs); returns features (B, T, size) and the final state."""
        u = torch.as_tensor(u, dtype=self.dtype, device=self.device)
        if u.ndim == 2:
            u = u[None]
        if u.ndim != 3 or u.shape[-1] != self.n_inputs:
            raise ValueError(f"input must be (batch, time, {self.n_inputs}); got {tuple(u.shape)}")
        if u.shape[1] == 0:
            raise ValueError("input has no time steps")
        if not torch.isfinite(u).all():
            raise ValueError("input contains NaN or infinite values")
        B, T, _ = u.shape
        state = state or self.initial_state(B)
        if self.mode == "esn" and self._use_sparse(B):
            return self._run_esn_sparse(u, state)
        # all input terms in one matmul, time-major so that each step reads one contiguous (B, size) slab
        u_tm = u.transpose(0, 1).reshape(T * B, self.n_inputs)
        drive = torch.addmm(self.b, u_tm, self.W_in).view(T, B, self.size)
        out = torch.empty((T, B, self.size), dtype=self.dtype, device=self.device)
        a = self.leak
        if self.mode == "esn":
            x = state.x
            h = torch.empty((B, self.size), dtype=self.dtype, device=self.device)
            for t in range(T):  # 3 kernels a step, no allocation: h = tanh(drive_t + x W); x = x + a (h - x)
                torch.addmm(drive[t], x, self.W, out=h).tanh_()
                x = torch.lerp(x, h, a, out=out[t])
            return out.transpose(0, 1), ReservoirState(x.clone())
        x, v, z, refr = state.x, state.v, state.z, state.refr
        for t in range(T):
            v = self.decay * v + (1 - self.decay) * (drive[t] + z @ self.W)
            active = refr <= 0
            z = ((v >= self.v_th) & active).to(self.dtype)
            v = torch.where(
                z > 0,
                torch.full_like(v, self.v_reset),
                torch.where(active, v, torch.full_like(v, self.v_reset)),
            )
            refr = torch.where(z > 0, torch.full_like(refr, float(self.refractory)), refr - 1)
            x = (1 - a) * x + a * z
            out[t] = x
        return out.transpose(0, 1), ReservoirState(x, v, z, refr)

    @torch.no_grad()
    def step(
        self, u: torch.Tensor, state: ReservoirState, gather_inputs: bool = False
    ) -> tuple[torch.Tensor, ReservoirState]:
        """One step of a streaming source, u (1, n_inputs) already on the device and checked by the caller:
        the same three kernels as `run`'s dense esn loop for one step (and `run` itself for lif or sparse).

        With `gather_inputs`, the input term reads only the rows of W_in whose input is non-zero (spike
        counts: about 14 % of the neurons fire in a step). Worth it when many sources step in turn and their
        weights do not stay in cache (bench/RESULTS.md); equal to the dense product up to float32 rounding."""
        if self.mode != "esn" or self._use_sparse(u.shape[0]):
            out, st = self.run(u[:, None], state)
            return out[:, 0], st
        if gather_inputs:
            idx = torch.nonzero(u[0]).squeeze(1)
            h = torch.addmm(self.b, u[:, idx], self.W_in.index_select(0, idx))
        else:
            h = torch.addmm(self.b, u, self.W_in)
        torch.addmm(h, state.x, self.W, out=h).tanh_()
        x = torch.lerp(state.x, h, self.leak)
        return x, ReservoirState(x)

    def step_numpy(self, u: np.ndarray, x: np.ndarray) -> np.ndarray | None:
        """One esn step of one source on CPU in numpy, u (1, n_inputs) and x (1, size) float32: the same three
        products as `step` without torch's per-call overhead; the input product reads only the rows of the
        non-zero inputs (spike counts: about 14 % of the neurons fire in a step) and the recurrent one only
        the non-zero weights (scipy CSR): with many sources' weights out of cache (a server's batch) memory
        traffic, not arithmetic, is the cost (bench/RESULTS.md). Equal up to float32 rounding order. None
        where it does not apply (lif, CUDA)."""
        if self.mode != "esn" or self.W.device.type != "cpu" or self.dtype != torch.float32:
            return None
        if not hasattr(self, "_np"):
            import scipy.sparse

            w = self.W.numpy()
            sparse = self.connectivity <= 0.25
            self._np = (
                scipy.sparse.csr_array(w.T) if sparse else w,
                self.W_in.numpy(),
                self.b.numpy(),
                sparse,
            )
        w, w_in, b, sparse = self._np
        nz = np.flatnonzero(u[0]) if len(u) == 1 else None
        h = b + (u[0, nz] @ w_in[nz])[None] if nz is not None and 2 * len(nz) < u.shape[1] else b + u @ w_in
        h += (w @ x.T).T if sparse else x @ w
        np.tanh(h, out=h)
        return x + np.float32(self.leak) * (h - x)

    def _use_sparse(self, batch: int) -> bool:
        """CSR recurrent weights on CPU, where they beat dense BLAS for a sparse W (bench/RESULTS.md);
        dense on CUDA (cuBLAS) and for a single small reservoir, where the sparse kernel's overhead wins."""
        return self.W.device.type == "cpu" and self.connectivity <= 0.25 and (batch > 1 or self.size >= 800)

    def _run_esn_sparse(self, u: torch.Tensor, state: ReservoirState) -> tuple[torch.Tensor, ReservoirState]:
        """The esn loop in column layout, (size, B), so that the recurrent term is one CSR x dense product.

        The input term is computed step by step (a tiny matmul) rather than for the whole stream up front:
        that saves writing and re-reading a (T, size, B) tensor, which costs more than the products.
        """
        if self._csr is None:
            # "sparse CSR support is in beta": the product used here is stable
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                csr = self.W.T.contiguous().to_sparse_csr()  # w (column convention): h^T = w x^T
                # int32 indices: MKL's sparse product runs faster than with torch's default int64
                self._csr = torch.sparse_csr_tensor(
                    csr.crow_indices().int(), csr.col_indices().int(), csr.values(), csr.shape
                )
        B, T, _ = u.shape
        N, a = self.size, self.leak
        uT = u.permute(1, 2, 0).contiguous()  # (T, n_inputs, B)
        w_in, bias = self.W_in.T.contiguous(), self.b[:, None].contiguous()
        out = torch.empty((T, N, B), dtype=self.dtype, device=self.device)
        x = state.x.T.contiguous()
        g = torch.empty((N, B), dtype=self.dtype, device=self.device)
        h = torch.empty((N, B), dtype=self.dtype, device=self.device)
        for t in range(T):
            torch.addmm(bias, w_in, uT[t], out=g)
            torch.addmm(g, self._csr, x, out=h).tanh_()
            x = torch.lerp(x, h, a, out=out[t])
        return out.permute(2, 0, 1), ReservoirState(x.T.contiguous())


def ridge_fit(X: np.ndarray, Y: np.ndarray, alpha: float = 1e-6) -> np.ndarray:
    """Closed-form ridge readout with intercept: W = (X1^T X1 + alpha I')^-1 X1^T Y (intercept not penalised).

    X: (n, d) states, Y: (n,) or (n, k) targets; returns (d + 1, k) weights, last row the intercept.
    """
    X = np.asarray(X, dtype=np.float64)
    Y = np.asarray(Y, dtype=np.float64)
    if Y.ndim == 1:
        Y = Y[:, None]
    if len(X) == 0 or len(X) != len(Y):
        raise ValueError(f"ridge_fit needs matching non-empty X and Y; got {X.shape} and {Y.shape}")
    if alpha < 0:
        raise ValueError("alpha must be >= 0")
    X1 = np.hstack([X, np.ones((len(X), 1))])
    reg = alpha * np.eye(X1.shape[1])
    reg[-1, -1] = 0.0
    return np.linalg.solve(X1.T @ X1 + reg, X1.T @ Y)


def ridge_predict(X: np.ndarray, weights: np.ndarray) -> np.ndarray:
    X = np.asarray(X, dtype=np.float64)
    return X @ weights[:-1] + weights[-1]


class BatchedReservoirs:
    """Many esn reservoirs of one shape (each with its own weights: one per source) stepped at once on CPU:
    the recurrent term is one product with the block-diagonal matrix of their sparse recurrent weights (CSR),
    the input term one sparse product that reads only the input-weight rows of the non-zero inputs (spike
    counts: about 14 % of the neurons fire in a step), or one batched product (dense inputs), instead of
    `Reservoir.step` per source in a Python loop, whose kernel calls and conversions dominate
    (bench/RESULTS.md); equal to it up to float32 rounding order.

    Built for a fixed list of reservoirs (a predictor's loaded sources of one config); `step` advances any
    subset of them, given by their positions in that list."""

    def __init__(self, reservoirs: list[Reservoir]):
        r0 = reservoirs[0]
        if any(
            r.mode != "esn"
            or r.size != r0.size
            or r.n_inputs != r0.n_inputs
            or r.leak != r0.leak
            or r.W.device.type != "cpu"
            for r in reservoirs
        ):
            raise ValueError(
                "batched stepping needs esn reservoirs of one size, input width and leak, on CPU"
            )
        self.count, self.size, self.n_inputs, self.leak = len(reservoirs), r0.size, r0.n_inputs, r0.leak
        N = self.size
        self.W_in = torch.stack([r.W_in for r in reservoirs]).contiguous()  # (S, n_inputs, N), row convention
        self.b = torch.stack([r.b for r in reservoirs]).contiguous()  # (S, N)
        # each reservoir's own weights become views of the stack: one copy in memory (2 MB a source for
        # 1000 x 500), not two
        for k, r in enumerate(reservoirs):
            r.W_in, r.b = self.W_in[k], self.b[k]
            r.__dict__.pop("_np", None)  # `step_numpy`'s arrays of the old tensors
        crow, col, val, nnz = [torch.zeros(1, dtype=torch.int64)], [], [], 0
        with warnings.catch_warnings():  # "sparse CSR support is in beta": the product used here is stable
            warnings.simplefilter("ignore", UserWarning)
            for k, r in enumerate(reservoirs):
                c = r.W.T.contiguous().to_sparse_csr()  # column convention: h^T = w x^T
                crow.append(c.crow_indices()[1:] + nnz)
                col.append(c.col_indices() + k * N)
                val.append(c.values())
                nnz += int(c.values().numel())
            self.csr = torch.sparse_csr_tensor(
                torch.cat(crow).int(), torch.cat(col).int(), torch.cat(val), (self.count * N, self.count * N)
            )
        # the same block-diagonal matrix for scipy (float32 values, int32 indices: the arrays are shared),
        # whose products `step` uses, without torch's per-call overhead (bench/RESULTS.md)
        import scipy.sparse

        self._sp = scipy.sparse.csr_array(
            (self.csr.values().numpy(), self.csr.col_indices().numpy(), self.csr.crow_indices().numpy()),
            shape=tuple(self.csr.shape),
        )

    @torch.no_grad()
    def step(
        self, pos: np.ndarray, u: torch.Tensor, x: torch.Tensor, sparse_input: bool = True
    ) -> torch.Tensor:
        """One step of the reservoirs at positions `pos` (A,): inputs u (A, n_inputs), states x (A, size);
        returns the new states (A, size). In numpy and scipy on the torch tensors' memory (CPU only)."""
        import scipy.sparse

        S, N = self.count, self.size
        pos = np.asarray(pos, dtype=np.int64)
        un, xn = u.numpy().astype(np.float32, copy=False), x.numpy()
        if len(pos) == S and bool((pos == np.arange(S)).all()):
            x_full = xn.reshape(S * N)
        else:
            x_full = np.zeros((S, N), dtype=np.float32)
            x_full[pos] = xn
            x_full = x_full.reshape(S * N)
        h = (self._sp @ x_full).reshape(S, N)[pos]  # recurrent term
        h += self.b.numpy()[pos]
        w_in = self.W_in.numpy()
        # sparse: (A x S n_inputs) sparse inputs, each row in its reservoir's block, times all W_in rows
        if sparse_input:
            a, i = np.nonzero(un)
            indptr = np.zeros(len(pos) + 1, dtype=np.int64)
            np.cumsum(np.bincount(a, minlength=len(pos)), out=indptr[1:])
            U = scipy.sparse.csr_array(
                (un[a, i], pos[a] * self.n_inputs + i, indptr), shape=(len(pos), S * self.n_inputs)
            )
            h += U @ w_in.reshape(S * self.n_inputs, N)
        else:
            h += np.einsum("ai,aij->aj", un, w_in[pos])
        np.tanh(h, out=h)
        return torch.from_numpy(xn + np.float32(self.leak) * (h - xn))
