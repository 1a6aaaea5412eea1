"""mpiqe_hf: MP-IQE blind image quality assessment for the Hugging Face ecosystem."""

from transformers import AutoConfig, AutoImageProcessor, AutoModel

from .configuration_mpiqe import DISTORTION_CLASSES, QUALITY_LEVELS, SCENE_CLASSES, MPIQEConfig
from .image_processing_mpiqe import MPIQEImageProcessor
from .image_utils_mpiqe import load_image
from .modeling_mpiqe import MPIQEModel, MPIQEOutput, MPIQEPreTrainedModel, MPIQETextFeatures
from .pipeline_mpiqe import (
    PIPELINE_TASK,
    ImageQualityAssessmentPipeline,
    MPIQEImageClassificationPipeline,
    register_pipeline,
)
from .publishing import push_to_hub, save_adapter
from .scorer import MPIQEScorer


__version__ = "0.1.0"

# The auto classes find MP-IQE by its model type, without remote code, where this package is installed ...
AutoConfig.register(MPIQEConfig.model_type, MPIQEConfig, exist_ok=True)
AutoModel.register(MPIQEConfig, MPIQEModel, exist_ok=True)
AutoImageProcessor.register(MPIQEConfig, image_processor_classes={"pil": MPIQEImageProcessor}, exist_ok=True)
register_pipeline()
# `model.push_to_hub` uploads the processor, pipeline, card and handler with the checkpoint (`publishing`).
MPIQEModel.publisher = push_to_hub
# ... and saved checkpoints carry `auto_map` and the model files, so that they also load where it is not.
MPIQEConfig.register_for_auto_class()
MPIQEModel.register_for_auto_class("AutoModel")
MPIQEImageProcessor.register_for_auto_class("AutoImageProcessor")

# The data helpers import `datasets` (seconds at start-up), which scoring never needs: they load on first access.
_DATA_EXPORTS = ("load_iqa_dataset", "iqa_info", "IQADatasetInfo")


def __getattr__(name):
    if name in _DATA_EXPORTS:
        from . import data

        return getattr(data, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "MPIQEConfig",
    "MPIQEImageProcessor",
    "load_image",
    "load_iqa_dataset",
    "iqa_info",
    "IQADatasetInfo",
    "MPIQEModel",
    "MPIQEOutput",
    "MPIQEPreTrainedModel",
    "MPIQETextFeatures",
    "ImageQualityAssessmentPipeline",
    "MPIQEImageClassificationPipeline",
    "MPIQEScorer",
    "PIPELINE_TASK",
    "save_adapter",
    "push_to_hub",
    "SCENE_CLASSES",
    "DISTORTION_CLASSES",
    "QUALITY_LEVELS",
    "__version__",
]
