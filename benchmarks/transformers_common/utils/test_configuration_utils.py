"""Stand-in for transformers' `tests/utils/test_configuration_utils.py` (not in the source release): the common
config kwargs `ConfigTester.check_config_arguments_init` sets. It returns early for composite configs such as
`MPIQEConfig` (it has `sub_configs`), so a few common settings suffice."""

config_common_kwargs = {"return_dict": False, "output_hidden_states": True, "dtype": "float16"}
