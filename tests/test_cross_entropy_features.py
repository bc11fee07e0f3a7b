"""nn.CrossEntropyLoss and functional.cross_entropy with every torch option, against torch autograd,
on every backend: class weights, ignore_index, the three reductions, label smoothing, class-probability
targets, (N, C, d1, ...) and unbatched (C,) logits, NaN and +-inf logits."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from harness import TOLERANCE, layout_view, relative_error
from scratchnet import functional, nn

CASES = 12
DTYPES = [np.float32, np.float64]
FEATURES = ("class weights", "ignore_index", "reduction sum", "reduction none", "label smoothing",
            "probability targets", "spatial logits", "unbatched", "nan and inf", "combined")


def loss_case(feature, index):
    rng = np.random.default_rng([FEATURES.index(feature), index])
    classes = int(rng.integers(2, 8))
    spatial = tuple(int(v) for v in rng.integers(1, 4, size=int(rng.integers(1, 3)))) \
        if feature in ("spatial logits", "combined") else ()
    reduction = {"reduction sum": "sum", "reduction none": "none"}.get(feature, ("mean", "sum", "none")[index % 3])
    return dict(
        n=int(rng.integers(1, 6)), classes=classes, spatial=spatial, reduction=reduction,
        weighted=feature in ("class weights", "combined") or (feature == "probability targets" and index % 2 == 1),
        ignore_index=int(rng.integers(0, classes)) if feature in ("ignore_index", "combined") else -100,
        label_smoothing=float(rng.uniform(0.05, 0.9)) if feature in ("label smoothing", "combined") or (
            feature == "probability targets" and index % 3 == 2) else 0.0,
        probabilities=feature == "probability targets", unbatched=feature == "unbatched",
        specials=feature == "nan and inf", scale=100.0 if index % 4 == 3 else 1.0)


def loss_inputs(case, dtype):
    rng = np.random.default_rng([7, case["n"], case["classes"]])
    shape = (case["classes"],) if case["unbatched"] else (case["n"], case["classes"]) + case["spatial"]
    logits = (rng.standard_normal(shape) * case["scale"]).astype(dtype)
    if case["specials"]:
        flat = logits.reshape(-1)
        picks = rng.choice(flat.size, size=max(1, flat.size // 5), replace=False)
        flat[picks] = rng.choice(np.array([np.nan, np.inf, -np.inf], dtype=dtype), size=picks.size)
    if case["probabilities"]:
        target = rng.random(shape).astype(dtype)
        target /= target.sum(axis=0 if case["unbatched"] else 1, keepdims=True)
    else:
        target_shape = () if case["unbatched"] else (case["n"],) + case["spatial"]
        target = rng.integers(0, case["classes"], size=target_shape)
        if case["ignore_index"] >= 0 and target.size > 1:
            target.reshape(-1)[: target.size // 2] = case["ignore_index"]  # some rows ignored, not all
    weight = rng.uniform(0.1, 2.0, case["classes"]).astype(dtype) if case["weighted"] else None
    return logits, target, weight


def _case_ids():
    return [pytest.param(feature, index, id=f"{feature.replace(' ', '_')}-{index}")
            for feature in FEATURES for index in range(CASES)]


def _options(case):
    return dict(ignore_index=case["ignore_index"], reduction=case["reduction"],
                label_smoothing=case["label_smoothing"])


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("feature, index", _case_ids())
def test_cross_entropy_feature_matches_torch(backend, dtype, feature, index, error_report):
    case = loss_case(feature, index)
    logits, target, weight = loss_inputs(case, dtype)
    logits_t = torch.tensor(logits, requires_grad=True)
    loss_t = F.cross_entropy(logits_t, torch.tensor(target), None if weight is None else torch.tensor(weight),
                             **_options(case))
    upstream = np.random.default_rng(index).standard_normal(tuple(loss_t.shape)).astype(dtype)
    loss_t.backward(torch.tensor(upstream) if case["reduction"] == "none" else None)

    layout = ("contiguous", "fortran", "channels_last", "negative_strides")[index % 4]
    logits_view = layout_view(backend.xp, backend.asarray(logits), layout)
    logits_view = backend.asarray(logits) if logits_view is None else logits_view
    before = backend.to_numpy(logits_view).copy()
    criterion = nn.CrossEntropyLoss(weight=weight, **_options(case)).to(backend.name)
    loss = criterion(logits_view, backend.asarray(target))
    grad = criterion.backward(backend.asarray(upstream) if case["reduction"] == "none" else None)
    config = f"{case} layout={layout}"
    assert np.array_equal(backend.to_numpy(logits_view), before, equal_nan=True), f"logits modified [{config}]"
    if case["reduction"] == "none":
        loss = backend.to_numpy(loss)
    else:
        assert isinstance(loss, float), f"'{case['reduction']}' must give a Python float [{config}]"
    for label, got, want in [("loss", loss, loss_t.detach().numpy()),
                             ("grad logits", backend.to_numpy(grad), logits_t.grad.numpy())]:
        error = relative_error(got, want)
        error_report((f"cross_entropy {feature}", backend.name, np.dtype(dtype).name), error)
        assert error <= TOLERANCE[dtype], f"cross_entropy {label} [{config}]: relative error {error:.3e}"


@pytest.mark.parametrize("feature, index", [p for p in _case_ids() if p.values[1] < 2])
def test_functional_cross_entropy_matches_torch(feature, index):
    case = loss_case(feature, index)
    logits, target, weight = loss_inputs(case, np.float64)
    want = F.cross_entropy(torch.tensor(logits), torch.tensor(target), None if weight is None else torch.tensor(weight),
                           **_options(case))
    got = functional.cross_entropy(logits, target, weight, **_options(case))
    assert relative_error(got, want.numpy()) <= TOLERANCE[np.float64], str(case)


def test_every_target_ignored_gives_nan_as_torch(backend):
    criterion = nn.CrossEntropyLoss(ignore_index=1).to(backend.name)
    loss = criterion(backend.asarray(np.zeros((2, 3), dtype=np.float32)), backend.asarray(np.array([1, 1])))
    assert np.isnan(loss)  # torch: 0 / 0


@pytest.mark.parametrize("ignore_index", [-100, -3])
def test_a_label_equal_to_a_negative_ignore_index_is_ignored_as_torch(backend, ignore_index):
    """The default loss with one label at the (default) ignore_index: that row drops out, as in torch."""
    logits = np.random.default_rng(4).standard_normal((4, 10))
    labels = np.array([1, ignore_index, 3, 9])
    criterion = nn.CrossEntropyLoss(ignore_index=ignore_index).to(backend.name)
    loss = criterion.forward_array(backend.asarray(logits), backend.asarray(labels))
    grad = backend.to_numpy(criterion.backward())
    torch_logits = torch.from_numpy(logits).requires_grad_()
    torch_loss = F.cross_entropy(torch_logits, torch.from_numpy(labels), ignore_index=ignore_index)
    torch_loss.backward()
    assert relative_error(float(loss), torch_loss.item()) <= 1e-14
    assert relative_error(grad, torch_logits.grad.numpy()) <= 1e-14 and not grad[1].any()


@pytest.mark.parametrize("make_args, message", [
    (lambda: (np.zeros((2, 3)), np.array([0, 3])), r"\[0, 2\].*ignore_index=-100.*0\.\.3"),
    (lambda: (np.zeros((2, 3, 4)), np.zeros((2, 3), dtype=np.int64)), r"\(2, 3, 4\).*\(2, 4\).*\(2, 3\)"),
    (lambda: (np.zeros((2, 3)), np.zeros((2, 4))), r"probability.*\(2, 3\).*\(2, 4\)"),
    (lambda: (np.zeros(3), np.zeros((1,), dtype=np.int64)), r"\(3,\).*\(\).*\(1,\)"),
], ids=["label_out_of_range", "spatial_shape", "probability_shape", "unbatched_shape"])
def test_cross_entropy_refuses_bad_targets_naming_the_shapes(make_args, message):
    logits, target = make_args()
    with pytest.raises(ValueError, match=r"CrossEntropyLoss.*" + message):
        nn.CrossEntropyLoss()(logits, target)
    with pytest.raises(ValueError, match=r"cross_entropy.*" + message):
        functional.cross_entropy(logits, target)


@pytest.mark.parametrize("kwargs, message", [
    (dict(reduction="avg"), r"reduction.*'avg'"),
    (dict(label_smoothing=1.5), r"label_smoothing.*1.5"),
    (dict(weight=np.ones((2, 2))), r"weight.*1-D.*\(2, 2\)"),
], ids=["reduction", "label_smoothing", "weight_rank"])
def test_cross_entropy_refuses_bad_options(kwargs, message):
    with pytest.raises(ValueError, match=r"CrossEntropyLoss.*" + message):
        nn.CrossEntropyLoss(**kwargs)


def test_cross_entropy_refuses_weight_of_wrong_length_and_ignore_index_with_probabilities():
    with pytest.raises(ValueError, match=r"CrossEntropyLoss.*weight of shape \(4,\).*\(2, 3\)"):
        nn.CrossEntropyLoss(weight=np.ones(4))(np.zeros((2, 3)), np.array([0, 1]))
    with pytest.raises(ValueError, match=r"CrossEntropyLoss.*ignore_index"):
        nn.CrossEntropyLoss(ignore_index=0)(np.zeros((2, 3)), np.full((2, 3), 1 / 3))


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("shape", [(4, 5), (2, 5, 3)], ids=["rows", "spatial"])
def test_a_nan_or_inf_logit_at_an_ignored_position_gives_torchs_gradients(backend, reduction, shape):
    """torch's gradient at an ignored position is its softmax times 0: NaN there if a logit is NaN or inf."""
    rng = np.random.default_rng(6)
    logits = rng.standard_normal(shape)
    target = rng.integers(0, 2, size=(shape[0],) + shape[2:])
    target.reshape(-1)[:2] = 4  # two ignored positions: one with a NaN logit, one with an infinite one
    ignored = np.flatnonzero(target.reshape(-1) == 4)  # positions in (N, *spatial) order, as the rows below
    flat = np.moveaxis(logits, 1, -1).copy()  # the class axis last: one row per position
    flat.reshape(-1, shape[1])[ignored[0], 1] = np.nan
    flat.reshape(-1, shape[1])[ignored[1], 3] = np.inf
    logits = np.ascontiguousarray(np.moveaxis(flat, -1, 1))
    logits_t = torch.tensor(logits, requires_grad=True)
    upstream = np.ones(target.shape)
    loss_t = F.cross_entropy(logits_t, torch.tensor(target), ignore_index=4, reduction=reduction)
    loss_t.backward(torch.tensor(upstream) if reduction == "none" else None)
    criterion = nn.CrossEntropyLoss(ignore_index=4, reduction=reduction).to(backend.name)
    loss = criterion(backend.asarray(logits), backend.asarray(target))
    grad = backend.to_numpy(criterion.backward(backend.asarray(upstream) if reduction == "none" else None))
    assert np.isnan(grad).any() and np.array_equal(np.isnan(grad), np.isnan(logits_t.grad.numpy()))
    assert relative_error(grad, logits_t.grad.numpy()) <= 1e-12
    assert relative_error(backend.to_numpy(loss) if reduction == "none" else loss, loss_t.detach().numpy()) <= 1e-12
