"""models.numpy_cnn against TensorFlow (float64, explicit zero padding then VALID), against the
course's loop versions, and against hand-computed answers; plus every ValueError case."""
from __future__ import annotations

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

from models import numpy_cnn as N  # noqa: E402

TOL = dict(rtol=1e-10, atol=1e-10)

# (m, n_H_prev, n_W_prev, n_C_prev, f, n_C, stride, pad): square and non-square inputs,
# stride > f, pad 0, 1x1 filters, a batch of 1, f equal to the padded input
CONV_CASES = [
    (2, 7, 7, 3, 3, 4, 1, 0),
    (2, 7, 9, 3, 3, 5, 2, 1),
    (1, 10, 6, 2, 2, 3, 3, 2),
    (3, 8, 8, 4, 1, 6, 1, 0),
    (1, 9, 11, 2, 2, 2, 4, 0),   # stride larger than f: some inputs are never read
    (2, 5, 4, 3, 4, 2, 1, 3),    # pad wider than half the filter
    (2, 4, 4, 2, 6, 3, 1, 1),    # f equals the padded size: 1x1 output
    (4, 6, 5, 1, 3, 1, 2, 1),
]
POOL_CASES = [  # (m, n_H_prev, n_W_prev, n_C, f, stride)
    (2, 8, 8, 3, 2, 2),
    (2, 7, 9, 2, 3, 2),    # overlapping windows
    (1, 5, 7, 4, 3, 1),
    (3, 9, 6, 2, 2, 3),    # stride larger than f
    (1, 4, 4, 1, 4, 1),    # one window covering everything
    (2, 6, 10, 3, 1, 2),
]


def _conv_inputs(rng, m, nh, nw, cp, f, c):
    return (rng.standard_normal((m, nh, nw, cp)), rng.standard_normal((f, f, cp, c)),
            rng.standard_normal((1, 1, 1, c)))


def _tf_conv(A, W, b, stride, pad):
    # explicit zero padding (in TF, so the tape sees it), then VALID: the course's convention
    A_pad = tf.pad(A, [[0, 0], [pad, pad], [pad, pad], [0, 0]])
    return tf.nn.conv2d(A_pad, W, strides=stride, padding="VALID") + tf.reshape(b, [-1])


def _tf_pool(A, f, stride, mode):
    op = tf.nn.max_pool2d if mode == "max" else tf.nn.avg_pool2d
    return op(A, ksize=f, strides=stride, padding="VALID")


# -------------------------------------------------------------------------- known answers

def test_zero_pad_known_answer():
    X = np.arange(2 * 2 * 3 * 2, dtype=float).reshape(2, 2, 3, 2)
    P = N.zero_pad(X, 2)
    assert P.shape == (2, 6, 7, 2)
    np.testing.assert_array_equal(P[:, 2:-2, 2:-2, :], X)
    assert P[:, :2].sum() == 0 and P[:, -2:].sum() == 0 and P[:, :, :2].sum() == 0
    np.testing.assert_array_equal(N.zero_pad(X, 0), X)


def test_conv_single_step_known_answer():
    a = np.arange(12, dtype=float).reshape(2, 2, 3)
    W = np.full((2, 2, 3), 0.5)
    out = N.conv_single_step(a, W, np.array([[[-1.0]]]))
    assert isinstance(out, float)
    assert out == pytest.approx(0.5 * sum(range(12)) - 1.0)


def test_conv_forward_hand_computed():
    # 3x3 image, 2x2 all-ones filter, stride 1, no pad: each output is a 2x2 window sum + b
    A = np.arange(9, dtype=float).reshape(1, 3, 3, 1)
    Z, cache = N.conv_forward(A, np.ones((2, 2, 1, 1)), np.full((1, 1, 1, 1), 10.0), {"stride": 1, "pad": 0})
    np.testing.assert_array_equal(Z[0, :, :, 0], [[18.0, 22.0], [30.0, 34.0]])
    assert cache[0] is A and cache[3] == {"stride": 1, "pad": 0}


def test_pool_forward_hand_computed():
    A = np.array([[1.0, 2, 5, 0], [3, 4, 1, 1], [0, 0, 9, 8], [7, 1, 6, 2]]).reshape(1, 4, 4, 1)
    hp = {"f": 2, "stride": 2}
    Amax, cache = N.pool_forward(A, hp, mode="max")
    Aavg, _ = N.pool_forward(A, hp, mode="average")
    np.testing.assert_array_equal(Amax[0, :, :, 0], [[4, 5], [7, 9]])
    np.testing.assert_array_equal(Aavg[0, :, :, 0], [[2.5, 1.75], [2, 6.25]])
    assert cache == (A, hp)


def test_create_mask_and_distribute_value():
    x = np.array([[1.0, 3.0], [4.0, 2.0]])
    np.testing.assert_array_equal(N.create_mask_from_window(x), [[False, False], [True, False]])
    np.testing.assert_array_equal(N.distribute_value(2.0, (2, 2)), np.full((2, 2), 0.5))
    assert N.distribute_value(3.0, (1, 3)).sum() == pytest.approx(3.0)


def test_max_pool_backward_ties_follow_the_course_mask():
    # two equal maxima in the window: the course's mask gives both the whole gradient
    A = np.array([[5.0, 1.0], [5.0, 2.0]]).reshape(1, 2, 2, 1)
    _, cache = N.pool_forward(A, {"f": 2, "stride": 2})
    dA_prev = N.pool_backward(np.full((1, 1, 1, 1), 3.0), cache, mode="max")
    np.testing.assert_array_equal(dA_prev[0, :, :, 0], [[3.0, 0.0], [3.0, 0.0]])
    np.testing.assert_array_equal(dA_prev, N.pool_backward_naive(np.full((1, 1, 1, 1), 3.0), cache, "max"))
    # TensorFlow's MaxPoolGrad hands it to a single entry instead: the documented difference
    A_t = tf.Variable(A)
    with tf.GradientTape() as tape:
        loss = 3.0 * tf.reduce_sum(tf.nn.max_pool2d(A_t, 2, 2, "VALID"))
    assert tape.gradient(loss, A_t).numpy().sum() == pytest.approx(3.0)


def test_non_square_filters_match_tensorflow():
    rng = np.random.default_rng(11)
    A, W, b = rng.standard_normal((2, 9, 8, 3)), rng.standard_normal((2, 4, 3, 5)), rng.standard_normal((1, 1, 1, 5))
    Z, cache = N.conv_forward(A, W, b, {"stride": 2, "pad": 1})
    A_t, W_t, b_t = (tf.Variable(x) for x in (A, W, b))
    dZ = rng.standard_normal(Z.shape)
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(_tf_conv(A_t, W_t, b_t, 2, 1) * dZ)
    np.testing.assert_allclose(Z.ravel() @ dZ.ravel(), loss.numpy(), **TOL)
    for ours, theirs in zip(N.conv_backward(dZ, cache), tape.gradient(loss, [A_t, W_t, b_t])):
        np.testing.assert_allclose(ours, theirs.numpy(), **TOL)


def test_output_size_formula():
    assert N.conv_output_size(64, 4, pad=0, stride=1) == 61
    assert N.conv_output_size(7, 3, pad=1, stride=2) == 4
    assert N.conv_output_size(9, 2, pad=0, stride=4) == 2  # floor((9 - 2) / 4) + 1


# -------------------------------------------------------------------- parity with TensorFlow

@pytest.mark.parametrize("case", CONV_CASES, ids=lambda c: "m{}_{}x{}x{}_f{}_c{}_s{}_p{}".format(*c))
def test_conv_forward_and_backward_match_tensorflow(case):
    m, nh, nw, cp, f, c, stride, pad = case
    rng = np.random.default_rng(sum(case))
    A, W, b = _conv_inputs(rng, m, nh, nw, cp, f, c)
    hp = {"stride": stride, "pad": pad}
    Z, cache = N.conv_forward(A, W, b, hp)
    assert Z.shape == (m, N.conv_output_size(nh, f, pad, stride), N.conv_output_size(nw, f, pad, stride), c)
    assert Z.dtype == np.float64

    A_t, W_t, b_t = (tf.Variable(x) for x in (A, W, b))
    dZ = rng.standard_normal(Z.shape)
    with tf.GradientTape() as tape:
        Z_t = _tf_conv(A_t, W_t, b_t, stride, pad)
        loss = tf.reduce_sum(Z_t * dZ)  # d loss / d Z = dZ
    np.testing.assert_allclose(Z, Z_t.numpy(), **TOL)
    dA_t, dW_t, db_t = tape.gradient(loss, [A_t, W_t, b_t])

    dA_prev, dW, db = N.conv_backward(dZ, cache)
    assert dA_prev.shape == A.shape and dW.shape == W.shape and db.shape == b.shape
    np.testing.assert_allclose(dA_prev, dA_t.numpy(), **TOL)
    np.testing.assert_allclose(dW, dW_t.numpy(), **TOL)
    np.testing.assert_allclose(db, db_t.numpy(), **TOL)


@pytest.mark.parametrize("mode", ["max", "average"])
@pytest.mark.parametrize("case", POOL_CASES, ids=lambda c: "m{}_{}x{}x{}_f{}_s{}".format(*c))
def test_pool_forward_and_backward_match_tensorflow(case, mode):
    m, nh, nw, c, f, stride = case
    rng = np.random.default_rng(sum(case))
    A = rng.standard_normal((m, nh, nw, c))  # continuous values: no ties in a window
    hp = {"f": f, "stride": stride}
    out, cache = N.pool_forward(A, hp, mode=mode)

    A_t = tf.Variable(A)
    dA = rng.standard_normal(out.shape)
    with tf.GradientTape() as tape:
        out_t = _tf_pool(A_t, f, stride, mode)
        loss = tf.reduce_sum(out_t * dA)
    np.testing.assert_allclose(out, out_t.numpy(), **TOL)
    dA_prev = N.pool_backward(dA, cache, mode=mode)
    np.testing.assert_allclose(dA_prev, tape.gradient(loss, A_t).numpy(), **TOL)


def test_conv3d_matches_tensorflow_and_gives_course_shape():
    rng = np.random.default_rng(3)
    # course note 4.6: 32x32x32x16 input, 32 filters of 3x3x3, no pad, stride 1 -> 30x30x30x32
    A = rng.standard_normal((1, 32, 32, 32, 16))
    W = rng.standard_normal((3, 3, 3, 16, 32))
    b = rng.standard_normal((1, 1, 1, 1, 32))
    Z, _ = N.conv3d_forward(A, W, b, {"stride": 1, "pad": 0})
    assert Z.shape == (1, 30, 30, 30, 32)
    ref = tf.nn.conv3d(A, W, strides=[1] * 5, padding="VALID") + b.reshape(-1)
    np.testing.assert_allclose(Z, ref.numpy(), **TOL)


@pytest.mark.parametrize("stride,pad", [(1, 1), (2, 0), (3, 2)])
def test_conv3d_forward_backward_match_tensorflow(stride, pad):
    rng = np.random.default_rng(stride * 10 + pad)
    A = rng.standard_normal((2, 6, 7, 5, 3))
    W = rng.standard_normal((3, 3, 3, 3, 4))
    b = rng.standard_normal((1, 1, 1, 1, 4))
    Z, cache = N.conv3d_forward(A, W, b, {"stride": stride, "pad": pad})
    A_t, W_t, b_t = (tf.Variable(x) for x in (A, W, b))
    dZ = rng.standard_normal(Z.shape)
    widths = [[0, 0]] + [[pad, pad]] * 3 + [[0, 0]]
    with tf.GradientTape() as tape:
        Z_t = tf.nn.conv3d(tf.pad(A_t, widths), W_t, strides=[1, stride, stride, stride, 1],
                           padding="VALID") + tf.reshape(b_t, [-1])
        loss = tf.reduce_sum(Z_t * dZ)
    np.testing.assert_allclose(Z, Z_t.numpy(), **TOL)
    for ours, theirs in zip(N.conv3d_backward(dZ, cache), tape.gradient(loss, [A_t, W_t, b_t])):
        np.testing.assert_allclose(ours, theirs.numpy(), **TOL)


# ------------------------------------------------------------- vectorised vs the course loops

@pytest.mark.parametrize("case", CONV_CASES[:5], ids=lambda c: "m{}_{}x{}x{}_f{}_c{}_s{}_p{}".format(*c))
def test_conv_vectorised_equals_naive_loops(case):
    m, nh, nw, cp, f, c, stride, pad = case
    rng = np.random.default_rng(100 + sum(case))
    A, W, b = _conv_inputs(rng, m, nh, nw, cp, f, c)
    hp = {"stride": stride, "pad": pad}
    Z, cache = N.conv_forward(A, W, b, hp)
    Zn, _ = N.conv_forward_naive(A, W, b, hp)
    np.testing.assert_allclose(Z, Zn, **TOL)
    dZ = rng.standard_normal(Z.shape)
    for ours, loops in zip(N.conv_backward(dZ, cache), N.conv_backward_naive(dZ, cache)):
        np.testing.assert_allclose(ours, loops, **TOL)


@pytest.mark.parametrize("mode", ["max", "average"])
@pytest.mark.parametrize("case", POOL_CASES[:4], ids=lambda c: "m{}_{}x{}x{}_f{}_s{}".format(*c))
def test_pool_vectorised_equals_naive_loops(case, mode):
    m, nh, nw, c, f, stride = case
    rng = np.random.default_rng(200 + sum(case))
    # small integers: plenty of ties, where both follow the course's all-maxima mask
    A = rng.integers(0, 3, size=(m, nh, nw, c)).astype(float)
    hp = {"f": f, "stride": stride}
    out, cache = N.pool_forward(A, hp, mode)
    np.testing.assert_allclose(out, N.pool_forward_naive(A, hp, mode)[0], **TOL)
    dA = rng.standard_normal(out.shape)
    np.testing.assert_allclose(N.pool_backward(dA, cache, mode), N.pool_backward_naive(dA, cache, mode), **TOL)


def test_float32_inputs_stay_float32_and_inputs_are_not_modified():
    rng = np.random.default_rng(7)
    A, W, b = (x.astype(np.float32) for x in _conv_inputs(rng, 2, 6, 6, 2, 3, 3))
    A_copy = A.copy()
    Z, cache = N.conv_forward(A, W, b, {"stride": 1, "pad": 1})
    assert Z.dtype == np.float32
    dA_prev, dW, db = N.conv_backward(np.ones_like(Z), cache)
    assert dA_prev.dtype == np.float32
    np.testing.assert_array_equal(A, A_copy)


# ------------------------------------------------------------------------------ bad input

def _good():
    rng = np.random.default_rng(0)
    return _conv_inputs(rng, 2, 5, 5, 3, 3, 4)


@pytest.mark.parametrize("mutate,match", [
    (lambda A, W, b, hp: (A, W[:, :, :2, :], b, hp), "channel mismatch"),
    (lambda A, W, b, hp: (A, W, b, {"stride": 1, "pad": -1}), "'pad'.*non-negative"),
    (lambda A, W, b, hp: (A, W, b, {"stride": 0, "pad": 0}), "'stride'.*positive"),
    (lambda A, W, b, hp: (A, W, b, {"stride": -2, "pad": 0}), "'stride'.*positive"),
    (lambda A, W, b, hp: (A, np.zeros((8, 8, 3, 4)), b, {"stride": 1, "pad": 1}), "larger than the padded input"),
    (lambda A, W, b, hp: (A[0], W, b, hp), "A_prev must be 4-D"),
    (lambda A, W, b, hp: (A, W[0], b, hp), "W must be 4-D"),
    (lambda A, W, b, hp: (A, W, b[..., :2], hp), "one bias per filter"),
    (lambda A, W, b, hp: (A, W, b, {"stride": 1}), "missing 'pad'"),
    (lambda A, W, b, hp: (A, W, b, {"stride": 1.5, "pad": 0}), "'stride'.*integer"),
])
def test_conv_forward_rejects_bad_input(mutate, match):
    A, W, b = _good()
    with pytest.raises(ValueError, match=match):
        N.conv_forward(*mutate(A, W, b, {"stride": 1, "pad": 1}))


def test_backward_and_3d_reject_bad_input():
    A, W, b = _good()
    Z, cache = N.conv_forward(A, W, b, {"stride": 1, "pad": 1})
    with pytest.raises(ValueError, match="dZ has shape"):
        N.conv_backward(Z[:, :-1], cache)
    with pytest.raises(ValueError, match="cache must be"):
        N.conv_backward(Z, (A, W))
    with pytest.raises(ValueError, match="A_prev must be 5-D"):
        N.conv3d_forward(A, W, b, {"stride": 1, "pad": 0})
    with pytest.raises(ValueError, match="pad must be non-negative"):
        N.zero_pad(A, -1)
    with pytest.raises(ValueError, match="X must be 4-D"):
        N.zero_pad(A[0], 1)
    with pytest.raises(ValueError, match="must match"):
        N.conv_single_step(A[0, :3, :3], W[:2, :, :, 0], b[..., 0])


def test_pool_rejects_bad_input():
    A = np.random.default_rng(0).standard_normal((2, 5, 5, 3))
    with pytest.raises(ValueError, match="unknown pooling mode 'median'"):
        N.pool_forward(A, {"f": 2, "stride": 2}, mode="median")
    with pytest.raises(ValueError, match="pooling window size f=6 is larger"):
        N.pool_forward(A, {"f": 6, "stride": 1})
    with pytest.raises(ValueError, match="'stride'.*positive"):
        N.pool_forward(A, {"f": 2, "stride": 0})
    with pytest.raises(ValueError, match="A_prev must be 4-D"):
        N.pool_forward(A[0], {"f": 2, "stride": 2})
    out, cache = N.pool_forward(A, {"f": 2, "stride": 2})
    with pytest.raises(ValueError, match="unknown pooling mode"):
        N.pool_backward(out, cache, mode="min")
    with pytest.raises(ValueError, match="dA has shape"):
        N.pool_backward(out[:, :1], cache)
