"""benchmarks/op_profile.py: thunk times from a real profiler trace, named by the optimised HLO."""

from __future__ import annotations

import pathlib
import sys

import jax
import jax.numpy as jnp

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "benchmarks"))

import op_profile  # noqa: E402


def test_a_large_matmul_dominates_and_is_named_by_its_op():
    @jax.jit
    def train_step(x, w):
        y = jnp.dot(x, w)  # 2·512³ FLOP
        return jnp.sum(jnp.tanh(y[:8, :8]))

    x = jnp.ones((512, 512))
    w = jnp.eye(512)
    compiled = train_step.lower(x, w).compile()
    hlo = compiled.as_text()
    instrs = op_profile.hlo_instructions(hlo)
    fused = op_profile.fused_root_opcodes(hlo)
    assert any(i["op_name"].endswith("dot_general") for i in instrs.values())

    seconds = op_profile.thunk_seconds(lambda: compiled(x, w).block_until_ready(), instrs, 3)
    assert seconds, "no thunk of the compiled module appeared in the trace"
    top = seconds.most_common(1)[0][0]
    info = instrs[top]
    kinds = fused.get(info["calls"], "") if info["opcode"] == "fusion" else info["opcode"]
    assert "dot" in kinds and info["op_name"].endswith("dot_general"), (top, info, kinds)


def test_groups_follow_the_module_and_pass():
    assert op_profile.group_of("jit(train_step)/jvp(Generator)/up_3/conv") == "G forward"
    assert op_profile.group_of("jit(train_step)/transpose(jvp(VGG19Features))/conv2") == (
        "VGG backward"
    )
    assert op_profile.group_of("jit(train_step)/MultiscaleDiscriminator/x") == "D forward"
    assert op_profile.group_of("") == "other forward"
