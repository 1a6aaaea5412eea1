"""transformers' common test suites (`ModelTesterMixin`, `ConfigTester`, `ImageProcessingTestMixin`) on `MPIQEModel`,
`MPIQEConfig` and `MPIQEImageProcessor`. How to run: `conftest.py`. The tests that do not apply are skipped here,
each with its reason."""

import unittest

import torch
from tf_common.test_configuration_common import ConfigTester
from tf_common.test_image_processing_common import ImageProcessingTester, ImageProcessingTestMixin
from tf_common.test_modeling_common import ModelTesterMixin, floats_tensor

from mpiqe_hf import MPIQEConfig, MPIQEImageProcessor, MPIQEModel
from mpiqe_hf.testing_utils import hub_clip_config


NO_TEXT_INPUT = "MP-IQE takes only pixel_values: no input_ids, token embeddings to resize or attention masks"
NO_ATTENTION_OUTPUTS = "MP-IQE returns scores and logits, not hidden states or attention weights"


class MPIQECommonModelTester:
    """What `ModelTesterMixin` reads from a model tester, for the tiny MP-IQE of the project's tests (CLIP towers 32
    wide, 2 layers each, 30-px crops of 2-px patches)."""

    def __init__(self, parent, batch_size=2, num_crops=2):
        self.parent = parent
        self.batch_size = batch_size
        self.num_crops = num_crops
        self.image_size = 30
        self.patch_size = 2
        self.num_channels = 3
        self.num_hidden_layers = 2
        self.is_training = True

    def get_config(self):
        layers = self.num_hidden_layers
        clip_config = hub_clip_config(layers, layers, self.image_size, self.patch_size)
        # the common tests want under 1M parameters: a 32-wide image-text space and a 1000-token vocabulary
        clip_config.projection_dim = 32
        clip_config.text_config.vocab_size = 1000
        return MPIQEConfig(
            clip_config=clip_config.to_dict(),
            visual_prompt_depth=layers,
            window_size=3,
            decoder_heads=4,
            decoder_intermediate_size=37,
        )

    def prepare_config_and_inputs_for_common(self):
        pixel_values = floats_tensor(
            [self.batch_size, self.num_crops, self.num_channels, self.image_size, self.image_size]
        )
        return self.get_config(), {"pixel_values": pixel_values}


class MPIQEModelCommonTest(ModelTesterMixin, unittest.TestCase):
    all_model_classes = (MPIQEModel,)
    test_resize_embeddings = False
    test_torch_exportable = False
    has_attentions = False

    def setUp(self):
        self.model_tester = MPIQECommonModelTester(self)
        self.config_tester = ConfigTester(self, config_class=MPIQEConfig, has_text_modality=False)

    def _prepare_for_class(self, inputs_dict, model_class, return_labels=False):
        # MP-IQE's loss needs the MOS (transformers adds labels only for the heads it knows)
        inputs_dict = super()._prepare_for_class(inputs_dict, model_class, return_labels=return_labels)
        if return_labels:
            inputs_dict["mos"] = torch.rand(self.model_tester.batch_size)
        return inputs_dict

    def test_config(self):
        self.config_tester.run_common_tests()

    @unittest.skip(NO_TEXT_INPUT)
    def test_model_get_set_embeddings(self):
        pass

    @unittest.skip(
        "`MPIQEModel.get_text_features()` is the image-independent half of MP-IQE (prompt features and decoder "
        "queries, `MPIQETextFeatures`), not CLIP's `get_text_features(input_ids)` returning a `BaseModelOutput`"
    )
    def test_get_text_features_output(self):
        pass

    test_get_text_features_output_0 = test_get_text_features_output_1 = test_get_text_features_output_2 = (
        test_get_text_features_output
    )
    test_get_text_features_hidden_states = test_get_text_features_output

    @unittest.skip(NO_ATTENTION_OUTPUTS)
    def test_hidden_states_output(self):
        pass

    test_retain_grad_hidden_states_attentions = test_model_outputs_equivalence = test_hidden_states_output
    test_can_capture_specific_layers_hidden_states = test_capture_outputs_decorator = test_hidden_states_output

    @unittest.skip(
        "MP-IQE's from_pretrained refuses a checkpoint with missing weights (a ValueError naming them) instead of "
        "initialising them, which this test relies on; tests/test_modeling.py checks the refusal"
    )
    def test_model_weights_reload_no_missing_tied_weights(self):
        pass


class MPIQEImageProcessingTester(ImageProcessingTester):
    def __init__(self, parent, **kwargs):
        kwargs.setdefault("crop_size", {"height": 32, "width": 32})
        kwargs.setdefault("num_crops", 3)
        kwargs.setdefault("max_resolution", 120)
        super().__init__(parent, **kwargs)

    def _get_image_processing_classes(self):
        # transformers finds a model's processors by the test file's folder under `tests/models/`; MP-IQE's is this
        return {"pil": MPIQEImageProcessor}

    def expected_output_image_shape(self, images):
        return self.num_crops, self.num_channels, self.crop_size["height"], self.crop_size["width"]


class MPIQEImageProcessingCommonTest(ImageProcessingTestMixin, unittest.TestCase):
    image_processor_tester_class = MPIQEImageProcessingTester

    @unittest.skip(
        "MP-IQE scores RGB: a 4-channel image is RGBA, composited over white before cropping (image_utils_mpiqe), "
        "so 4-channel means and standard deviations do not apply"
    )
    def test_call_numpy_4_channels(self):
        pass

    @unittest.skip(
        "a rule for processors added to transformers itself (found by the test folder's name under tests/models/); "
        "MPIQEImageProcessor is a PIL-backend processor by design, like CLIPImageProcessorPil (docs/usage.md)"
    )
    def test_new_models_require_torchvision_backend(self):
        pass
