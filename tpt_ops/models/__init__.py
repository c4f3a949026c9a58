"""Three-Phase Transformer language models built from :mod:`tpt_ops.nn`."""
from tpt_ops.models.config import TPTConfig
from tpt_ops.models.convert import load_reference_state_dict
from tpt_ops.models.hedgehog import HedgehogConversion, convert_to_hedgehog
from tpt_ops.models.transformer import ThreePhaseTransformer, sample_next

__all__ = ["TPTConfig", "ThreePhaseTransformer", "load_reference_state_dict", "sample_next",
           "HedgehogConversion", "convert_to_hedgehog"]
