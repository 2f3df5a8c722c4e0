"""bench: fair quality-vs-cost benchmarks of efficiency techniques for image diffusion models."""

import logging as _logging

__version__ = "0.1.0"

# Version-compatibility chatter that torchao (the [accel] extra) sets off on import, about nothing the user did:
# torch deprecating its Enum registrations, diffusers missing layouts older torchao versions had. Left on, it comes
# before every one-line error of the CLI.
for _name in ("torch.utils._pytree", "diffusers.quantizers.torchao.torchao_quantizer"):
    _logging.getLogger(_name).setLevel(_logging.ERROR)
