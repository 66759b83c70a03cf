import inspect
import logging
import warnings

import pytest
import torch

import kernels
from kernels import attention, fftconv, selective_scan, wkv
from kernels.dispatch import Dispatch, Impl

VAR = "SCALING_TEST_IMPL"


def fast(x):
    return x + 1


def slow(x):
    return x + 2


def ref(x):
    return x + 3


def make(fast_missing=None, prefer=("fast", "slow"), **kwargs):
    """Three paths: "fast" (missing when `fast_missing` says why), then "slow", and a reference "ref"."""
    paths = [Impl("fast", fast, lambda: fast_missing), Impl("slow", slow), Impl("ref", ref)]
    return Dispatch("test_op", VAR, paths, prefer, **kwargs)


def op(dispatch, x):
    """An operator entry point, as kernels' modules write them."""
    return dispatch(x.device)(x)


@pytest.fixture(autouse=True)
def _no_override(monkeypatch):
    monkeypatch.delenv(VAR, raising=False)


def test_takes_the_first_preferred_path_and_logs_it_once(caplog):
    dispatch, x = make(), torch.zeros(1)
    assert dispatch.impl() == "fast"
    with caplog.at_level(logging.INFO, logger="kernels.test_op"), warnings.catch_warnings():
        warnings.simplefilter("error")
        assert op(dispatch, x) == 1
        op(dispatch, x)
    assert [r.getMessage() for r in caplog.records] == ["test_op: the fast path on cpu"]


def test_override_is_honoured_without_a_warning(monkeypatch, caplog):
    dispatch, x = make(), torch.zeros(1)
    monkeypatch.setenv(VAR, "ref")  # in no preference order: only an override reaches it
    assert dispatch.impl() == "ref"
    with caplog.at_level(logging.INFO, logger="kernels.test_op"), warnings.catch_warnings():
        warnings.simplefilter("error")
        assert op(dispatch, x) == 3
    assert [r.getMessage() for r in caplog.records] == ["test_op: the ref path on cpu"]


def test_unknown_override_names_the_variable_and_the_valid_values(monkeypatch):
    monkeypatch.setenv(VAR, "fastest")
    with pytest.raises(ValueError, match=rf"^{VAR}='fastest'; valid: fast, slow, ref$"):
        make().impl()


def test_override_of_a_path_that_cannot_run_says_why(monkeypatch):
    monkeypatch.setenv(VAR, "fast")
    with pytest.raises(RuntimeError, match=rf"^{VAR}=fast, but no fast here$"):
        make(fast_missing="no fast here").impl()


def test_fallback_warns_once_with_the_reason_at_the_callers_line(caplog):
    dispatch, x = make(fast_missing="its library does not load"), torch.zeros(1)
    assert dispatch.impl() == "slow"
    with pytest.warns(RuntimeWarning, match="test_op: cpu tensors take the slower slow path, since fast: its library"):
        assert op(dispatch, x) == 2
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        op(dispatch, x)
    assert not caught, "a second call on the same device type stays quiet"


def test_fallback_warning_points_at_the_operators_caller():
    dispatch, x = make(fast_missing="missing"), torch.zeros(1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        line = inspect.currentframe().f_lineno + 1
        op(dispatch, x)
    assert [(w.filename, w.lineno) for w in caught] == [(__file__, line)]


def test_device_types_may_prefer_other_orders():
    dispatch = make(prefer_on={"meta": ("slow",)})
    assert (dispatch.impl("cpu"), dispatch.impl("meta"), dispatch.impl(torch.device("meta"))) == (
        "fast",
        "slow",
        "slow",
    )


def test_declaration_errors_are_caught_early():
    with pytest.raises(ValueError, match=r"preferred paths \['triton'\] are not among \['fast', 'slow', 'ref'\]"):
        make(prefer=("triton", "slow"))
    with pytest.raises(RuntimeError, match=r"test_op: no path runs on cpu \(fast: gone\)"):
        make(fast_missing="gone", prefer=("fast",)).impl()


OPERATORS = [  # module, reference, default path name (recorded as the <op>_impl tag)
    (attention, attention.attention_ref, "sdpa"),
    (fftconv, fftconv.fftconv_ref, "rfft"),
    (selective_scan, selective_scan.selective_scan_ref, None),  # "cpu" or "chunked", by the C compiler
    (wkv, wkv.wkv_ref, "chunked"),
]


@pytest.mark.parametrize("module,reference,default", OPERATORS, ids=lambda x: getattr(x, "__name__", None))
def test_every_operator_dispatches_by_this_convention(module, reference, default, monkeypatch):
    dispatch = module._dispatch
    assert isinstance(dispatch, Dispatch) and dispatch.env_var == module.ENV_VAR
    assert dispatch.paths["ref"].fn is reference
    # Every path is a drop-in for the reference, as the tests of each operator hold them to it.
    for path in dispatch.paths.values():
        assert inspect.signature(path.fn).parameters.keys() == inspect.signature(reference).parameters.keys()
    monkeypatch.delenv(module.ENV_VAR, raising=False)
    impl = getattr(module, f"{dispatch.op}_impl")
    if default is not None:
        assert impl("cpu") == default
    monkeypatch.setenv(module.ENV_VAR, "ref")
    assert impl("cpu") == "ref"


def test_implementations_names_every_operators_path(monkeypatch):
    for module, *_ in OPERATORS:
        monkeypatch.delenv(module.ENV_VAR, raising=False)
    names = kernels.implementations("cpu")
    assert names == {
        "attention": "sdpa",
        "fftconv": "rfft",
        "selective_scan": selective_scan.selective_scan_impl("cpu"),
        "wkv": "chunked",
    }
    assert names["selective_scan"] in {"cpu", "chunked"}
