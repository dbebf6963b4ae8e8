"""LinearProbe: L2-regularised logistic regression fitted by full-batch L-BFGS in torch, as a scikit-learn classifier.

The objective is scikit-learn's ``LogisticRegression(C=C)`` exactly (so a C from one means the same in the other)::

    C · Σ_i CE(x_i, y_i) + ½ ||W||²        (bias not penalised)

minimised in the equivalent form ``mean CE + ||W||² / (2·C·n)``. Two classes use one weight vector and the binary
log loss, as scikit-learn does; more classes use the softmax (multinomial) loss with one row per class.
With ``standardize=True`` the penalty applies in the standardised space (as ``StandardScaler`` +
``LogisticRegression`` would); ``coef_``/``intercept_`` are folded back to act on raw features.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
import torch.nn.functional as F
from scipy.special import expit, softmax
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

from featkit._device import resolve_device
from featkit.errors import FeatkitError, check_choice, check_float, check_int

DTYPES = {"float32": torch.float32, "float64": torch.float64}


class ProbeError(FeatkitError, ValueError):
    """Bad probe input or parameter; also a ValueError, the type scikit-learn's conventions expect."""


def validated(estimator: BaseEstimator, X, y=None, *, reset: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """Run scikit-learn's input validation, re-raising its ValueErrors as one-line :class:`ProbeError`."""
    try:
        if y is None and not reset:
            return validate_data(estimator, X, reset=False, dtype=[np.float64, np.float32]), None
        X, y = validate_data(estimator, X, y, dtype=[np.float64, np.float32])
        check_classification_targets(y)
    except ProbeError:
        raise
    except ValueError as exc:
        raise ProbeError(" ".join(str(exc).split())) from exc
    return X, y


def standardisation(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Column means and standard deviations (float64); constant columns get scale 1, so they stay put."""
    X = np.asarray(X)
    mean = X.mean(axis=0, dtype=np.float64)
    scale = X.std(axis=0, dtype=np.float64)
    scale[scale < 1e-12 * max(1.0, float(np.abs(mean).max(initial=0)))] = 1.0
    return mean, scale


def encode_labels(estimator: BaseEstimator, y: np.ndarray) -> np.ndarray:
    """Set ``classes_`` and return ``y`` as class indices; one class is an error (nothing to separate)."""
    estimator.classes_, y_idx = np.unique(y, return_inverse=True)
    if len(estimator.classes_) < 2:
        raise ProbeError(f"{type(estimator).__name__} needs at least 2 classes in y; got 1 class "
                         f"({estimator.classes_[0]!r}). Check the labels of the training split.")
    return y_idx


def fit_logistic(X: torch.Tensor, y: torch.Tensor, n_classes: int, C: float, *, init: torch.Tensor | None = None,
                 max_iter: int = 1000, tol: float = 1e-6) -> tuple[torch.Tensor, int]:
    """Minimise ``mean CE + ||W||² / (2·C·n)`` with L-BFGS (strong Wolfe line search).

    Returns:
        The flat parameters (``rows·d`` weights then ``rows`` biases; rows = 1 for two classes) and the
        number of L-BFGS iterations.
    """
    n, d = X.shape
    rows = 1 if n_classes == 2 else n_classes
    params = (torch.zeros(rows * (d + 1), dtype=X.dtype, device=X.device) if init is None
              else init.detach().clone().to(X.device, X.dtype)).requires_grad_()
    target = y.to(X.dtype) if rows == 1 else y
    reg = 1.0 / (2.0 * C * n)
    # scipy's L-BFGS-B (behind scikit-learn) stops at a relative loss change of 64·eps; so do we
    opt = torch.optim.LBFGS([params], lr=1.0, max_iter=max_iter, max_eval=2 * max_iter, tolerance_grad=tol,
                            tolerance_change=64 * torch.finfo(X.dtype).eps, history_size=10,
                            line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        W, b = params[: rows * d].view(rows, d), params[rows * d:]
        z = torch.addmm(b, X, W.T)
        loss = (F.binary_cross_entropy_with_logits(z[:, 0], target) if rows == 1 else F.cross_entropy(z, target))
        loss = loss + reg * W.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return params.detach(), int(opt.state[params].get("n_iter", 0))


class LinearProbe(ClassifierMixin, BaseEstimator):
    """L2-regularised logistic regression on frozen features, fitted by full-batch L-BFGS in torch.

    Args:
        C: inverse regularisation strength, scikit-learn's convention (see the module docstring).
        max_iter: most L-BFGS iterations.
        tol: stop when the largest gradient entry of the mean objective is at most this.
        standardize: standardise features with the training mean and standard deviation first.
        device: ``cpu``, ``cuda``, ``auto``... (see :func:`featkit._device.resolve_device`).
        dtype: ``float64`` (matches scikit-learn closely) or ``float32`` (faster, on GPUs especially).
        warm_start: start from the previous fit's solution (a C sweep then converges in fewer steps).
        random_state: unused, accepted for API symmetry; the fit is deterministic.
    """

    def __init__(self, C=1.0, *, max_iter=1000, tol=1e-6, standardize=True, device="cpu", dtype="float64",
                 warm_start=False, random_state=None):
        self.C = C
        self.max_iter = max_iter
        self.tol = tol
        self.standardize = standardize
        self.device = device
        self.dtype = dtype
        self.warm_start = warm_start
        self.random_state = random_state

    def _check_params(self) -> None:
        name = type(self).__name__
        check_float("C", self.C, name, low=0, high=np.inf, error=ProbeError)
        check_int("max_iter", self.max_iter, name, minimum=1, error=ProbeError)
        check_float("tol", self.tol, name, low=0, high=np.inf, closed="left", error=ProbeError)
        check_choice("dtype", self.dtype, DTYPES, name, error=ProbeError)

    def fit(self, X, y) -> LinearProbe:
        """Fit on features ``X`` (n, d) and labels ``y`` (n,)."""
        self._check_params()
        prev = getattr(self, "_params", None) if self.warm_start else None
        prev_classes = getattr(self, "classes_", None)
        X, y = validated(self, X, y, reset=True)
        y_idx = encode_labels(self, y)
        if self.standardize:
            mean, scale = standardisation(X)
            X = (X.astype(np.float64, copy=False) - mean) / scale
        else:  # no float64 copy: a float32 fit of float32 features reads them in place
            mean, scale = np.zeros(X.shape[1]), np.ones(X.shape[1])
        device, dtype = resolve_device(self.device), DTYPES[self.dtype]
        Xt = torch.as_tensor(X, dtype=dtype, device=device)
        yt = torch.as_tensor(y_idx, dtype=torch.int64, device=device)
        same = prev is not None and prev_classes is not None and np.array_equal(prev_classes, self.classes_) and \
            len(prev) == (1 if len(self.classes_) == 2 else len(self.classes_)) * (X.shape[1] + 1)
        params, n_iter = fit_logistic(Xt, yt, len(self.classes_), float(self.C), init=prev if same else None,
                                      max_iter=self.max_iter, tol=self.tol)
        self._params = params.cpu()
        self.n_iter_ = np.array([n_iter])
        if n_iter >= self.max_iter:
            warnings.warn(f"L-BFGS did not converge in max_iter={self.max_iter} iterations; raise max_iter or "
                          "lower C.", ConvergenceWarning, stacklevel=2)
        rows = 1 if len(self.classes_) == 2 else len(self.classes_)
        flat = params.cpu().numpy().astype(np.float64)
        self.coef_ = flat[: rows * X.shape[1]].reshape(rows, -1) / scale
        self.intercept_ = flat[rows * X.shape[1]:] - self.coef_ @ mean
        return self

    def decision_function(self, X) -> np.ndarray:
        """Logits: (n,) for two classes (positive means ``classes_[1]``), else (n, n_classes)."""
        check_is_fitted(self)
        X, _ = validated(self, X, reset=False)
        z = X.astype(np.float64, copy=False) @ self.coef_.T + self.intercept_
        return z[:, 0] if z.shape[1] == 1 else z

    def predict_proba(self, X) -> np.ndarray:
        """Class probabilities, columns in the order of ``classes_``."""
        z = self.decision_function(X)
        if z.ndim == 1:
            p = expit(z)
            return np.stack([1 - p, p], axis=1)
        return softmax(z, axis=1)

    def predict_log_proba(self, X) -> np.ndarray:
        return np.log(self.predict_proba(X))

    def predict(self, X) -> np.ndarray:
        z = self.decision_function(X)
        return self.classes_[(z > 0).astype(int) if z.ndim == 1 else z.argmax(axis=1)]
