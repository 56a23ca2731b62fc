"""Flow matching (paper Eq. 2), its sampler (Euler ODE, cosine classifier-free guidance of Appendix C.1), and the
reading of a pretrained v-prediction DDPM as a flow velocity field."""

from d4s.diffusion.ddpm import DDPMSchedule
from d4s.diffusion.flow_matching import FlowMatching, shift_times
from d4s.diffusion.sampler import Guidance, SamplingConfig, euler_sample, time_grid

__all__ = ["DDPMSchedule", "FlowMatching", "Guidance", "SamplingConfig", "euler_sample", "shift_times", "time_grid"]
