"""Runs transformers' own common test suites (from the transformers source release) on MP-IQE's classes.

    pip download --no-deps --no-binary :all: transformers==5.25.0 -d /tmp/tfsrc
    tar xzf /tmp/tfsrc/transformers-5.25.0.tar.gz -C /tmp/tfsrc
    pip download --no-deps parameterized -d /tmp/tfwheels && unzip -q /tmp/tfwheels/*.whl -d /tmp/tfsite
    PYTHONPATH=$PWD:/tmp/tfsite TRANSFORMERS_TESTS_DIR=/tmp/tfsrc/transformers-5.25.0/tests \
        python -m pytest benchmarks/transformers_common -rs

The release's `tests/test_modeling_common.py`, `test_configuration_common.py` and `test_image_processing_common.py`
are linked into a temporary package `tf_common`, beside this folder's stand-ins for the helper modules they import
that the release does not contain (`exporters/test_export.py`, `generation/test_utils.py`,
`utils/test_configuration_utils.py`, `fetch_hub_objects_for_ci.py`). Not part of the project's suite: it needs
the transformers source release and `parameterized`, fetched from the package index beforehand. On 2 CPU cores:
83 passed, 112 skipped, in about 27 s. Most skips are transformers' own (accelerator, flash attention, DeepSpeed,
attention outputs, no `base_model_class`); `test_mpiqe_common.py` skips 13 more, each with its reason.
"""

import os
import sys
import tempfile

import pytest


HERE = os.path.dirname(os.path.abspath(__file__))
COMMON_SUITES = ("test_modeling_common.py", "test_configuration_common.py", "test_image_processing_common.py")
STAND_INS = ("exporters", "generation", "utils")
collect_ignore = list(STAND_INS) + ["fetch_hub_objects_for_ci.py"]
#: The markers the suites use (transformers declares them in its own pytest configuration).
MARKERS = (
    "accelerate_tests",
    "flash_attn_test",
    "flash_attn_3_test",
    "flash_attn_4_test",
    "is_agent_test",
    "is_expert_parallel_test",
    "is_fsdp_test",
    "is_pipeline_test",
    "is_staging_test",
    "is_tensor_parallel_test",
    "is_training_test",
    "order",
    "torch_compile_test",
    "generate",
    "all_flash_attn_test",
    "bitsandbytes",
)


def pytest_configure(config):
    for marker in MARKERS:
        config.addinivalue_line("markers", f"{marker}: a marker of transformers' common test suites")


def _link_common_suites() -> None:
    tests = os.environ.get("TRANSFORMERS_TESTS_DIR")
    if not tests or not all(os.path.isfile(os.path.join(tests, name)) for name in COMMON_SUITES):
        raise pytest.UsageError(
            "Set TRANSFORMERS_TESTS_DIR to the `tests` folder of the transformers source release "
            f"(it must hold {', '.join(COMMON_SUITES)}): see benchmarks/transformers_common/conftest.py."
        )
    root = tempfile.mkdtemp(prefix="tf-common-")
    package = os.path.join(root, "tf_common")
    os.mkdir(package)
    open(os.path.join(package, "__init__.py"), "w").close()
    for name in COMMON_SUITES:
        os.symlink(os.path.join(tests, name), os.path.join(package, name))
    for name in STAND_INS:
        os.symlink(os.path.join(HERE, name), os.path.join(package, name))
    sys.path[:0] = [root, HERE]  # `tf_common`, and `fetch_hub_objects_for_ci` for the image processing suite


_link_common_suites()
