"""Gaussian fields: the static 3DGS primitive set and its deformable (4D) extension.

Parameters are stored unconstrained, as 3DGS stores them, and exposed activated:

==================  ==================  =====================================
stored              shape               activated view
==================  ==================  =====================================
``means``           ``[N, 3]``          world-space centres (metres)
``quats``           ``[N, 4]`` wxyz     ``rotations``: unit quaternions
``log_scales``      ``[N, 3]``          ``scales = exp(log_scales)``
``opacity_logits``  ``[N]``             ``opacities = sigmoid(opacity_logits)``
``sh``              ``[N, K, 3]``       colour coefficients, ``K = (degree + 1)^2``, degree 0..3
==================  ==================  =====================================
"""

from __future__ import annotations

import operator
from collections.abc import Iterator
from dataclasses import dataclass, fields, replace

import torch
from torch import Tensor

from d4s.gaussians.deform import apply_deformation, identity_deformation
from d4s.gaussians.sh import rgb_to_sh_dc, sh_dc_to_rgb, sh_degree_from_bases
from d4s.geometry.quaternion import quat_normalize, quat_slerp
from d4s.utils.checks import check_finite, check_floating, check_shape


def scale_activation(log_scales: Tensor) -> Tensor:
    """Positive scales from stored log-scales."""
    return torch.exp(log_scales)


def inverse_scale_activation(scales: Tensor) -> Tensor:
    """Stored log-scales from positive scales."""
    return torch.log(scales)


def opacity_activation(opacity_logits: Tensor) -> Tensor:
    """Opacities in (0, 1) from stored logits."""
    return torch.sigmoid(opacity_logits)


def inverse_opacity_activation(opacities: Tensor) -> Tensor:
    """Stored logits from opacities in (0, 1)."""
    return torch.logit(opacities)


def _check_matches(value: Tensor, name: str, reference: Tensor, reference_name: str) -> None:
    """Raise ``ValueError`` unless ``value`` has ``reference``'s dtype and device."""
    if value.dtype != reference.dtype or value.device != reference.device:
        raise ValueError(
            f"{name}: dtype {value.dtype} on {value.device} differs from {reference_name}'s {reference.dtype} on "
            f"{reference.device}; a field's tensors share one dtype and device"
        )


@dataclass
class GaussianField:
    """A set of ``N`` 3D Gaussians (one scene at one time). See the module docstring for the layout."""

    means: Tensor
    quats: Tensor
    log_scales: Tensor
    opacity_logits: Tensor
    sh: Tensor

    def __post_init__(self) -> None:
        check_shape(self.means, "means", (None, 3))
        n = self.means.shape[0]
        check_shape(self.quats, "quats", (n, 4))
        check_shape(self.log_scales, "log_scales", (n, 3))
        check_shape(self.opacity_logits, "opacity_logits", (n,))
        check_shape(self.sh, "sh", (n, None, 3))
        sh_degree_from_bases(self.sh.shape[1])
        for name, value in self.tensors().items():
            check_floating(value, name)
            _check_matches(value, name, self.means, "means")

    @classmethod
    def from_activated(
        cls,
        means: Tensor,
        rotations: Tensor,
        scales: Tensor,
        opacities: Tensor,
        rgb: Tensor | None = None,
        sh: Tensor | None = None,
    ) -> GaussianField:
        """Build a field from activated values: unit or raw quaternions ``[N, 4]``, positive ``scales [N, 3]``,
        ``opacities [N]`` in (0, 1), and either view-independent ``rgb [N, 3]`` or ``sh [N, K, 3]``."""
        if (rgb is None) == (sh is None):
            raise ValueError("rgb, sh: give exactly one of view-independent rgb [N, 3] or SH coefficients [N, K, 3]")
        if sh is None:
            sh = rgb_to_sh_dc(rgb)[:, None, :]
        return cls(
            means=means,
            quats=rotations,
            log_scales=inverse_scale_activation(scales),
            opacity_logits=inverse_opacity_activation(opacities),
            sh=sh,
        )

    @property
    def num_gaussians(self) -> int:
        return self.means.shape[0]

    def __len__(self) -> int:
        return self.num_gaussians

    @property
    def sh_degree(self) -> int:
        return sh_degree_from_bases(self.sh.shape[1])

    @property
    def device(self) -> torch.device:
        return self.means.device

    @property
    def dtype(self) -> torch.dtype:
        return self.means.dtype

    @property
    def rotations(self) -> Tensor:
        """Unit quaternions ``[N, 4]`` wxyz."""
        return quat_normalize(self.quats)

    @property
    def scales(self) -> Tensor:
        """Scales ``[N, 3]`` (standard deviations along the local axes, metres)."""
        return scale_activation(self.log_scales)

    @property
    def opacities(self) -> Tensor:
        """Opacities ``[N]`` in (0, 1)."""
        return opacity_activation(self.opacity_logits)

    @property
    def rgb(self) -> Tensor:
        """View-independent colour ``[N, 3]`` of the DC coefficients (what a viewer shows without SH)."""
        return sh_dc_to_rgb(self.sh[:, 0, :])

    def tensors(self) -> dict[str, Tensor]:
        """The stored tensors by field name."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def map(self, fn) -> GaussianField:
        """A new field with ``fn`` applied to every stored tensor (e.g. ``lambda t: t.to(device)``)."""
        return GaussianField(**{name: fn(value) for name, value in self.tensors().items()})

    def to(self, *args, **kwargs) -> GaussianField:
        return self.map(lambda t: t.to(*args, **kwargs))

    def detach(self) -> GaussianField:
        return self.map(Tensor.detach)

    def __getitem__(self, index: Tensor | slice) -> GaussianField:
        """The Gaussians selected by a boolean mask ``[N]``, index tensor or slice."""
        return self.map(lambda t: t[index])

    @staticmethod
    def cat(parts: list[GaussianField]) -> GaussianField:
        """Concatenate fields of equal SH degree."""
        return GaussianField(**{f.name: torch.cat([getattr(p, f.name) for p in parts]) for f in fields(GaussianField)})

    def check_finite(self, name: str = "field") -> GaussianField:
        """Raise ``ValueError`` naming the first stored tensor that holds NaN or inf."""
        for key, value in self.tensors().items():
            check_finite(value, f"{name}.{key}")
        return self


@dataclass
class DeformableGaussianField:
    """A canonical field plus per-time deformations (paper Sec. 3.3): the generated 4D scene.

    Attributes:
        canonical: the Gaussians at their canonical state (``N`` of them).
        dmu: ``[T, N, 3]`` mean offsets (metres).
        dq: ``[T, N, 4]`` rotation deltas, wxyz, normalised when applied.
        ds: ``[T, N, 3]`` log-scale offsets.
    Opacity and colour do not change over time.
    """

    canonical: GaussianField
    dmu: Tensor
    dq: Tensor
    ds: Tensor

    def __post_init__(self) -> None:
        n = self.canonical.num_gaussians
        check_shape(self.dmu, "dmu", (None, n, 3))
        t = self.dmu.shape[0]
        check_shape(self.dq, "dq", (t, n, 4))
        check_shape(self.ds, "ds", (t, n, 3))
        for name in ("dmu", "dq", "ds"):
            _check_matches(getattr(self, name), name, self.canonical.means, "canonical.means")

    @classmethod
    def static(cls, field: GaussianField, num_frames: int) -> DeformableGaussianField:
        """A field that does not move: the identity deformation at every one of ``num_frames`` times."""
        return cls(field, *identity_deformation(num_frames, field.num_gaussians, field.dtype, field.device))

    @property
    def num_frames(self) -> int:
        return self.dmu.shape[0]

    @property
    def num_gaussians(self) -> int:
        return self.canonical.num_gaussians

    def at(self, t: int) -> GaussianField:
        """The field at time index ``t`` in ``[0, num_frames)``: Eq. 7 applied to the canonical Gaussians."""
        try:
            index = operator.index(t)  # ints, numpy integers and 0-d integer tensors
        except TypeError:
            index = None
        if isinstance(t, bool) or index is None or not 0 <= index < self.num_frames:
            raise ValueError(f"t: expected a time index in [0, {self.num_frames}), got {t!r}")
        t = index
        means, quats, log_scales = apply_deformation(
            self.canonical.means, self.canonical.quats, self.canonical.log_scales, self.dmu[t], self.dq[t], self.ds[t]
        )
        return replace(self.canonical, means=means, quats=quats, log_scales=log_scales)

    def at_time(self, time: float) -> GaussianField:
        """The field at a fractional time in ``[0, num_frames - 1]`` (a slow-motion or resampled schedule).

        Between stored times ``i`` and ``i + 1`` the deformation is interpolated: ``dmu`` and ``ds`` linearly,
        ``dq`` by slerp. Integer times give exactly :meth:`at`.
        """
        if not (isinstance(time, (int, float)) and 0.0 <= time <= self.num_frames - 1):
            raise ValueError(f"time: expected a number in [0, {self.num_frames - 1}], got {time!r}")
        lower = min(int(time), self.num_frames - 1)
        weight = float(time) - lower
        if weight == 0.0:
            return self.at(lower)
        dmu = torch.lerp(self.dmu[lower], self.dmu[lower + 1], weight)
        ds = torch.lerp(self.ds[lower], self.ds[lower + 1], weight)
        dq = quat_slerp(self.dq[lower], self.dq[lower + 1], weight)
        c = self.canonical
        means, quats, log_scales = apply_deformation(c.means, c.quats, c.log_scales, dmu, dq, ds)
        return replace(c, means=means, quats=quats, log_scales=log_scales)

    def select(self, index: Tensor | slice) -> DeformableGaussianField:
        """The Gaussians selected by a boolean mask ``[N]``, index tensor or slice, with their deformations."""
        return DeformableGaussianField(self.canonical[index], self.dmu[:, index], self.dq[:, index], self.ds[:, index])

    def frames(self) -> Iterator[GaussianField]:
        """The field at every time, in order."""
        return (self.at(t) for t in range(self.num_frames))

    def map(self, fn) -> DeformableGaussianField:
        """A new deformable field with ``fn`` applied to every stored tensor."""
        return DeformableGaussianField(self.canonical.map(fn), fn(self.dmu), fn(self.dq), fn(self.ds))

    def to(self, *args, **kwargs) -> DeformableGaussianField:
        return self.map(lambda t: t.to(*args, **kwargs))

    def detach(self) -> DeformableGaussianField:
        return self.map(Tensor.detach)

    def check_finite(self, name: str = "field") -> DeformableGaussianField:
        """Raise ``ValueError`` naming the first stored tensor that holds NaN or inf."""
        self.canonical.check_finite(f"{name}.canonical")
        for key in ("dmu", "dq", "ds"):
            check_finite(getattr(self, key), f"{name}.{key}")
        return self
