"""The network: Haar transform, coupling blocks, scale encoding, and their assembly."""

from .network import IARN, ModelConfig, quantize_8bit

__all__ = ["IARN", "ModelConfig", "quantize_8bit"]
