"""Stand-in for comfy.samplers: the sampler and scheduler names KSampler offers (a few of them)."""


class KSampler:
    SAMPLERS = ["euler", "euler_ancestral", "heun", "dpmpp_2m", "ddim", "uni_pc"]
    SCHEDULERS = ["simple", "sgm_uniform", "karras", "exponential", "normal", "beta"]
