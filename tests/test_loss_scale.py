"""The score loss on a scaled MOS axis (`MPIQEConfig.score_loss_scale`), the score output on [0, 1]."""

import pytest
import torch

from mpiqe_hf import MPIQEConfig, MPIQEModel


def test_default_scale_is_the_measured_one():
    # docs/decisions.md: at 10 the score term's gradient on the shared prompts stays within 0.4-1.3x of the
    # alignment terms' through a run; at 1 it falls to 1-4 %, at 100 it outweighs them 3-40x.
    assert MPIQEConfig().score_loss_scale == 10.0


@pytest.mark.parametrize("scale", [1.0, 10.0, 100.0])
def test_score_loss_follows_the_scale(tester, scale):
    model = tester.model(score_loss_scale=scale, score_loss_weight=0.3)
    mos = torch.tensor([0.2, 0.9])
    out = model(tester.pixel_values(), mos=mos)
    expected = torch.nn.functional.smooth_l1_loss(scale * out.score, scale * mos)
    torch.testing.assert_close(out.score_loss, expected)
    torch.testing.assert_close(out.loss, 0.3 * expected)


def test_scale_changes_the_loss_not_the_score(tester):
    mos = torch.tensor([0.2, 0.9])
    unscaled = tester.model(seed=3, score_loss_scale=1.0)(tester.pixel_values(), mos=mos)
    scaled = tester.model(seed=3, score_loss_scale=100.0)(tester.pixel_values(), mos=mos)
    torch.testing.assert_close(scaled.score, unscaled.score)
    assert scaled.score_loss.item() > 10 * unscaled.score_loss.item()


def test_scale_is_saved_with_the_config(tester, tmp_path):
    tester.model(score_loss_scale=7.5).save_pretrained(tmp_path)
    assert MPIQEModel.from_pretrained(tmp_path).config.score_loss_scale == 7.5


@pytest.mark.parametrize("scale", [0.0, -1.0])
def test_non_positive_scale_is_refused(tester, scale):
    with pytest.raises(ValueError, match="score_loss_scale"):
        tester.config(score_loss_scale=scale)
