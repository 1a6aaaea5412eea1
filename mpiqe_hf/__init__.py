"""mpiqe_hf: MP-IQE blind image quality assessment for the Hugging Face ecosystem."""

from transformers import AutoConfig, AutoImageProcessor, AutoModel
from transformers.pipelines import PIPELINE_REGISTRY

from .configuration_mpiqe import DISTORTION_CLASSES, QUALITY_LEVELS, SCENE_CLASSES, MPIQEConfig
from .image_processing_mpiqe import MPIQEImageProcessor
from .image_utils_mpiqe import load_image
from .modeling_mpiqe import MPIQEModel, MPIQEOutput, MPIQEPreTrainedModel
from .pipeline_mpiqe import ImageQualityAssessmentPipeline, MPIQEImageClassificationPipeline

__version__ = "0.1.0"

#: The task name of the pipeline registered with transformers.
PIPELINE_TASK = "image-quality-assessment"

# The auto classes find MP-IQE by its model type, without remote code, where this package is installed ...
AutoConfig.register(MPIQEConfig.model_type, MPIQEConfig, exist_ok=True)
AutoModel.register(MPIQEConfig, MPIQEModel, exist_ok=True)
AutoImageProcessor.register(MPIQEConfig, image_processor_classes={"pil": MPIQEImageProcessor}, exist_ok=True)
PIPELINE_REGISTRY.register_pipeline(
    PIPELINE_TASK, pipeline_class=ImageQualityAssessmentPipeline, pt_model=AutoModel, type="image"
)
# ... and saved checkpoints carry `auto_map` and the model files, so that they also load where it is not.
MPIQEConfig.register_for_auto_class()
MPIQEModel.register_for_auto_class("AutoModel")
MPIQEImageProcessor.register_for_auto_class("AutoImageProcessor")

__all__ = [
    "MPIQEConfig",
    "MPIQEImageProcessor",
    "load_image",
    "MPIQEModel",
    "MPIQEOutput",
    "MPIQEPreTrainedModel",
    "ImageQualityAssessmentPipeline",
    "MPIQEImageClassificationPipeline",
    "PIPELINE_TASK",
    "SCENE_CLASSES",
    "DISTORTION_CLASSES",
    "QUALITY_LEVELS",
    "__version__",
]
