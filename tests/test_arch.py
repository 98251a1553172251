"""The block-string grammar and the width rule."""

import pytest

from mindcv.models.arch import (
    BlockArgs,
    decode_arch_def,
    decode_block_str,
    encode_arch_def,
    encode_block_str,
    format_arch_string,
    make_divisible,
    parse_arch_string,
    round_channels,
)
from mindcv.models.mnasnet import ARCH_DEFS


def test_decode_full_token_set():
    args, repeats = decode_block_str("ir_r3_k5_s2_e6_c80_se0.25")
    assert repeats == 3
    assert args == BlockArgs("ir", kernel_size=5, stride=2, out_chs=80, exp_ratio=6.0, se_ratio=0.25, noskip=False)
    ds, _ = decode_block_str("ds_r1_k3_s1_e1_c16_noskip")
    assert ds.block_type == "ds" and ds.noskip and ds.exp_ratio == 1.0
    cn, _ = decode_block_str("cn_k3_c24_s2")  # tokens in any order, r defaults to 1
    assert (cn.block_type, cn.kernel_size, cn.stride, cn.out_chs) == ("cn", 3, 2, 24)


@pytest.mark.parametrize(
    "bad, needle",
    [
        ("xx_r1_k3_c16", "unknown block type 'xx'"),
        ("ir_r1_k3_c16_q5", "unknown token 'q5'"),
        ("ir_r1_c16", "missing 'k<int>'"),
        ("ir_r1_k4_c16", "kernel size must be odd"),
        ("ir_r1_k3_s3_c16", "stride must be 1 or 2"),
        ("ir_rx_k3_c16", "token 'rx' needs a int"),
        ("ir_r1_k3_c16_se1.5", "SE ratio"),
        ("", "non-empty"),
    ],
)
def test_bad_block_strings_name_the_problem(bad, needle):
    with pytest.raises(ValueError, match=needle):
        decode_block_str(bad)


@pytest.mark.parametrize("name", sorted(ARCH_DEFS))
def test_encode_decode_round_trip(name):
    stages = decode_arch_def(ARCH_DEFS[name])
    assert decode_arch_def(encode_arch_def(stages)) == stages
    assert parse_arch_string(format_arch_string(ARCH_DEFS[name])) == list(ARCH_DEFS[name])


def test_repeats_keep_stride_only_on_first_block():
    (stage,) = decode_arch_def(["ir_r4_k5_s2_e6_c192"])
    assert [b.stride for b in stage] == [2, 1, 1, 1]


def test_mixed_stage_round_trip():
    arch = "ds_r1_k3_s1_c16|ir_r1_k3_s2_e3_c24,cn_r2_k5_s1_c24_se0.25"
    stages = parse_arch_string(arch)
    assert stages[1] == ["ir_r1_k3_s2_e3_c24", "cn_r2_k5_s1_c24_se0.25"]
    assert format_arch_string(encode_arch_def(decode_arch_def(stages))) == arch


def test_encode_is_canonical():
    args, r = decode_block_str("ir_c80_se0.25_k5_e6_s2_r3")
    assert encode_block_str(args, r) == "ir_r3_k5_s2_e6_c80_se0.25"


def test_make_divisible_matches_torchvision_rule():
    # torchvision _round_to_multiple_of docstring: 83 -> 80, 84 -> 88
    assert make_divisible(83) == 80 and make_divisible(84) == 88
    assert make_divisible(3) == 8


@pytest.mark.parametrize(
    "alpha, depths",
    [
        (0.5, [16, 8, 16, 24, 40, 48, 96, 160]),
        (0.75, [24, 16, 24, 32, 64, 72, 144, 240]),
        (1.0, [32, 16, 24, 40, 80, 96, 192, 320]),
        (1.3, [40, 24, 32, 56, 104, 128, 248, 416]),
        (1.4, [48, 24, 32, 56, 112, 136, 272, 448]),
    ],
)
def test_b1_depths_per_width(alpha, depths):
    base = [32, 16, 24, 40, 80, 96, 192, 320]
    assert [round_channels(c, alpha) for c in base] == depths
