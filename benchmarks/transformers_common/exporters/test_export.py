"""Stand-in for transformers' `tests/exporters/test_export.py` (not in the source release): the export tests
(`torch.export` of the model) are not run here."""


class ExportTesterMixin:
    pass
