"""Flow matching (paper Eq. 2) and its sampler (Euler ODE, cosine classifier-free guidance of Appendix C.1)."""

from d4s.diffusion.flow_matching import FlowMatching, shift_times
from d4s.diffusion.sampler import Guidance, euler_sample, time_grid

__all__ = ["FlowMatching", "Guidance", "euler_sample", "shift_times", "time_grid"]
