"""Stand-in for transformers' `utils/fetch_hub_objects_for_ci.py` (not in the source release): the image
processing tests that read COCO images from the Hub do not apply to MP-IQE (it has no detection or segmentation
outputs); any other use fails, naming the URL."""


def url_to_local_path(url):
    raise RuntimeError(f"the transformers common tests harness does not download {url}")
