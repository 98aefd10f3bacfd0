r"""``ScoreModel``: adapt any PyTorch score network so that every injcert integrator and the
certificate accept it.

A user network predicts $\varepsilon$, a denoiser $D$ or a velocity $v$ for a variance-preserving
schedule, $x_t = \alpha_t x_0 + \sigma_t\varepsilon$ ($\alpha_t^2 + \sigma_t^2 = 1$). The injcert
integrators need $\varepsilon_\theta(x, t, c)$; :class:`ScoreModel` converts exactly:

* ``"eps"``: $\varepsilon = F(x, t)$;
* ``"denoiser"``: $x = \alpha D + \sigma\varepsilon$ gives $\varepsilon = (x - \alpha D)/\sigma$; at
  $\sigma_t = 0$ (the first grid time is $t = 0$) this is undefined, so the division is by
  $\max(\sigma_t, \sigma_{\min})$ (``sigma_min``, default $10^{-3}$, as the shipped model's
  ``sigma_cap``): $\varepsilon = w(t)(x - \alpha D)$ with $w = 1/\max(\sigma_t, \sigma_{\min})$;
  $\mathrm{Lip}_x\varepsilon \le w\,(1 + \alpha\,\mathrm{Lip}_x D)$;
* ``"v"`` (Salimans & Ho 2022): $v = \alpha\varepsilon - \sigma x_0$ with $x_0 = \alpha x - \sigma v$
  gives $\varepsilon = \sigma x + \alpha v$ (indeed $\sigma(\alpha x_0 + \sigma\varepsilon) +
  \alpha(\alpha\varepsilon - \sigma x_0) = \varepsilon$); $\mathrm{Lip}_x\varepsilon \le \sigma + \alpha
  \,\mathrm{Lip}_x v$.

**The certified bound is pointwise in $t$.** :meth:`ScoreModel.certified_lipschitz_at` bounds the
$\varepsilon$ map (conversion included: it is traced together with the network, so the formulas above
are what the tracer proves, with outward rounding) by :func:`injcert.lipschitz_bound` on a copy of
the network with ``t`` held fixed — at exactly the ``t`` the network sees (the float the integrators
pass, in the network's dtype). A bound at ``t`` says nothing about another ``t'``: the certificate
uses these bounds only at the times where the integrators evaluate the network (the grid times),
and does **not** certify the continuous flow (Grönwall) for a user model (``proofs/08``,
``docs/tutorials/certify_your_network.md``). The attribute :attr:`ScoreModel.lipschitz_pointwise`
tells :class:`~injcert.solvers.ProbabilityFlowField` and the certificate so.

With a condition, the bound is taken jointly in $(x, y, m)$ (the network traced as a function of the
concatenation), which bounds $\mathrm{Lip}_x$ uniformly over every condition.
"""

from __future__ import annotations

import copy
import inspect
import math
from typing import Any, Optional, Sequence, Union

import torch
from torch import Tensor, nn

from ..errors import InjcertError
from ..registry import frozen_copy
from .schedule import VPSchedule, get_schedule

__all__ = ["ScoreModel", "ScoreModelError", "PARAMETERIZATIONS", "MASK_CHANNELS", "to_eps", "check_schedule"]

#: The parameterisations a user network may predict.
PARAMETERIZATIONS = ("eps", "denoiser", "v")
#: Channels of injcert's condition mask ``m`` (``y`` has the image's channels).
MASK_CHANNELS = 3
#: What a schedule object needs for the integrators and the certificate.
SCHEDULE_NEEDS = ("alpha", "sigma", "varsigma", "t_of_varsigma", "alpha_of_varsigma", "t_max")


class ScoreModelError(InjcertError, TypeError):
    """A user network that does not fit the :class:`ScoreModel` protocol (signature, output, options)."""


def check_schedule(schedule: Any) -> VPSchedule:
    """A schedule by name (``"cosine"``, ``"linear"``) through :func:`get_schedule`, or an object with
    :data:`SCHEDULE_NEEDS`; :class:`ScoreModelError` naming what is missing otherwise."""
    if isinstance(schedule, (str, dict)) or schedule is None:
        return get_schedule(schedule)
    missing = [n for n in SCHEDULE_NEEDS if not hasattr(schedule, n)]
    if missing:
        raise ScoreModelError(
            f"schedule of type {type(schedule).__name__} lacks {', '.join(missing)}; pass a name "
            "('cosine', 'linear') or a VPSchedule (injcert.model.schedule)")
    t_max = schedule.t_max
    if not isinstance(t_max, (int, float)) or not 0.0 < float(t_max) < 1.0:
        raise ScoreModelError(f"schedule.t_max must be a float in (0, 1), got {t_max!r}")
    return schedule


def to_eps(out: Tensor, x: Tensor, parameterization: str, alpha: Tensor, sigma: Tensor,
           sigma_min: float = 1e-3) -> Tensor:
    """The reference conversion of a network output to $\\varepsilon$ (``alpha``, ``sigma`` broadcastable
    to ``x``); :class:`ScoreModel` computes the same, with the coefficients in the network's dtype."""
    if parameterization == "eps":
        return out
    if parameterization == "denoiser":
        return (x - alpha * out) / torch.clamp(sigma, min=sigma_min)
    if parameterization == "v":
        return sigma * x + alpha * out
    raise ScoreModelError(f"unknown parameterization {parameterization!r}; choices: {list(PARAMETERIZATIONS)}")


class _EpsMap(nn.Module):
    """$\\varepsilon(x) = $ conversion of ``net(x, t[, y, m])``; the coefficients ``a`` and ``b`` are
    inputs, so that the whole map can be traced with them held fixed:
    eps: ``out``; denoiser: ``(x - a out) * b`` ($a = \\alpha$, $b = w$); v: ``b x + a out`` ($b = \\sigma$)."""

    def __init__(self, net: nn.Module, parameterization: str, call: str, names: Optional[tuple]) -> None:
        super().__init__()
        self.net = net
        self.parameterization = parameterization
        self.call = call
        self.names = names

    def forward(self, x: Tensor, t: Tensor, a: Tensor, b: Tensor, y: Optional[Tensor] = None,
                m: Optional[Tensor] = None) -> Tensor:
        if self.call == "plain":
            out = self.net(x, t)
        elif self.call == "positional":
            out = self.net(x, t, y, m)
        else:
            out = self.net(x, t, **{self.names[0]: y, self.names[1]: m})
        if self.parameterization == "denoiser":
            return (x - a * out) * b
        if self.parameterization == "v":
            return b * x + a * out
        return out


class _JointInCondition(nn.Module):
    """``z = cat(x, y, m) -> eps(x, t, y, m)``: a bound in ``z`` bounds $\\mathrm{Lip}_x$ for every ``(y, m)``."""

    def __init__(self, eps_map: _EpsMap, c: int, cy: int) -> None:
        super().__init__()
        self.eps_map, self.c, self.cy = eps_map, c, cy

    def forward(self, z: Tensor, t: Tensor, a: Tensor, b: Tensor) -> Tensor:
        c, cy = self.c, self.cy
        return self.eps_map(z[:, :c], t, a, b, z[:, c:c + cy], z[:, c + cy:])


def _describe_signature(fn: Any) -> str:
    try:
        return f"forward{inspect.signature(fn)}"
    except (TypeError, ValueError):
        return "an uninspectable forward"


def _call_style(net: nn.Module, condition: Optional[tuple]) -> str:
    """``"plain"`` (``net(x, t)``), ``"positional"`` (``net(x, t, y, m)``) or ``"keyword"``."""
    want = ("forward(x, t)" if condition is None else
            f"forward(x, t, {condition[0]}, {condition[1]}) or forward(x, t, *, {condition[0]}=..., {condition[1]}=...)")
    try:
        sig = inspect.signature(net.forward)
    except (TypeError, ValueError):
        return "plain" if condition is None else "positional"
    params = list(sig.parameters.values())
    kinds = inspect.Parameter
    positional = [p for p in params if p.kind in (kinds.POSITIONAL_ONLY, kinds.POSITIONAL_OR_KEYWORD)]
    varargs = any(p.kind == kinds.VAR_POSITIONAL for p in params)
    required = [p for p in positional if p.default is inspect.Parameter.empty]
    required_kw = [p for p in params if p.kind == kinds.KEYWORD_ONLY and p.default is inspect.Parameter.empty]
    found = _describe_signature(net.forward)
    if condition is None:
        if (len(positional) >= 2 or varargs) and len(required) <= 2 and not required_kw:
            return "plain"
        raise ScoreModelError(f"the network must have the signature {want} (condition=None); found {found}")
    names = {p.name for p in params}
    varkw = any(p.kind == kinds.VAR_KEYWORD for p in params)
    if (set(condition) <= names or varkw) and (len(positional) >= 2 or varargs) and len(required) <= 2 and \
            all(p.name in condition for p in required_kw):
        if len(positional) >= 4 and [p.name for p in positional[2:4]] == list(condition):
            return "positional"
        return "keyword"
    if (len(positional) >= 4 or varargs) and not required_kw and len(required) <= 4:
        return "positional"
    raise ScoreModelError(f"the network must have the signature {want}; found {found}")


class ScoreModel(nn.Module):
    r"""A user's score network as an injcert model: ``forward(x, t, y=None, m=None) -> eps``.

    Arguments:
        net: the network, ``net(x, t)`` (``condition=None``) or ``net(x, t, y, m)`` / with the
            condition as keyword inputs named by ``condition``. ``x`` is ``N×C×H×W``, ``t`` has shape
            ``(N,)`` (in the network's dtype), the output has ``x``'s shape.
        schedule: ``"cosine"``, ``"linear"``, a config dict, or a schedule object with ``alpha``,
            ``sigma``, ``varsigma``, ``t_of_varsigma``, ``alpha_of_varsigma`` and ``t_max``.
        parameterization: what the network predicts: ``"eps"``, ``"denoiser"`` or ``"v"``.
        condition: ``None`` (unconditional; ``y``, ``m`` are ignored) or the names of the network's
            two condition inputs, e.g. ``("y", "m")``; ``y`` has ``C`` channels, ``m``
            :data:`MASK_CHANNELS`; missing ones are passed as zeros (injcert's "nothing observed").
        in_channels: ``C``; by default the ``in_channels`` of the network's first ``nn.Conv2d``.
        lipschitz_budget: a declared uniform bound of $\mathrm{Lip}_x\varepsilon$ over every ``t``; the
            certificate checks it at the grid times (it cannot be checked in between) and reports
            the continuous flow's constants as conditional on it.
        sigma_min: the floor of $\sigma_t$ in the denoiser conversion.
        frac_bits: fractional bits of the reversible integrator's lattice in the certificate
            (default: chosen from the certified bounds, :func:`injcert.certify.context.frac_bits_for`).
        probe_size: the spatial size of the input used to trace the network (the bound is
            size-independent; the network must accept this size).

    Raises:
        ScoreModelError: a network that is not an ``nn.Module``, a signature that does not fit
            ``condition``, an unknown parameterization, a schedule object that lacks what is needed.
    """

    #: The certified bound holds at the ``t`` it is computed for only (see the module docstring).
    lipschitz_pointwise = True
    #: Not a noise-adaptive model (its bound is not non-increasing in ``t``).
    lipschitz_kappa = None

    def __init__(self, net: nn.Module, schedule: Any = "cosine", parameterization: str = "eps",
                 condition: Optional[Sequence[str]] = None, *, in_channels: Optional[int] = None,
                 lipschitz_budget: Optional[float] = None, sigma_min: float = 1e-3,
                 frac_bits: Optional[int] = None, probe_size: int = 32) -> None:
        super().__init__()
        if isinstance(net, ScoreModel):
            raise ScoreModelError("the network is already a ScoreModel; pass it as it is")
        if not isinstance(net, nn.Module):
            raise ScoreModelError(f"ScoreModel needs an nn.Module with forward(x, t, ...), got {type(net).__name__}")
        if parameterization not in PARAMETERIZATIONS:
            raise ScoreModelError(f"unknown parameterization {parameterization!r}; choices: {list(PARAMETERIZATIONS)}")
        if condition is not None:
            if isinstance(condition, str) or len(tuple(condition)) != 2 or \
                    not all(isinstance(n, str) and n.isidentifier() for n in condition):
                raise ScoreModelError(f"condition must be None or two input names like ('y', 'm'), got {condition!r}")
            condition = tuple(condition)
        if lipschitz_budget is not None and not (float(lipschitz_budget) > 0):
            raise ScoreModelError(f"lipschitz_budget must be a positive number or None, got {lipschitz_budget!r}")
        if not (isinstance(sigma_min, (int, float)) and 0.0 < float(sigma_min) < 1.0):
            raise ScoreModelError(f"sigma_min must lie in (0, 1), got {sigma_min!r}")
        self.schedule = check_schedule(schedule)
        self.parameterization = parameterization
        self.condition = condition
        self.sigma_min = float(sigma_min)
        self.lipschitz_budget = None if lipschitz_budget is None else float(lipschitz_budget)
        self.frac_bits = frac_bits
        self.probe_size = int(probe_size)
        self.eps_map = _EpsMap(net, parameterization, _call_style(net, condition), condition)
        if in_channels is None:
            conv = next((mod for mod in net.modules() if isinstance(mod, nn.Conv2d)), None)
            if conv is None or condition is not None:
                in_channels = None
            else:
                in_channels = int(conv.in_channels)
        self.in_channels = None if in_channels is None else int(in_channels)
        self._bounds: dict = {}

    @property
    def net(self) -> nn.Module:
        return self.eps_map.net

    @property
    def config(self) -> dict[str, Any]:
        """What the certificate reports about the wrapper (the network itself is the user's)."""
        sch = self.schedule.to_config() if hasattr(self.schedule, "to_config") else repr(self.schedule)
        return {"network": type(self.net).__name__, "parameterization": self.parameterization,
                "condition": None if self.condition is None else list(self.condition),
                "in_channels": self.in_channels, "schedule": sch, "sigma_min": self.sigma_min}

    def _dtype(self) -> torch.dtype:
        for p in list(self.net.parameters()) + list(self.net.buffers()):
            if p.is_floating_point():
                return p.dtype
        return torch.get_default_dtype()

    def coefficients(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """``(a, b)`` of :class:`_EpsMap` at ``t`` (shape ``(N,)``), in float64, shape ``N×1×1×1``."""
        t64 = t.detach().to(torch.float64)
        alpha = torch.as_tensor(self.schedule.alpha(t64), dtype=torch.float64).reshape(-1, 1, 1, 1)
        sigma = torch.as_tensor(self.schedule.sigma(t64), dtype=torch.float64).reshape(-1, 1, 1, 1)
        if self.parameterization == "denoiser":
            return alpha, 1.0 / torch.clamp(sigma, min=self.sigma_min)
        if self.parameterization == "v":
            return alpha, sigma
        return alpha, torch.zeros_like(alpha)

    def _times(self, t: Any, n: int, device: torch.device) -> Tensor:
        t = torch.as_tensor(t)
        if t.dim() == 0:
            t = t.expand(n)
        if t.dim() != 1 or t.shape[0] != n:
            raise ScoreModelError(f"t must be a number or a tensor of shape ({n},), got shape {tuple(t.shape)}")
        return t.to(device=device, dtype=self._dtype())

    def _condition(self, x: Tensor, y: Optional[Tensor], m: Optional[Tensor]) -> tuple:
        if self.condition is None:
            return None, None
        n, _, h, w = x.shape
        y = torch.zeros_like(x) if y is None else y.to(x.dtype)
        m = x.new_zeros((n, MASK_CHANNELS, h, w)) if m is None else m.to(x.dtype)
        return y, m

    def forward(self, x: Tensor, t: Any, y: Optional[Tensor] = None, m: Optional[Tensor] = None) -> Tensor:
        """$\\varepsilon_\\theta(x, t, c)$; ``t`` is cast to the network's dtype (as the bound assumes)."""
        if not isinstance(x, Tensor) or x.dim() != 4:
            raise ScoreModelError(f"x must be a tensor N×C×H×W, got {getattr(x, 'shape', type(x).__name__)}")
        if self.in_channels is not None and x.shape[1] != self.in_channels:
            raise ScoreModelError(f"x has {x.shape[1]} channels, the model takes in_channels={self.in_channels}")
        tt = self._times(t, x.shape[0], x.device)
        a, b = (v.to(device=x.device, dtype=x.dtype) for v in self.coefficients(tt))
        yy, mm = self._condition(x, y, m)
        try:
            out = self.eps_map(x, tt, a, b, yy, mm)
        except TypeError as exc:
            raise ScoreModelError(
                f"calling the network failed ({str(exc).splitlines()[0]}); expected "
                f"{'forward(x, t)' if self.condition is None else 'forward(x, t, y, m)'}, found "
                f"{_describe_signature(self.net.forward)}") from None
        if not isinstance(out, Tensor):
            raise ScoreModelError(f"the network must return one tensor shaped like x {tuple(x.shape)}, "
                                  f"got a {type(out).__name__}")
        if out.shape != x.shape:
            raise ScoreModelError(f"the network must return a tensor shaped like x {tuple(x.shape)}, "
                                  f"got shape {tuple(out.shape)}")
        return out

    # ------------------------------------------------------------------ certified bounds

    def _channels(self) -> int:
        if self.in_channels is None:
            raise ScoreModelError("cannot tell the image channels of this network: pass ScoreModel(..., in_channels=C)")
        return self.in_channels

    def certified_lipschitz_at(self, t: float, shape: Optional[tuple] = None) -> float:
        r"""A certified bound of $x \mapsto \varepsilon_\theta(x, t, c)$ at this ``t`` only (every condition
        ``c``, every input size), the conversion of the parameterisation included.

        ``t`` is cast to the network's dtype first — the value the network sees when an integrator
        passes it. Computed by :func:`injcert.lipschitz_bound` on a copy of the network (cached).

        Raises:
            UnsupportedModuleError: an op of the network has no Lipschitz rule (one line naming it).
        """
        from ..theory.lipschitz import lipschitz_bound

        dtype = self._dtype()
        c = self._channels()
        size = self.probe_size if shape is None else int(shape[-1])
        tt = torch.full((1,), float(t), dtype=dtype)
        key = (float(tt[0]), dtype, size, tuple(p._version for p in self.net.parameters()))
        if key in self._bounds:
            return self._bounds[key]
        em = frozen_copy(self.eps_map).cpu()
        a, b = (v.to(dtype) for v in self.coefficients(tt))
        if self.condition is None:
            module: nn.Module = em
            in_shape = (c, size, size)
        else:
            module = _JointInCondition(em, c, c)
            in_shape = (c + c + MASK_CHANNELS, size, size)
        value = float(lipschitz_bound(module, in_shape, args=(tt, a, b), size_independent=True).value)
        if not math.isfinite(value) or value < 0:
            value = math.inf
        self._bounds[key] = value
        return value

    def certified_lipschitz(self) -> float:
        """The declared uniform budget (a user model has no certified bound uniform in ``t``).

        Raises:
            ScoreModelError: no ``lipschitz_budget`` was declared.
        """
        if self.lipschitz_budget is None:
            raise ScoreModelError("a ScoreModel has no bound uniform in t; use certified_lipschitz_at(t) "
                                  "or declare lipschitz_budget=")
        return self.lipschitz_budget

    def train(self, mode: bool = True) -> "ScoreModel":
        """As ``nn.Module.train``; a network that refuses it (a ``torch.export`` module) is left as it is."""
        self.training = mode
        try:
            self.eps_map.train(mode)
        except NotImplementedError:
            pass
        return self

    def _apply(self, fn: Any, *args: Any, **kwargs: Any) -> "ScoreModel":
        self._bounds = {}  # a dtype or device change makes another function: recompute the bounds
        return super()._apply(fn, *args, **kwargs)

    def __deepcopy__(self, memo: dict) -> "ScoreModel":
        cls = type(self)
        new = cls.__new__(cls)
        memo[id(self)] = new
        for k, v in self.__dict__.items():
            new.__dict__[k] = {} if k == "_bounds" else copy.deepcopy(v, memo)
        return new


def as_score_model(obj: Any, **options: Any) -> Union[ScoreModel, nn.Module]:
    """``obj`` if it is a ScoreModel (or an injcert model with a schedule), else ``ScoreModel(obj, **options)``."""
    if isinstance(obj, ScoreModel) or getattr(obj, "schedule", None) is not None and not options:
        return obj
    return ScoreModel(obj, **options)
