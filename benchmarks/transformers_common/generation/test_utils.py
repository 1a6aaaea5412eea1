"""Stand-in for transformers' `tests/generation/test_utils.py` (not in the source release): MP-IQE does not
generate, so its tester does not inherit this mixin."""


class GenerationTesterMixin:
    pass
