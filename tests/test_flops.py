"""FLOP counting against hand-computed values for a toy shape."""

from dte_aar.flops import StepShape, flops_per_token, inference_flops_per_token, training_flops
from dte_aar.model import ModelConfig, config_flops_per_token

TOY = ModelConfig(vocab_size=10, d_model=4, n_heads=2, d_ff=8, seq_len=3, n_layers=2)


def test_full_training_by_hand():
    # block weights: qkv 3*4*4=48, proj 16, mlp 2*4*8=64 -> 128; forward 2*128=256
    # attention forward: 2 * 2 * T(3) * d(4) = 48; block forward 304, trained 3*304 = 912
    # head: 6 * 4 * 10 = 240
    assert flops_per_token(TOY, StepShape(layers=2)) == 2 * 912 + 240


def test_frozen_prefix_counts_forward_only():
    # greedy: one trainable block on top of one frozen: 912 + 304 + 240
    assert flops_per_token(TOY, StepShape(layers=2, trainable_top=1)) == 912 + 304 + 240
    # nothing trainable but the head: every block forward only
    assert flops_per_token(TOY, StepShape(layers=2, trainable_top=0)) == 2 * 304 + 240
    assert training_flops(TOY, StepShape(layers=2, trainable_top=1), 1000) == 1000 * 1456


def test_inference_and_model_agree():
    assert inference_flops_per_token(TOY, 2) == 2 * 304 + 2 * 4 * 10
    # the model's own estimate adds only biases and norms (6 per weight) to the same count
    full = flops_per_token(TOY, StepShape(layers=2))
    extra = config_flops_per_token(TOY) - full
    biases_and_norms = 2 * (2 * 2 * 4 + 3 * 4 + 4 + 8 + 4) + 2 * 4
    assert extra == 6 * biases_and_norms
