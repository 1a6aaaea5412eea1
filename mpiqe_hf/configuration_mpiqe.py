"""MP-IQE model configuration."""

from transformers import CLIPConfig, PreTrainedConfig
from transformers.utils import logging


logger = logging.get_logger(__name__)

# Label vocabularies of LIQE (Zhang et al. 2023), reused by the MP-IQE paper (section "Preliminaries").
# The names double as the words placed after the learned context in the text prompts.
SCENE_CLASSES = (
    "animal",
    "cityscape",
    "human",
    "indoor",
    "landscape",
    "night",
    "plant",
    "still_life",
    "others",
)
DISTORTION_CLASSES = (
    "jpeg2000 compression",
    "jpeg compression",
    "noise",
    "blur",
    "color",
    "contrast",
    "overexposure",
    "underexposure",
    "spatial",
    "quantization",
    "other",
)
QUALITY_LEVELS = ("bad", "poor", "fair", "good", "excellent")
#: The weights file of an adapter checkpoint: MP-IQE's own weights, without the frozen CLIP. A name of the project's
#: own, so that no tool takes the checkpoint for another format (PEFT's `adapter_model.safetensors`).
ADAPTER_WEIGHTS_NAME = "mpiqe_adapter.safetensors"


class MPIQEConfig(PreTrainedConfig):
    r"""
    Configuration of an [`MPIQEModel`]: a frozen CLIP with learned text and visual prompts, two alignment heads and
    a multimodal encoder that regresses a quality score. Defaults follow the MP-IQE paper (ViT-B/16 CLIP); values the
    paper leaves open are documented in `docs/decisions.md`.

    Args:
        clip_config (`dict` or `CLIPConfig`, *optional*):
            Configuration of the frozen CLIP backbone. Defaults to `openai/clip-vit-base-patch16` sizes.
        text_prompt_length (`int`, *optional*, defaults to 8):
            M, the number of learned context vectors `[V]_1..[V]_M` in front of each class name (eq. 6).
        visual_prompt_length (`int`, *optional*, defaults to 4):
            n, the number of learned tokens placed between CLS and the patch tokens (eq. 7).
        visual_prompt_depth (`int`, *optional*, defaults to 12):
            How many vision layers receive fresh prompt tokens: the number of vision layers = deep prompts,
            1 = shallow prompts (inserted at the input only), 0 = no visual prompts.
        scene_classes (`list[str]`, *optional*):
            The scene vocabulary (9 LIQE scenes by default).
        distortion_classes (`list[str]`, *optional*):
            The distortion vocabulary (11 LIQE distortion families by default).
        use_scene_prompts (`bool`, *optional*, defaults to `True`):
            Learn scene prompts, align them with CLS and use them as decoder queries (Table 4 ablation when off).
        use_distortion_prompts (`bool`, *optional*, defaults to `True`):
            Learn distortion prompts, align them with patch windows and use them as decoder queries.
        window_size (`int`, *optional*, defaults to 4):
            w: the patch grid is max-pooled to `w x w` windows for the distortion alignment (eq. 10).
        distortion_window_temperature (`float`, *optional*, defaults to 0.1):
            T-bar of eq. 10, the temperature of the softmax over windows.
        decoder_layers (`int`, *optional*, defaults to 3):
            Number of pre-LN decoder layers of the multimodal encoder (eq. 13-14).
        decoder_heads (`int`, *optional*, defaults to 8):
            Attention heads of the multimodal encoder.
        decoder_intermediate_size (`int`, *optional*, defaults to 2048):
            Width of the feed-forward block of each decoder layer.
        decoder_dropout (`float`, *optional*, defaults to 0.0):
            Dropout in the multimodal encoder and the score head.
        prompt_init_std (`float`, *optional*, defaults to 0.02):
            Standard deviation of the normal initialisation of text and visual prompts.
        distortion_loss_weight (`float`, *optional*, defaults to 1.0):
            lambda_1 of eq. 15.
        score_loss_weight (`float`, *optional*, defaults to 0.5):
            lambda_2 of eq. 15 (the paper uses 0.1 for LIVE and CSIQ).
        score_loss_scale (`float`, *optional*, defaults to 10.0):
            The score loss is `SmoothL1(score_loss_scale * score, score_loss_scale * mos)` on the normalised [0, 1]
            scale, as DEIQT's SmoothL1 on 0-100 MOS; the `score` output stays on [0, 1]. See `docs/decisions.md`.
        mos_min (`float`, *optional*, defaults to 0.0), mos_max (`float`, *optional*, defaults to 1.0):
            The native MOS range of the training dataset; the model predicts on [0, 1] and this range maps it back.
        mos_higher_is_better (`bool`, *optional*, defaults to `True`):
            Direction of the native scale (`False` for DMOS datasets such as LIVE).
        quality_levels (`list[str]`, *optional*):
            Names of the five equal-width bands of the normalised score, worst first.
        scene_class_token_ids (`list[list[int]]`, *optional*), distortion_class_token_ids (`list[list[int]]`, *optional*):
            The tokenised class names (without special tokens), filled by [`MPIQEModel.from_clip`] so that a saved
            model needs no tokenizer.
        prompt_bos_token_id (`int`, *optional*), prompt_eos_token_id (`int`, *optional*),
        prompt_pad_token_id (`int`, *optional*):
            The ids that frame every text prompt, `[SOS] [V]_1..[V]_M <class> [EOS]`, and fill the positions after it.
            [`MPIQEModel.from_clip`] takes them from the CLIP's tokenizer (49406, 49407 and 49407 for openai's CLIP),
            since the Hub's openai CLIP configs still carry the legacy `bos_token_id` 0 and `eos_token_id` 2, which
            are the characters `!` and `#` for CLIP's tokenizer. Left unset (a model built without a tokenizer), they
            come from `clip_config.text_config`, except for that legacy pair, which is read the way transformers'
            `CLIPTextTransformer` reads it: CLIP's tokenizer keeps its two special tokens at the last two ids of the
            vocabulary. The choice is logged as a warning.
        base_model_name_or_path (`str`, *optional*), base_model_revision (`str`, *optional*):
            Where the CLIP weights came from; an adapter checkpoint fetches its CLIP from there.
        adapter_base_weights_sha256 (`str`, *optional*):
            Set only in the config of an adapter checkpoint, whose weights file (`mpiqe_adapter.safetensors`) holds
            MP-IQE's own weights without the frozen CLIP: the SHA-256 of the base CLIP's weights it was trained on.
    """

    model_type = "mpiqe"
    sub_configs = {"clip_config": CLIPConfig}

    def __init__(
        self,
        clip_config=None,
        text_prompt_length=8,
        visual_prompt_length=4,
        visual_prompt_depth=12,
        scene_classes=SCENE_CLASSES,
        distortion_classes=DISTORTION_CLASSES,
        use_scene_prompts=True,
        use_distortion_prompts=True,
        window_size=4,
        distortion_window_temperature=0.1,
        decoder_layers=3,
        decoder_heads=8,
        decoder_intermediate_size=2048,
        decoder_dropout=0.0,
        prompt_init_std=0.02,
        distortion_loss_weight=1.0,
        score_loss_weight=0.5,
        score_loss_scale=10.0,
        mos_min=0.0,
        mos_max=1.0,
        mos_higher_is_better=True,
        quality_levels=QUALITY_LEVELS,
        scene_class_token_ids=None,
        distortion_class_token_ids=None,
        prompt_bos_token_id=None,
        prompt_eos_token_id=None,
        prompt_pad_token_id=None,
        base_model_name_or_path=None,
        base_model_revision=None,
        adapter_base_weights_sha256=None,
        **kwargs,
    ):
        if clip_config is None:
            clip_config = CLIPConfig(vision_config={"patch_size": 16})
        elif isinstance(clip_config, dict):
            clip_config = CLIPConfig(**clip_config)
        elif not isinstance(clip_config, CLIPConfig):
            raise ValueError(f"`clip_config` must be a dict or a CLIPConfig, got {type(clip_config).__name__}.")
        self.clip_config = clip_config
        self.text_prompt_length = text_prompt_length
        self.visual_prompt_length = visual_prompt_length
        self.visual_prompt_depth = visual_prompt_depth
        self.scene_classes = list(scene_classes)
        self.distortion_classes = list(distortion_classes)
        self.use_scene_prompts = use_scene_prompts
        self.use_distortion_prompts = use_distortion_prompts
        self.window_size = window_size
        self.distortion_window_temperature = distortion_window_temperature
        self.decoder_layers = decoder_layers
        self.decoder_heads = decoder_heads
        self.decoder_intermediate_size = decoder_intermediate_size
        self.decoder_dropout = decoder_dropout
        self.prompt_init_std = prompt_init_std
        self.distortion_loss_weight = distortion_loss_weight
        self.score_loss_weight = score_loss_weight
        self.score_loss_scale = float(score_loss_scale)
        self.mos_min = float(mos_min)
        self.mos_max = float(mos_max)
        self.mos_higher_is_better = mos_higher_is_better
        self.quality_levels = list(quality_levels)
        self.scene_class_token_ids = scene_class_token_ids
        self.distortion_class_token_ids = distortion_class_token_ids
        self.prompt_bos_token_id = prompt_bos_token_id
        self.prompt_eos_token_id = prompt_eos_token_id
        self.prompt_pad_token_id = prompt_pad_token_id
        self._resolve_prompt_token_ids()
        self.base_model_name_or_path = base_model_name_or_path
        self.base_model_revision = base_model_revision
        self.adapter_base_weights_sha256 = adapter_base_weights_sha256
        self._validate_mpiqe()
        super().__init__(**kwargs)

    def _resolve_prompt_token_ids(self):
        text_config = self.clip_config.text_config
        if self.prompt_bos_token_id is None or self.prompt_eos_token_id is None:
            if text_config.eos_token_id == 2:
                # The legacy ids of the Hub's openai CLIP configs (`!` and `#`): transformers' CLIPTextTransformer
                # special-cases the same value and pools at the highest id, `<|endoftext|>`.
                bos, eos = text_config.vocab_size - 2, text_config.vocab_size - 1
                source = (
                    "the last two ids of the vocabulary, where CLIP's tokenizer keeps <|startoftext|> and "
                    "<|endoftext|>, since clip_config carries the legacy ids 0 and 2 of the Hub's openai configs"
                )
            else:
                bos, eos = text_config.bos_token_id, text_config.eos_token_id
                source = "clip_config.text_config"
            if self.prompt_bos_token_id is None:
                self.prompt_bos_token_id = bos
            if self.prompt_eos_token_id is None:
                self.prompt_eos_token_id = eos
            logger.warning(
                f"MP-IQE frames its text prompts with [SOS] = {self.prompt_bos_token_id} and [EOS] = "
                f"{self.prompt_eos_token_id}, taken from {source}: no tokenizer named them. MPIQEModel.from_clip "
                "takes them from the CLIP's tokenizer; set prompt_bos_token_id / prompt_eos_token_id to choose."
            )
        if self.prompt_pad_token_id is None:
            self.prompt_pad_token_id = self.prompt_eos_token_id

    def _validate_mpiqe(self):
        vision = self.clip_config.vision_config
        for name in ("text_prompt_length", "visual_prompt_length", "visual_prompt_depth"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 0:
                raise ValueError(f"`{name}` must be a non-negative integer, got {value!r}.")
        if self.text_prompt_length == 0:
            raise ValueError("`text_prompt_length` must be at least 1: the text prompts are learned context vectors.")
        if self.visual_prompt_depth > vision.num_hidden_layers:
            raise ValueError(
                f"`visual_prompt_depth` ({self.visual_prompt_depth}) is larger than the vision tower "
                f"({vision.num_hidden_layers} layers)."
            )
        if self.visual_prompt_depth > 0 and self.visual_prompt_length == 0:
            raise ValueError("`visual_prompt_length` is 0 but `visual_prompt_depth` asks for visual prompts.")
        if not (self.use_scene_prompts or self.use_distortion_prompts):
            raise ValueError(
                "`use_scene_prompts` and `use_distortion_prompts` are both False: the multimodal encoder needs at "
                "least one family of text prompts as queries."
            )
        for name in ("scene_classes", "distortion_classes"):
            classes = getattr(self, name)
            if len(classes) == 0:
                raise ValueError(f"`{name}` is empty.")
            if len(set(classes)) != len(classes):
                raise ValueError(f"`{name}` has duplicate names: {classes}.")
        for name, classes in (
            ("scene_class_token_ids", self.scene_classes),
            ("distortion_class_token_ids", self.distortion_classes),
        ):
            token_ids = getattr(self, name)
            if token_ids is not None and len(token_ids) != len(classes):
                raise ValueError(f"`{name}` has {len(token_ids)} entries for {len(classes)} classes.")
        vocab_size = self.clip_config.text_config.vocab_size
        for name in ("prompt_bos_token_id", "prompt_eos_token_id", "prompt_pad_token_id"):
            value = getattr(self, name)
            if not isinstance(value, int) or not 0 <= value < vocab_size:
                raise ValueError(
                    f"`{name}` ({value!r}) must be a token id below the text vocabulary size ({vocab_size}): the "
                    "prompts are framed as [SOS] [V]_1..[V]_M <class> [EOS]."
                )
        grid = vision.image_size // vision.patch_size
        if not 1 <= self.window_size <= grid:
            raise ValueError(
                f"`window_size` must be between 1 and the patch grid side ({grid}), got {self.window_size}."
            )
        if self.distortion_window_temperature <= 0:
            raise ValueError("`distortion_window_temperature` must be positive.")
        if self.decoder_layers < 1:
            raise ValueError(f"`decoder_layers` must be at least 1, got {self.decoder_layers}.")
        projection_dim = self.clip_config.projection_dim
        if self.decoder_heads < 1 or projection_dim % self.decoder_heads != 0:
            raise ValueError(
                f"`decoder_heads` ({self.decoder_heads}) must divide the CLIP projection dim ({projection_dim})."
            )
        if not 0.0 <= self.decoder_dropout < 1.0:
            raise ValueError(f"`decoder_dropout` must be in [0, 1), got {self.decoder_dropout}.")
        if not self.score_loss_scale > 0:
            raise ValueError(f"`score_loss_scale` must be positive, got {self.score_loss_scale}.")
        if self.mos_max <= self.mos_min:
            raise ValueError(f"`mos_max` ({self.mos_max}) must be larger than `mos_min` ({self.mos_min}).")
        if len(self.quality_levels) < 2:
            raise ValueError("`quality_levels` needs at least two names.")

    @property
    def num_scene_classes(self):
        return len(self.scene_classes)

    @property
    def num_distortion_classes(self):
        return len(self.distortion_classes)


__all__ = ["MPIQEConfig", "SCENE_CLASSES", "DISTORTION_CLASSES", "QUALITY_LEVELS", "ADAPTER_WEIGHTS_NAME"]
