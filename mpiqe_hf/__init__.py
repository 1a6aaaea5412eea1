"""mpiqe_hf: MP-IQE blind image quality assessment for the Hugging Face ecosystem."""

from .configuration_mpiqe import DISTORTION_CLASSES, QUALITY_LEVELS, SCENE_CLASSES, MPIQEConfig
from .image_processing_mpiqe import MPIQEImageProcessor, load_image
from .modeling_mpiqe import MPIQEModel, MPIQEOutput, MPIQEPreTrainedModel

__version__ = "0.1.0"

__all__ = [
    "MPIQEConfig",
    "MPIQEImageProcessor",
    "load_image",
    "MPIQEModel",
    "MPIQEOutput",
    "MPIQEPreTrainedModel",
    "SCENE_CLASSES",
    "DISTORTION_CLASSES",
    "QUALITY_LEVELS",
    "__version__",
]
