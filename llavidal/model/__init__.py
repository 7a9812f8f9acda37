"""The multimodal model: modality registry, splice, projectors, weight files (docs/ARCHITECTURE.md).

Importing it (or ``llavidal``) registers the transformers-native classes (:mod:`llavidal.model.hf`) with
``AutoConfig`` / ``AutoModelForCausalLM`` as soon as transformers' Auto classes load, without importing torch.
"""

from llavidal.model.hf import (
    register_when_transformers_loads as _register_when_transformers_loads,
)

_register_when_transformers_loads()
